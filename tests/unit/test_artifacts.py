"""components.artifacts: files appear whole or not at all."""

from __future__ import annotations

import pytest

from components.artifacts import atomic_file, write_json_atomic


def test_atomic_file_replaces_the_target_in_one_step(tmp_path):
    target = tmp_path / "out" / "report.md"
    with atomic_file(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()  # nothing visible until the write is complete
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_json_atomic(tmp_path / "metrics.json", {"wer": 1.0})
    before = target.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
