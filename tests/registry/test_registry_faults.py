"""Injected S3 faults through a proxy in front of the real moto server: retried, or a clean failure."""

from __future__ import annotations

import subprocess
import sys

import pytest

from components.registry import register
from components.registry_ops import list_versions, promote, read_alias, show
from components.registry_store import RegistryError, RegistryStore
from tests.conftest import fault_seed

from .conftest import REPO, fail_first


def _via_proxy(project, proxy, *extra):
    return project.settings(f"registry.endpoint_url={proxy.url}", *extra)


def test_http_500s_are_retried(project, fault_proxy):
    fault_proxy.rule = fail_first(2)  # the first two requests, whatever they are
    cfg = _via_proxy(project, fault_proxy)  # max_attempts 3: two failures + one success per request
    result = register(cfg, metrics_dir=project.metrics)
    assert result["registered"] and result["version"] == 1
    assert fault_proxy.actions("500") == 2
    first = fault_proxy.seen[:3]
    assert first[0][2] == first[1][2] == "500" and first[2][2] == "forward"
    assert first[0][:2] == first[1][:2] == first[2][:2]  # the same request, sent three times


def test_throttling_is_retried(project, fault_proxy):
    is_write = lambda m, p: m == "PUT"  # noqa: E731
    fault_proxy.rule = fail_first(2, "503", is_write)
    result = register(_via_proxy(project, fault_proxy), metrics_dir=project.metrics)
    assert result["registered"] and fault_proxy.actions("503") == 2


def test_dropped_connections_are_retried(project, fault_proxy):
    is_upload = lambda m, p: m == "PUT" and "/files/" in p  # noqa: E731
    fault_proxy.rule = fail_first(2, "drop", is_upload)
    result = register(_via_proxy(project, fault_proxy), metrics_dir=project.metrics)
    assert result["registered"] and fault_proxy.actions("drop") == 2
    from components.registry_ops import verify

    assert verify(project.settings().registry, 1)["ok"]  # direct to moto: the stored files are intact


def test_lost_answer_to_a_conditional_write_is_resolved(project, fault_proxy):
    # the claim lands on moto but its answer is lost; botocore retries and gets 412 for our own object
    is_claim = lambda m, p: m == "PUT" and p.endswith("/claim.json")  # noqa: E731
    fault_proxy.rule = fail_first(1, "lose", is_claim)
    result = register(_via_proxy(project, fault_proxy), metrics_dir=project.metrics)
    assert fault_proxy.actions("lose") == 1
    assert result["version"] == 1  # recognised as ours, not skipped to version 2
    assert RegistryStore(project.settings().registry).claimed_versions() == [1]

    # same for an alias update whose answer is lost
    is_alias = lambda m, p: m == "PUT" and "/aliases/" in p  # noqa: E731
    fault_proxy.rule = fail_first(1, "lose", is_alias)
    assert promote(_via_proxy(project, fault_proxy).registry, 1, "production")["version"] == 1
    assert [h["version"] for h in read_alias(project.settings().registry, "production").data["history"]] == [1]


def test_outage_longer_than_retries_fails_clearly_and_lists_nothing(project, fault_proxy):
    is_upload = lambda m, p: m == "PUT" and "/files/" in p  # noqa: E731
    fault_proxy.rule = lambda m, p, h: "500" if is_upload(m, p) else None  # uploads fail forever
    params = project.root / "params.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "components", "--params", str(params), "--set",
         f"registry.endpoint_url={fault_proxy.url}", "register"],
        cwd=project.root, capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                            "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: register: ")
    assert "InternalError" in errors[0] and "version 1 stays incomplete and is never listed" in errors[0]
    assert "reached max retries: 2" in errors[0]  # botocore's own count: 3 attempts = 2 retries
    assert fault_proxy.actions("500") >= 3  # retried up to max_attempts
    reg = project.settings().registry  # straight to moto
    assert list_versions(reg) == []  # the half-uploaded version is invisible
    assert RegistryStore(reg).claimed_versions() == [1]  # (its abandoned claim is there, number not reused)
    with pytest.raises(FileNotFoundError, match="did not finish"):
        show(reg, 1)

    fault_proxy.rule = lambda m, p, h: None  # outage over: the next run gets version 2
    assert register(_via_proxy(project, fault_proxy), metrics_dir=project.metrics)["version"] == 2
    assert [v["version"] for v in list_versions(reg)] == [2]


