"""Register -> list -> promote -> pull -> verify against a real moto server; immutability; gate; multipart."""

from __future__ import annotations

import json

import boto3
import pytest
from typer.testing import CliRunner

from components.cli import app
from components.registry import GateBlockedError, register, register_stage
from components.registry_ops import list_versions, promote, pull, read_alias, rollback, show, verify
from components.registry_store import ConflictError, IntegrityError, RegistryError, RegistryStore

runner = CliRunner()


def _cli(project, *args):
    result = runner.invoke(app, ["--params", str(project.root / "params.yaml"), *args])
    return result


def test_cli_register_list_promote_pull_verify(project, tmp_path):
    out = _cli(project, "register")
    assert out.exit_code == 0, out.output
    assert json.loads((project.metrics / "register.json").read_text())["version"] == 1

    listed = _cli(project, "registry", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["version"] for r in rows] == [1] and rows[0]["gate_passed"] is True

    promoted = _cli(project, "registry", "promote", "1", "--alias", "production", "--reason", "first")
    assert promoted.exit_code == 0, promoted.output
    assert "production -> version 1 (was None)" in promoted.stdout

    dest = tmp_path / "pulled"
    pulled = _cli(project, "registry", "pull", "production", "--out", str(dest))
    assert pulled.exit_code == 0, pulled.output
    assert (dest / "model" / "config.json").read_bytes() == (project.student / "config.json").read_bytes()
    assert (dest / "exports" / "student-ct2_int8" / "model.bin").is_file()
    assert not (dest / "model" / ".hidden-partial").exists()
    assert {"MODEL_CARD.md", "params.json", "manifest.json"} <= {p.name for p in dest.iterdir()}
    params = json.loads((dest / "params.json").read_text())
    assert params["registry"]["bucket"] == project.bucket and params["train"]["preset"] == "askd"
    card = (dest / "MODEL_CARD.md").read_text()
    for heading in ("## Intended use", "## Data", "## Training recipe", "## Metrics", "## Gate decision",
                    "## Limitations", "## Lineage"):
        assert heading in card
    assert "| student | test | 4 | 9.50 | 1.50 |" in card  # WER and delta vs teacher from eval.json
    assert "PASSED" in card
    import yaml

    meta = yaml.safe_load(card.split("---\n")[1])  # Hugging Face front matter
    assert meta["base_model"] == "openai/whisper-tiny.en" and meta["license"] == "mit"
    assert meta["model-index"][0]["results"][0]["metrics"][0] == {"type": "wer", "value": 9.5, "name": "WER (%)"}
    assert "- saved weights: the evaluation point with the lowest validation WER" in card  # average_best: 1

    verified = _cli(project, "registry", "verify", "1")
    assert verified.exit_code == 0, verified.output
    assert "all sha256 match" in verified.stdout
    listed = json.loads(_cli(project, "registry", "list", "--json").stdout)
    assert listed[0]["aliases"] == ["production"]


def test_manifest_lists_every_file_with_sha256_and_lineage(project):
    result = register(project.settings(), metrics_dir=project.metrics, root=project.root)
    manifest = show(project.settings().registry, result["version"])
    paths = [f["path"] for f in manifest["files"]]
    assert "model/model.safetensors" in paths and "metrics/gate.json" in paths and "MODEL_CARD.md" in paths
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"])
    lineage = manifest["lineage"]
    assert lineage["git"]["commit"] is None and "not a git repository" in lineage["git"]["note"]
    assert lineage["dvc"]["stages"] is None and "no dvc.lock" in lineage["dvc"]["note"]
    assert lineage["packages"]["torch"] and lineage["teacher"]["model"] == "tiny.en"
    assert lineage["eval_protocol"]["decode"]["num_beams"] == 1


def test_versions_are_immutable_and_identical_uploads_not_repeated(project):
    cfg = project.settings()
    assert register(cfg, version=1, metrics_dir=project.metrics)["version"] == 1
    project.change_model("second")
    with pytest.raises(ConflictError, match="version 1 .* already exists"):
        register(cfg, version=1, metrics_dir=project.metrics)
    store = RegistryStore(cfg.registry)
    with pytest.raises(ConflictError):  # the manifest of a complete version cannot be overwritten either
        store.put_json(store.version_prefix(1) + "manifest.json", {"version": 1, "files": []}, if_none_match=True)
    assert show(cfg.registry, 1)["files"]
    again = register(cfg, metrics_dir=project.metrics)
    assert again["registered"] and again["version"] == 2
    same = register(cfg, metrics_dir=project.metrics)  # nothing changed: not uploaded again
    assert same["registered"] is False and same["version"] == 2 and "identical to version 2" in same["reason"]
    assert [v["version"] for v in list_versions(cfg.registry)] == [1, 2]


def test_gate_blocked_refused_unless_forced_with_reason(project):
    project.set_gate(False)
    cfg = project.settings()
    store = RegistryStore(cfg.registry)
    with pytest.raises(GateBlockedError, match="gate blocked student"):
        register(cfg, metrics_dir=project.metrics)
    with pytest.raises(RegistryError, match="--force needs --reason"):
        register(cfg, force=True, metrics_dir=project.metrics)
    assert store.list_keys(store.base + "/") == []  # nothing was written by the refusals

    skipped = register_stage(cfg, metrics_dir=project.metrics)
    assert skipped["registered"] is False and "gate blocked" in skipped["reason"]

    forced = _cli(project, "register", "--force", "--reason", "demo for the audio team, not for production")
    assert forced.exit_code == 0, forced.output
    manifest = show(cfg.registry, 1)
    assert manifest["forced"] is True and manifest["gate"]["passed"] is False
    assert manifest["force_reason"] == "demo for the audio team, not for production"
    card = store.client.get_object(Bucket=project.bucket, Key=store.file_key(1, "MODEL_CARD.md"))["Body"].read()
    assert b"demo for the audio team, not for production" in card and b"BLOCKED" in card

    refused = _cli(project, "register")
    assert refused.exit_code == 1 and "error: register: gate blocked" in refused.output


