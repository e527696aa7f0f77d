"""Writing feature sets: one atomic HDF5 file, sharded sets with a manifest written last."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_path, write_json
from benchmark.manifest import sha256_file

from .sets import FORMAT, MANIFEST, FeatureFormatError, _file_header, _h5, normalize_rows


def write_feature_file(
    path: str | os.PathLike,
    features: np.ndarray,
    keys: Sequence[str],
    labels: Sequence[int] | np.ndarray | None,
    model: str,
    dim: int | None = None,
    dtype: str = "float32",
    identities: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> Path:
    """Atomically write one feature file (labels default to -1; ``identities``/``sources``: optional per-row
    identity names and clean source keys, "" where unknown); returns its path."""
    path = Path(path)
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"{path}: features must be 2-D, got shape {feats.shape}")
    dim = int(feats.shape[1] if dim is None else dim)
    if feats.shape[1] != dim:
        raise ValueError(f"{path}: features have {feats.shape[1]} columns, dim says {dim}")
    n = feats.shape[0]
    keys = [str(k) for k in keys]
    labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if len(keys) != n or labels.shape != (n,):
        raise ValueError(f"{path}: {n} feature rows but {len(keys)} keys and {labels.shape[0]} labels")
    normalize_rows(feats, path)  # refuse NaN/Inf/zero rows before writing anything
    if len(set(keys)) != n:
        raise ValueError(f"{path}: duplicate keys in the rows to write")
    columns = {}
    for name, values in (("identities", identities), ("sources", sources)):
        if values is not None:
            values = ["" if v is None else str(v) for v in values]
            if len(values) != n:
                raise ValueError(f"{path}: {n} feature rows but {len(values)} {name}")
            columns[name] = values
    h5py = _h5()
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset("features", data=feats.astype(dtype), chunks=(min(max(n, 1), 4096), dim))
        fh.create_dataset("keys", data=np.asarray(keys, dtype=object), dtype=h5py.string_dtype("utf-8"))
        fh.create_dataset("labels", data=labels)
        for name, values in columns.items():
            fh.create_dataset(name, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype("utf-8"))
        fh.attrs["model"] = model
        fh.attrs["dim"] = dim
    return path


def write_manifest(directory: str | os.PathLike, model: str, dim: int, shards: Iterable[str | os.PathLike]) -> Path:
    """Write ``directory/manifest.json`` for the given shard files (counts and sha256 are computed)."""
    directory = Path(directory)
    entries = []
    for shard in shards:
        spath = Path(shard) if Path(shard).is_absolute() else directory / shard
        s_model, s_dim, n = _file_header(spath)
        if s_model != model or s_dim != dim:
            raise FeatureFormatError(f"{spath}: model/dim {s_model!r}/{s_dim} differ from {model!r}/{dim}")
        entries.append({"path": os.path.relpath(spath, directory), "count": n, "sha256": sha256_file(spath)})
    man = {
        "format": FORMAT,
        "model": model,
        "dim": int(dim),
        "count": sum(e["count"] for e in entries),
        "shards": entries,
    }
    write_json(directory / MANIFEST, man)
    return directory / MANIFEST


class FeatureSetWriter:
    """Write a sharded feature set incrementally: ``add`` batches, shards cut at ``shard_size``, manifest on close."""

    def __init__(
        self, directory: str | os.PathLike, model: str, dim: int, shard_size: int = 100_000, dtype: str = "float32"
    ):
        self.directory, self.model, self.dim = Path(directory), model, int(dim)
        self.shard_size, self.dtype = int(shard_size), dtype
        self.directory.mkdir(parents=True, exist_ok=True)
        self._buf: list[tuple[np.ndarray, list[str], np.ndarray, list[str] | None, list[str] | None]] = []
        self._buffered = 0
        self.shards: list[str] = []
        self._seen: set[str] = set()

    def add(
        self,
        features: np.ndarray,
        keys: Sequence[str],
        labels: Sequence[int] | np.ndarray | None = None,
        identities: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
    ):
        """Append rows (duplicate keys across the whole set are refused); ``identities``/``sources`` must be
        given for every batch or for none."""
        keys = [str(k) for k in keys]
        dup = self._seen.intersection(keys)
        if dup or len(set(keys)) != len(keys):
            raise ValueError(f"{self.directory}: duplicate key(s) {sorted(dup)[:3] or 'within the batch'}")
        self._seen.update(keys)
        labels = np.full(len(keys), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        for name, values in (("identities", identities), ("sources", sources)):
            if self._buf and (values is None) != (self._buf[0][3 if name == "identities" else 4] is None):
                raise ValueError(f"{self.directory}: {name} given for some batches but not for others")
        self._buf.append(
            (
                np.asarray(features),
                keys,
                labels,
                None if identities is None else [str(v) for v in identities],
                None if sources is None else [str(v) for v in sources],
            )
        )
        self._buffered += len(keys)
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        feats = np.concatenate([b[0] for b in self._buf])
        keys = [k for b in self._buf for k in b[1]]
        labels = np.concatenate([b[2] for b in self._buf])
        ids = None if self._buf[0][3] is None else [v for b in self._buf for v in b[3]]
        srcs = None if self._buf[0][4] is None else [v for b in self._buf for v in b[4]]
        name = f"part-{len(self.shards):05d}.h5"
        write_feature_file(
            self.directory / name,
            feats[:n],
            keys[:n],
            labels[:n],
            self.model,
            self.dim,
            self.dtype,
            None if ids is None else ids[:n],
            None if srcs is None else srcs[:n],
        )
        self.shards.append(name)
        self._buf = (
            [(feats[n:], keys[n:], labels[n:], None if ids is None else ids[n:], None if srcs is None else srcs[n:])]
            if len(keys) > n
            else []
        )
        self._buffered = len(keys) - n

    def close(self) -> Path:
        """Write the last shard and the manifest; returns the manifest path."""
        if self._buffered:
            self._flush(self._buffered)
        return write_manifest(self.directory, self.model, self.dim, self.shards)

    def __enter__(self) -> FeatureSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