def test_store_ignoring_conditional_writes_is_refused(project, fault_proxy):
    fault_proxy.rule = lambda m, p, h: "strip"  # a store that drops If-None-Match / If-Match
    with pytest.raises(RegistryError, match="ignores If-None-Match"):
        register(_via_proxy(project, fault_proxy), metrics_dir=project.metrics)
    store = RegistryStore(project.settings().registry)
    assert store.list_keys(store.base + "/") == []  # refused before claiming anything


def test_no_credentials_is_one_clear_line(project, moto_server, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(REPO), AWS_ENDPOINT_URL=moto_server, AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    proc = subprocess.run([sys.executable, "-m", "components", "--params", str(project.root / "params.yaml"),
                           "register"], cwd=project.root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: register: no S3 credentials found for s3://"), lines


def test_register_killed_at_random_points_then_rerun_gives_one_complete_version(project, moto_server, tmp_path):
    """SIGKILL `askd register` at random moments (start-up, claim, multipart parts, manifest), run it again:
    exactly one version is listed, complete and equal to the local files; nothing half-written is visible."""
    import os
    import random
    import signal
    import time

    from components.registry import sha256_file
    from components.registry_ops import pull, verify

    (project.student / "model.safetensors").write_bytes(os.urandom(48 * 1024 * 1024))  # 10 parts of 5 MB
    cmd = [sys.executable, "-m", "components", "--params", str(project.root / "params.yaml"), "--set",
           "registry.multipart_threshold_mb=5", "--set", "registry.multipart_chunk_mb=5", "--set",
           "registry.transfer_workers=2", "register"]
    scratch = tmp_path / "tmp"  # a SIGKILLed run cannot remove its staging folder: keep it out of the system /tmp
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch)}
    reg = project.settings().registry
    store = RegistryStore(reg)

    other = f"{project.bucket}-ref"  # an uninterrupted run into a second bucket: its timing and its manifest
    __import__("boto3").client("s3", endpoint_url=moto_server).create_bucket(Bucket=other)
    ref_store = RegistryStore(project.settings(f"registry.bucket={other}").registry)
    started = time.monotonic()
    proc = subprocess.Popen([*cmd[:-1], "--set", f"registry.bucket={other}", "register"], cwd=project.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ref_store.claimed_versions() and proc.poll() is None:
        time.sleep(0.01)
    claimed_at = time.monotonic() - started
    assert proc.wait(timeout=300) == 0
    upload_s = time.monotonic() - started - claimed_at
    seed = fault_seed()
    rng = random.Random(seed)
    # one kill anywhere in the run, two at random moments after the version number was claimed (the upload)
    plan = [("start", rng.uniform(0.1, 1.0) * (claimed_at + upload_s))] + [
        ("claim", rng.uniform(0.0, 1.0) * upload_s) for _ in range(2)]
    where = f"(ASKD_FAULT_SEED={seed}, kills {[(a, round(t, 2)) for a, t in plan]}, claim at {claimed_at:.2f} s, " \
            f"upload {upload_s:.2f} s)"

    killed = 0
    for after, delay in plan:
        before = set(store.claimed_versions())
        proc = subprocess.Popen(cmd, cwd=project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.monotonic()
        while after == "claim" and set(store.claimed_versions()) == before and proc.poll() is None:
            time.sleep(0.01)
        try:
            proc.wait(timeout=max(0.001, delay if after == "claim" else delay - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            killed += 1
        listed = list_versions(reg)
        assert len(listed) <= 1, where  # never two, and a listed one is complete:
        assert all(verify(reg, v["version"])["ok"] for v in listed), where
    proc = subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stderr}\n{where}"

    listed = list_versions(reg)
    assert len(listed) == 1, where
    version = listed[0]["version"]
    assert verify(reg, version)["ok"], where
    assert len(store.claimed_versions()) <= killed + 1, where  # abandoned claims stay unlisted
    pulled = tmp_path / "pulled"
    pull(reg, str(version), pulled)
    assert sha256_file(pulled / "model" / "model.safetensors") == sha256_file(project.student / "model.safetensors")
    payload = lambda m: sorted((f["path"], f["sha256"]) for f in m["files"]  # noqa: E731
                               if f["path"].startswith(("model/", "exports/", "metrics/")))  # (card, params: bucket)
    assert payload(show(reg, version)) == payload(show(ref_store.cfg, 1)), where