def test_stage_skips_cleanly_when_disabled(project):
    cfg = project.settings("registry.enabled=false")
    result = register_stage(cfg, metrics_dir=project.metrics)
    assert result == {"registered": False, "reason": "registry.enabled is false (set it, or run `askd register`)"}
    assert json.loads((project.metrics / "register.json").read_text()) == result
    ran = _cli(project, "stage", "register")
    assert ran.exit_code == 0 and json.loads((project.metrics / "register.json").read_text())["registered"]


def test_promote_rollback_history(project):
    cfg = project.settings()
    for tag in ("a", "b", "c"):
        project.change_model(tag)
        register(cfg, metrics_dir=project.metrics)
    reg = cfg.registry
    promote(reg, 1, "staging")
    promote(reg, 2, "staging")
    promote(reg, 3, "staging", reason="better")
    assert rollback(reg, "staging", reason="regression") == {"alias": "staging", "version": 2, "previous": 3}
    assert rollback(reg, "staging") == {"alias": "staging", "version": 1, "previous": 2}
    with pytest.raises(RegistryError, match="no earlier version"):
        rollback(reg, "staging")
    data = read_alias(reg, "staging").data
    assert data["version"] == 1
    assert [(h["action"], h["version"]) for h in data["history"]] == [
        ("promote", 1), ("promote", 2), ("promote", 3), ("rollback", 2), ("rollback", 1)]
    assert data["history"][3]["reason"] == "regression"
    with pytest.raises(FileNotFoundError, match="no version 99"):
        promote(reg, 99, "staging")
    bad = _cli(project, "registry", "promote", "99", "--alias", "staging")
    assert bad.exit_code == 1 and "no version 99" in bad.output


def test_tampered_object_detected_by_verify_and_pull(project, tmp_path):
    cfg = project.settings()
    register(cfg, metrics_dir=project.metrics)
    store = RegistryStore(cfg.registry)
    key = store.file_key(1, "model/model.safetensors")
    boto3.client("s3").put_object(Bucket=project.bucket, Key=key, Body=b"\x00weightz" * 100)
    with pytest.raises(IntegrityError, match="model/model.safetensors: sha256"):
        verify(cfg.registry, 1)
    dest = tmp_path / "pulled"
    with pytest.raises(IntegrityError, match="model/model.safetensors"):
        pull(cfg.registry, "1", dest)
    assert not dest.exists() and not list(tmp_path.glob(".pulled*"))  # nothing half-pulled left behind
    cli = _cli(project, "registry", "verify", "1")
    assert cli.exit_code == 4 and "model/model.safetensors" in cli.output
    boto3.client("s3").delete_object(Bucket=project.bucket, Key=store.file_key(1, "metrics/eval.json"))
    with pytest.raises(IntegrityError, match="metrics/eval.json: missing"):
        verify(cfg.registry, 1)


def test_pull_refuses_foreign_folder_and_replaces_earlier_pull(project, tmp_path):
    cfg = project.settings()
    register(cfg, metrics_dir=project.metrics)
    project.change_model("v2")
    register(cfg, metrics_dir=project.metrics)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        pull(cfg.registry, "1", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    dest = tmp_path / "serving"
    pull(cfg.registry, "1", dest)
    pull(cfg.registry, "v2", dest)
    assert json.loads((dest / "manifest.json").read_text())["version"] == 2
    assert "v2" in (dest / "model" / "config.json").read_text()


def test_multipart_upload_for_big_files(project, tmp_path):
    big = project.student / "big.bin"
    big.write_bytes(bytes(range(256)) * (6 * 4096 + 7))  # ~6 MB: 2 parts of 5 MB threshold/chunk
    cfg = project.settings("registry.multipart_threshold_mb=5", "registry.multipart_chunk_mb=5")
    register(cfg, metrics_dir=project.metrics)
    store = RegistryStore(cfg.registry)
    head = store.client.head_object(Bucket=project.bucket, Key=store.file_key(1, "model/big.bin"))
    assert head["ETag"].strip('"').endswith("-2")  # S3 multipart ETag: md5-of-parts '-' part count
    dest = tmp_path / "pulled"
    pull(cfg.registry, "1", dest)
    assert (dest / "model" / "big.bin").read_bytes() == big.read_bytes()


def test_every_registry_command_has_help():
    for path in (["register"], ["stage", "register"], ["registry"], ["registry", "list"], ["registry", "show"],
                 ["registry", "promote"], ["registry", "rollback"], ["registry", "pull"], ["registry", "verify"]):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, path


def test_missing_bucket_is_one_clear_error(project):
    result = _cli(project, "--set", "registry.bucket=askd-no-such-bucket", "registry", "list")
    assert result.exit_code == 1
    assert "error: registry list: S3 bucket not found: s3://askd-no-such-bucket/" in result.output
    assert "the registry never does" in result.output
