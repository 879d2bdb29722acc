"""No credential ever lands in an uploaded object, a metrics file or the command output; lineage degrades."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import boto3
from typer.testing import CliRunner

from components import lineage
from components.cli import app
from components.registry_ops import promote
from components.registry_store import RegistryStore, redact_url

from .conftest import REPO


def test_no_secret_in_objects_outputs_or_logs(project, monkeypatch, caplog):
    secret = f"askd-secret-{uuid.uuid4().hex}"
    key_id = f"AKIAASKD{uuid.uuid4().hex[:12].upper()}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # moto accepts any credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    caplog.set_level(logging.DEBUG, logger="components")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    params = str(project.root / "params.yaml")
    proc = subprocess.run([sys.executable, "-m", "components", "--params", params, "register"], cwd=project.root,
                          env=env, capture_output=True, text=True, timeout=120)  # a real process: all it prints
    assert proc.returncode == 0, proc.stderr
    outputs = [proc.stdout + proc.stderr]
    runner = CliRunner()
    for args in (["registry", "promote", "1", "--alias", "production"], ["registry", "list"],
                 ["registry", "show", "1"], ["registry", "verify", "production"], ["registry", "show", "7"]):
        outputs.append(runner.invoke(app, ["--params", params, *args]).output)
    assert "error: registry show: no version 7" in outputs[-1]  # the failing command printed its error too
    promote(project.settings().registry, 1, "staging")

    store = RegistryStore(project.settings().registry)
    keys = [k for k, _ in store.list_keys("")]
    assert any(k.endswith("manifest.json") for k in keys) and any("/aliases/" in k for k in keys)
    s3 = boto3.client("s3")
    blobs = [s3.get_object(Bucket=project.bucket, Key=k)["Body"].read() for k in keys]
    blobs += [p.read_bytes() for p in project.metrics.glob("*.json")]
    blobs += [text.encode() for text in outputs] + [caplog.text.encode()]
    for value in (secret, key_id):
        leaks = [i for i, blob in enumerate(blobs) if value.encode() in blob]
        assert not leaks, f"credential found in {len(leaks)} places"


def test_redact_url_drops_userinfo():
    assert redact_url("https://user:pa55@minio.local:9000/x") == "https://minio.local:9000/x"
    assert redact_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact_url(None) is None


def test_lineage_in_the_repository_and_outside(tmp_path):
    inside = lineage.collect(REPO, REPO / "metrics", REPO / "metrics" / "eval.json")
    assert len(inside["git"]["commit"]) == 40 and isinstance(inside["git"]["dirty"], bool)
    assert inside["packages"]["transformers"] and inside["packages"]["python"]
    outside = lineage.collect(tmp_path, tmp_path / "metrics", tmp_path / "metrics" / "eval.json")
    assert outside["git"]["commit"] is None and outside["dvc"]["stages"] is None
    assert outside["teacher"] is None and outside["eval_protocol"] is None
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: askd stage prepare\n    deps:\n    - path: data/raw\n"
        "      md5: abc.dir\n    outs:\n    - path: data/prepared\n      md5: def.dir\n")
    dvc = lineage.dvc_lock_info(tmp_path)
    assert dvc["stages"]["prepare"]["outs"] == {"data/prepared": "def.dir"}
    assert dvc["data"] == {"data/prepared": "def.dir", "data/raw": "abc.dir"}
