"""S3 ingest against a real moto server: list, resumable mirror, then prepare as a folder."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pytest

from components.prepare import prepare
from components.s3 import S3_MAX_ATTEMPTS, SYNC_STATE_FILE, make_client, parse_s3_uri, sync_prefix
from components.settings import PrepareSettings

SECRET_MARKER = "very-secret-value-4711"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _upload_corpus(bucket: str, speech_clips, prefix: str = "corpus/v1") -> list[str]:
    """Clips + metadata.csv (one nested, one unlisted, one broken) under ``prefix``; returns the keys."""
    s3 = make_client()
    keys = []
    rows = []
    for i, clip in enumerate(speech_clips[:4]):
        rel = f"clips/{i}.wav" if i % 2 else f"{i}.wav"
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=clip.path.read_bytes())
        keys.append(f"{prefix}/{rel}")
        rows.append([rel, clip.text, clip.speaker])
    buf = io.StringIO()
    csv.writer(buf).writerows([["file_name", "text", "speaker"], *rows])
    s3.put_object(Bucket=bucket, Key=f"{prefix}/metadata.csv", Body=buf.getvalue().encode())
    s3.put_object(Bucket=bucket, Key=f"{prefix}/extra/unlisted.flac", Body=speech_clips[4].path.read_bytes())
    s3.put_object(Bucket=bucket, Key=f"{prefix}/extra/broken.wav", Body=b"not a wav file")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/empty-folder/", Body=b"")  # a folder marker
    s3.put_object(Bucket=bucket, Key=f"{prefix}0/outside.wav", Body=speech_clips[5].path.read_bytes())
    return keys + [f"{prefix}/metadata.csv", f"{prefix}/extra/unlisted.flac", f"{prefix}/extra/broken.wav"]


def test_parse_s3_uri():
    assert parse_s3_uri("s3://b/some/prefix") == ("b", "some/prefix/")
    assert parse_s3_uri("s3://b/some/prefix/") == ("b", "some/prefix/")
    assert parse_s3_uri("s3://b") == ("b", "")
    for bad in ("http://b/x", "s3:///x"):
        with pytest.raises(ValueError):
            parse_s3_uri(bad)


def test_client_config_retries_and_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    client = make_client()
    assert client.meta.endpoint_url == "http://127.0.0.1:1"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS}
    assert make_client("http://localhost:2").meta.endpoint_url == "http://localhost:2"


def test_s3_prefix_prepare_and_resume(tmp_path, moto_server, s3_bucket, speech_clips, caplog, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_MARKER)  # moto accepts any key
    caplog.set_level(logging.DEBUG, logger="components")
    keys = _upload_corpus(s3_bucket, speech_clips)
    download = tmp_path / "dl"
    (download / "stale").mkdir(parents=True)
    (download / "stale" / "old.wav").write_bytes(speech_clips[0].path.read_bytes())  # not in the listing
    cfg = PrepareSettings(
        source="s3", input=f"s3://{s3_bucket}/corpus/v1", out_dir=tmp_path / "out", download_dir=download
    )

    m1 = prepare(cfg)
    assert m1["s3"] == {"listed": len(keys), "downloaded": len(keys), "reused": 0, "bytes_downloaded": m1["s3"]["bytes_downloaded"]}
    assert m1["n_in"] == 6 and m1["n_kept"] == 5 and m1["skipped_by_reason"] == {"corrupt": 1}
    assert m1["audio_only"] == 1
    from datasets import load_from_disk

    rows = {r: t for split in load_from_disk(str(tmp_path / "out")).values() for r, t in zip(split["id"], split["text"])}
    assert set(rows) == {"0", "clips/1", "2", "clips/3", "extra/unlisted"}
    assert rows["clips/3"] == speech_clips[3].text and rows["extra/unlisted"] == ""
    assert (download / "clips" / "1.wav").read_bytes() == speech_clips[1].path.read_bytes()
    assert not list(download.rglob("*.part"))

    # a rerun reuses every download
    m2 = prepare(cfg)
    assert m2["s3"]["downloaded"] == 0 and m2["s3"]["reused"] == len(keys)
    assert m2["split_sizes"] == m1["split_sizes"]

    # a changed object is fetched again; without the state file, ETag = MD5 still proves the rest
    make_client().put_object(Bucket=s3_bucket, Key="corpus/v1/0.wav", Body=speech_clips[5].path.read_bytes())
    (download / SYNC_STATE_FILE).unlink()
    m3 = prepare(cfg)
    assert m3["s3"]["downloaded"] == 1 and m3["s3"]["reused"] == len(keys) - 1
    assert (download / "0.wav").read_bytes() == speech_clips[5].path.read_bytes()

    assert SECRET_MARKER not in caplog.text
    assert SECRET_MARKER not in json.dumps(m3) and SECRET_MARKER not in Path("metrics/prepare.json").read_text()


def test_s3_explicit_endpoint_beats_environment(tmp_path, moto_server, s3_bucket, speech_clips, monkeypatch):
    make_client().put_object(Bucket=s3_bucket, Key="p/a.wav", Body=speech_clips[0].path.read_bytes())
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    result = sync_prefix(f"s3://{s3_bucket}/p", tmp_path / "dl", endpoint_url=moto_server)
    assert result.files == ["a.wav"] and result.downloaded == 1


def test_s3_errors_are_clear(tmp_path, moto_server, s3_bucket):
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        sync_prefix("s3://no-such-bucket/x", tmp_path / "dl")
    with pytest.raises(FileNotFoundError, match="no objects under"):
        sync_prefix(f"s3://{s3_bucket}/empty", tmp_path / "dl")
    cfg = PrepareSettings(source="s3", input=f"s3://{s3_bucket}/empty", download_dir=tmp_path / "dl")
    with pytest.raises(FileNotFoundError):
        prepare(cfg)
