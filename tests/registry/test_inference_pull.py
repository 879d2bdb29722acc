"""A registry reference as the model of the inference API: pulled into a verified local cache, its shipped
CTranslate2 int8 export loaded; a cached copy is reused, a damaged one pulled again (real moto S3)."""

from __future__ import annotations

import shutil

from components.inference import load_model
from components.registry import register
from components.registry_ops import promote


def test_name_at_alias_pulls_verifies_caches_and_transcribes(project, tmp_path, tiny_whisper_dir, piper_clips):
    from components.ct2_export import export_ct2

    shutil.rmtree(project.student)
    shutil.copytree(tiny_whisper_dir, project.student)
    shipped = project.root / "models" / "exports" / "student-ct2_int8"
    shutil.rmtree(shipped)
    export_ct2(project.student, shipped, quantization="int8")
    cfg = project.settings()
    version = register(cfg, metrics_dir=project.metrics, root=project.root)["version"]
    promote(cfg.registry, version, "production")
    cache = tmp_path / "cache"

    model = load_model(f"{cfg.registry.model_name}@production", registry_cfg=cfg.registry, cache_dir=cache)
    pulled = cache / cfg.registry.model_name / f"v{version}"
    assert model.form.kind == "ct2_int8" and model.form.path == pulled / "exports" / "student-ct2_int8"
    assert model.transcribe(piper_clips[0].audio).duration_s > 0

    weights = pulled / "exports" / "student-ct2_int8" / "model.bin"
    stamp = weights.stat().st_mtime_ns
    load_model(f"{cfg.registry.model_name}:{version}", registry_cfg=cfg.registry, cache_dir=cache)
    assert weights.stat().st_mtime_ns == stamp  # verified in place, not downloaded again
    weights.write_bytes(b"damaged")
    again = load_model(f"{cfg.registry.model_name}@production", registry_cfg=cfg.registry, cache_dir=cache)
    assert weights.stat().st_size > 100 and again.form.kind == "ct2_int8"  # pulled again, checksums verified
