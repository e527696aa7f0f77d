"""Importers of features made by other tools: ``.npy`` arrays with key files, MegaFace ``.bin`` files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .sets import FeatureFormatError, normalize_rows, read_lines
from .writing import FeatureSetWriter


def _read_labels(path: Path, n: int) -> np.ndarray:
    labels = np.load(path) if path.suffix == ".npy" else np.asarray([int(x) for x in read_lines(path)])
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise FeatureFormatError(f"{path}: {labels.shape[0]} labels for {n} feature rows")
    return labels.astype(np.int64)


def import_npy(
    npy: str | os.PathLike,
    keys_file: str | os.PathLike,
    out: str | os.PathLike,
    model: str,
    labels_file: str | os.PathLike | None = None,
    shard_size: int = 100_000,
    dtype: str = "float32",
) -> Path:
    """Convert an (n, D) ``.npy`` (memory-mapped) + one-key-per-line text file into a feature-set directory."""
    npy, keys_file = Path(npy), Path(keys_file)
    arr = np.load(npy, mmap_mode="r")
    if arr.ndim != 2:
        raise FeatureFormatError(f"{npy}: expected a 2-D array, got shape {arr.shape}")
    keys = read_lines(keys_file)
    if len(keys) != arr.shape[0]:
        raise FeatureFormatError(f"{keys_file}: {len(keys)} keys for {arr.shape[0]} rows of {npy}")
    labels = _read_labels(Path(labels_file), arr.shape[0]) if labels_file else np.full(arr.shape[0], -1, np.int64)
    with FeatureSetWriter(out, model, arr.shape[1], shard_size, dtype) as writer:
        for lo in range(0, arr.shape[0], shard_size):
            hi = min(lo + shard_size, arr.shape[0])
            normalize_rows(arr[lo:hi], npy, lo)  # errors name the .npy file and row
            writer.add(np.asarray(arr[lo:hi]), keys[lo:hi], labels[lo:hi])
    return Path(out)


def read_megaface_bin(path: str | os.PathLike) -> np.ndarray:
    """One MegaFace devkit feature file: int32 header (rows, cols, stride, type=5 float32) + float32 data."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 16:
        raise FeatureFormatError(f"{path}: too short for a MegaFace .bin header")
    rows, cols, _stride, typ = np.frombuffer(raw[:16], dtype="<i4")
    if typ != 5:
        raise FeatureFormatError(f"{path}: matrix type {typ} is not float32 (5)")
    n = int(rows) * int(cols)
    if n <= 0 or len(raw) != 16 + 4 * n:
        raise FeatureFormatError(
            f"{path}: header says {rows}x{cols} floats but the file has {len(raw) - 16} data bytes"
        )
    return np.frombuffer(raw[16:], dtype="<f4").astype(np.float32)


def import_megaface(
    root: str | os.PathLike,
    out: str | os.PathLike,
    model: str,
    suffix: str = ".bin",
    identities: str | os.PathLike | None = None,
    shard_size: int = 100_000,
    dtype: str = "float32",
    progress: bool = True,
) -> tuple[Path, int]:
    """Import every ``*<suffix>`` file under ``root`` (devkit per-image features) into a feature-set dir.

    Key = path relative to ``root`` with ``suffix`` removed (e.g. ``Aaron_Eckhart/Aaron_Eckhart_1.png``).
    With ``identities`` (a text file, one identity name per line, index = label; created/extended as
    needed so probes and mates share it), labels come from each file's parent directory name; else -1.
    Returns (output directory, number of files).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MegaFace feature directory not found: {root}")
    files = sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())
    if not files:
        raise FeatureFormatError(f"{root}: no files ending in {suffix!r}")
    names: list[str] = read_lines(identities) if identities and Path(identities).is_file() else []
    index = {n: i for i, n in enumerate(names)}
    writer = None
    iterator = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="import .bin", unit="file")
    batch_f, batch_k, batch_l = [], [], []
    for path in iterator:
        vec = read_megaface_bin(path)
        if writer is None:
            writer = FeatureSetWriter(out, model, vec.shape[0], shard_size, dtype)
        elif vec.shape[0] != writer.dim:
            raise FeatureFormatError(f"{path}: {vec.shape[0]} values, earlier files had {writer.dim}")
        rel = path.relative_to(root).as_posix()
        batch_k.append(rel[: -len(suffix)])
        batch_f.append(vec)
        label = -1
        if identities:
            ident = path.parent.name
            if ident not in index:
                index[ident] = len(names)
                names.append(ident)
            label = index[ident]
        batch_l.append(label)
        if len(batch_k) >= 8192:
            writer.add(np.stack(batch_f), batch_k, batch_l)
            batch_f, batch_k, batch_l = [], [], []
    if batch_k:
        writer.add(np.stack(batch_f), batch_k, batch_l)
    writer.close()
    if identities:
        from benchmark.atomic import write_text

        write_text(identities, "\n".join(names) + "\n")
    return Path(out), len(files)
