"""The numpy CTranslate2 model.bin reader: round trip of a synthetic file, aliases, int8 scales, truncation."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from components.ct2 import CT2FormatError, read_header, read_model_bin

_DTYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3, np.dtype("float16"): 4}


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\x00"
    return struct.pack("<H", len(raw)) + raw


def _write_model_bin(path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> None:
    """Serialise like CTranslate2's ``model_spec._serialize`` (binary version >= 4 layout)."""
    out = [struct.pack("<I", version), _string("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, array in variables.items():
        array = np.require(array, requirements="C")  # (ascontiguousarray would turn scalars into 1-d)
        out += [_string(name), struct.pack("<B", array.ndim), struct.pack(f"<{array.ndim}I", *array.shape)]
        out += [struct.pack("<B", _DTYPE_IDS[array.dtype]), struct.pack("<I", array.nbytes), array.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))


@pytest.fixture
def synthetic(tmp_path):
    rng = np.random.default_rng(0)
    float_w = rng.standard_normal((5, 3)).astype(np.float32)
    q = rng.integers(-127, 128, size=(4, 6), dtype=np.int8)
    scale = rng.uniform(10.0, 100.0, size=4).astype(np.float32)
    variables = {
        "decoder/embeddings/weight": rng.standard_normal((7, 3)).astype(np.float16),
        "encoder/layer_0/ffn/linear_0/weight": float_w,
        "encoder/layer_0/ffn/linear_0/bias": np.arange(5, dtype=np.float32),
        "encoder/layer_0/ffn/linear_1/weight": q,
        "encoder/layer_0/ffn/linear_1/weight_scale": scale,
        "encoder/num_heads": np.array(6, dtype=np.int16),
        "decoder/pre_norm": np.array(1, dtype=np.int8),
    }
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    path = tmp_path / "model.bin"
    _write_model_bin(path, variables, aliases)
    return path, variables, q, scale


def test_round_trip_with_alias_and_int8(synthetic):
    path, variables, q, scale = synthetic
    got = read_model_bin(path)
    emb = variables["decoder/embeddings/weight"]
    assert got["decoder/embeddings/weight"].dtype == np.float16
    np.testing.assert_array_equal(got["decoder/embeddings/weight"], emb)
    np.testing.assert_array_equal(got["decoder/projection/weight"], emb)  # alias resolved
    np.testing.assert_array_equal(got["encoder/layer_0/ffn/linear_0/weight"], variables["encoder/layer_0/ffn/linear_0/weight"])
    np.testing.assert_array_equal(got["encoder/layer_0/ffn/linear_0/bias"], np.arange(5, dtype=np.float32))
    deq = got["encoder/layer_0/ffn/linear_1/weight"]
    assert deq.dtype == np.float32 and deq.shape == (4, 6)
    np.testing.assert_allclose(deq, q.astype(np.float32) / scale[:, None], rtol=1e-6)
    assert "encoder/layer_0/ffn/linear_1/weight_scale" not in got  # consumed by dequantisation
    assert got["encoder/num_heads"].shape == () and int(got["encoder/num_heads"]) == 6
    assert int(got["decoder/pre_norm"]) == 1
    assert read_header(path) == (6, "WhisperSpec", 3)


def test_int8_weight_without_scale_is_an_error(tmp_path):
    path = tmp_path / "model.bin"
    _write_model_bin(path, {"a/weight": np.ones((2, 2), dtype=np.int8)}, {})
    with pytest.raises(CT2FormatError, match="a/weight_scale"):
        read_model_bin(path)


@pytest.mark.parametrize("cut_bytes", [1, 10, 200])
def test_truncated_file_gives_clear_error(synthetic, cut_bytes):
    path = synthetic[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut_bytes])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_model_bin(path)


def test_unsupported_version_and_trailing_bytes(tmp_path):
    path = tmp_path / "model.bin"
    _write_model_bin(path, {"x": np.zeros(2, np.float32)}, {}, version=7)
    with pytest.raises(CT2FormatError, match="binary version 7"):
        read_model_bin(path)
    _write_model_bin(path, {"x": np.zeros(2, np.float32)}, {})
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(CT2FormatError, match="trailing"):
        read_model_bin(path)
