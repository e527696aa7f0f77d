"""The mf2m feature-set format (``mf2m.features.v2``; ``v1`` is read too): reading, validation, writing.

A *feature set* is either one HDF5 file or a directory holding ``manifest.json`` plus HDF5 shards.
Every HDF5 file holds

* ``features``: (n, D) float16 or float32, one row per image (re-normalised to unit L2 on load, in float32:
  each row divided by ``float32(sqrt(Σ x_i²))``, the sum taken in float64 — see ``row_norms``);
* ``keys``: (n,) UTF-8 strings, the image's relative path or unique name;
* ``labels``: (n,) int64 identity index, -1 where unknown;
* file attributes ``model`` (string) and ``dim`` (int);
* (v2, optional) ``identities``: (n,) UTF-8 identity name of each row ("" where unknown), and ``sources``:
  (n,) UTF-8 key of the clean image an attacked probe was made from ("" where none).  ``mf2m search``
  pairs probes with mates by these names and never pairs a probe with its own source.

``manifest.json``::

    {"format": "mf2m.features.v2", "model": "...", "dim": 512, "count": 1000000,
     "shards": [{"path": "part-00000.h5", "count": 100000, "sha256": "..."}, ...]}

Shard paths are relative to the manifest's directory.

Writer API (used by the embed stage)::

    from benchmark.features import write_feature_file, write_manifest, FeatureSetWriter

    write_feature_file("probes.h5", feats, keys, labels, model="arcface-r100")   # one atomic file
    with FeatureSetWriter("gallery/", model="arcface-r100", dim=512, shard_size=100_000) as w:
        for feats, keys, labels in batches:      # any batch size; shards are cut at shard_size
            w.add(feats, keys, labels)
    # -> gallery/part-00000.h5, ..., gallery/manifest.json (written last, atomically)
    write_manifest("gallery/", model, dim, ["part-00000.h5", ...])   # (re)build a manifest

Reading: ``FeatureSet(path)`` checks the manifest (format, counts, checksums, model/dim of every
shard) and streams rows with ``iter_blocks``; ``load`` returns everything as arrays.  Every
problem raises ``FeatureFormatError`` (a ``ValueError``) naming the offending file.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_path, write_json
from benchmark.manifest import sha256_file

FORMAT = "mf2m.features.v2"
READ_FORMATS = ("mf2m.features.v1", FORMAT)   # v1: no per-row identity names / source keys
MANIFEST = "manifest.json"
NAME_COLUMNS = ("identities", "sources")     # optional per-row string datasets (v2)


class FeatureFormatError(ValueError):
    """A feature file or manifest that breaks the format (the message names the file)."""


@dataclass
class Shard:
    """One HDF5 file of a feature set."""

    path: Path
    count: int
    sha256: str | None = None


@dataclass
class FeatureBlock:
    """A block of consecutive rows: unit-norm float32 features, keys, labels, and where they came from."""

    features: np.ndarray
    keys: np.ndarray
    labels: np.ndarray
    path: Path
    start: int
    raw: np.ndarray | None = None   # the stored rows (float16/float32), before normalisation
    norms: np.ndarray | None = None  # (n,) float32 row norms of ``raw`` (the load rule's)
    identities: np.ndarray | None = None   # (n,) identity names ("" unknown) when the file has them
    sources: np.ndarray | None = None      # (n,) clean source keys ("" none) when the file has them


@dataclass
class FeatureArrays:
    """A whole feature set in memory (features unit-norm float32)."""

    features: np.ndarray
    keys: np.ndarray
    labels: np.ndarray
    model: str
    dim: int
    source: Path
    shards: list[Shard] = field(default_factory=list)
    norms: np.ndarray | None = None  # (n,) float32 row norms (set by ``load(keep_storage=True)``)
    identities: np.ndarray | None = None   # (n,) identity names ("" unknown); None: the set has none (v1)
    sources: np.ndarray | None = None      # (n,) clean source keys ("" none); None: the set has none


def _h5():
    import h5py
    return h5py


# a key that is not a safe relative path (see benchmark/safepath.py), found in "\n"-joined keys at once
_UNSAFE_KEY = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\\]|^/|^[A-Za-z]:|(?:^|/)\.{0,2}(?:/|$)", re.MULTILINE)


def check_keys(keys: np.ndarray, path: Path) -> np.ndarray:
    """``keys`` when every one is a safe relative path (no ``..``, absolute path or control character);
    else ``FeatureFormatError`` naming the first bad key (keys may name files a later stage writes)."""
    joined = "\n".join(keys.tolist())
    if keys.size and (joined.count("\n") != keys.size - 1 or _UNSAFE_KEY.search(joined)):
        from .safepath import key_problem
        for key in keys.tolist():
            why = key_problem(key)
            if why:
                raise FeatureFormatError(f"{path}: key {key!r} {why}; refusing the feature set")
    return keys


def _decode_keys(raw: np.ndarray, path: Path) -> np.ndarray:
    """HDF5 strings (bytes or str) -> numpy unicode array."""
    try:
        out = [k.decode("utf-8") if isinstance(k, (bytes, np.bytes_)) else str(k) for k in raw]
    except UnicodeDecodeError as exc:
        raise FeatureFormatError(f"{path}: keys are not valid UTF-8 ({exc})") from exc
    return np.asarray(out, dtype=str) if out else np.zeros(0, dtype="<U1")


def _file_header(path: Path) -> tuple[str, int, int]:
    """(model, dim, n) of one HDF5 feature file, after checking its datasets and attributes."""
    h5py = _h5()
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise FeatureFormatError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with fh:
        for name in ("features", "keys", "labels"):
            if name not in fh:
                raise FeatureFormatError(f"{path}: missing dataset {name!r}")
        for name in ("model", "dim"):
            if name not in fh.attrs:
                raise FeatureFormatError(f"{path}: missing file attribute {name!r}")
        feats, keys, labels = fh["features"], fh["keys"], fh["labels"]
        model = fh.attrs["model"]
        model = model.decode() if isinstance(model, bytes) else str(model)
        dim = int(fh.attrs["dim"])
        if feats.ndim != 2 or feats.shape[1] != dim:
            raise FeatureFormatError(f"{path}: features have shape {feats.shape}, expected (n, {dim})")
        if feats.dtype not in (np.float16, np.float32):
            raise FeatureFormatError(f"{path}: features must be float16 or float32, not {feats.dtype}")
        n = feats.shape[0]
        if keys.shape != (n,) or labels.shape != (n,):
            raise FeatureFormatError(f"{path}: keys {keys.shape} / labels {labels.shape} do not match "
                                     f"{n} feature rows")
        if labels.dtype.kind not in "iu":
            raise FeatureFormatError(f"{path}: labels must be int64, not {labels.dtype}")
        if keys.dtype.kind not in "OSU":
            raise FeatureFormatError(f"{path}: keys must be UTF-8 strings, not {keys.dtype}")
        for name in NAME_COLUMNS:
            if name in fh and (fh[name].shape != (n,) or fh[name].dtype.kind not in "OSU"):
                raise FeatureFormatError(f"{path}: {name!r} must be {n} UTF-8 strings (one per row), found "
                                         f"shape {fh[name].shape} dtype {fh[name].dtype}")
    return model, dim, n


def _columns(path: Path) -> set[str]:
    """Which optional per-row string datasets (``identities``, ``sources``) a feature file holds."""
    with _h5().File(path, "r") as fh:
        return {name for name in NAME_COLUMNS if name in fh}


_NORM_CHUNK = 8192  # rows per float64 norm computation


def _float32_tensor(features: np.ndarray):
    """A new float32 torch tensor holding ``features`` (the input, maybe a read-only map, is never modified)."""
    import torch
    arr = np.ascontiguousarray(features)
    if arr.dtype == np.float32:
        return torch.from_numpy(arr.copy())
    with warnings.catch_warnings():  # read-only input: torch only reads it (the conversion copies)
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).to(torch.float32)


def row_norms(features: np.ndarray, path: Path | str, start: int = 0) -> np.ndarray:
    """The load rule's float32 L2 norm of each row, ``float32(sqrt(Σ x_i²))`` with the sum in float64 (so the
    correctly rounded norm, whatever library or batch computes it); NaN/Inf or zero rows raise an error
    naming the file and row (``start`` = the block's first row)."""
    import torch
    x = _float32_tensor(features) if not isinstance(features, torch.Tensor) else features
    norms = torch.empty(x.shape[0], dtype=torch.float32)
    for lo in range(0, x.shape[0], _NORM_CHUNK):  # bounded float64 temporaries
        norms[lo:lo + _NORM_CHUNK] = torch.linalg.vector_norm(x[lo:lo + _NORM_CHUNK], dim=1, dtype=torch.float64)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        rows = np.flatnonzero(bad.numpy())
        nonfinite = ~np.isfinite(x[torch.from_numpy(rows)].numpy()).all(axis=1)
        row = int(rows[np.flatnonzero(nonfinite)[0]] if nonfinite.any() else rows[0]) + start
        what = "has NaN or Inf features" if nonfinite.any() else "has values too large for float32 (norm overflows)"
        raise FeatureFormatError(f"{path}: row {row} {what} ({rows.size} such rows in this block)")
    zero = ~(norms > 0)
    if bool(zero.any()):
        rows = np.flatnonzero(zero.numpy())
        raise FeatureFormatError(f"{path}: row {int(rows[0]) + start} is an all-zero feature vector ({rows.size} "
                                 f"such rows in this block)")
    return norms.numpy()


def normalize_rows(features: np.ndarray, path: Path | str, start: int = 0,
                   norms: np.ndarray | None = None) -> np.ndarray:
    """Unit-L2 float32 copy of ``features`` (float32 rows divided by ``row_norms``, validated there unless
    ``norms`` are given); each row's result depends only on that row, so blocks, single rows and index
    selections agree bit for bit."""
    import torch
    x = _float32_tensor(features)
    n = row_norms(x, path, start) if norms is None else np.asarray(norms, np.float32)
    return x.div_(torch.from_numpy(n)[:, None]).numpy()


def _verify_checksums(shards: list[Shard], manifest: Path) -> None:
    """Raise if a shard's SHA-256 differs from its manifest entry (shards hashed on two threads)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=min(2, max(len(shards), 1))) as pool:  # hashlib releases the GIL
        actual = list(pool.map(lambda sh: sha256_file(sh.path), shards))
    for shard, sha in zip(shards, actual):
        if sha != shard.sha256:
            raise FeatureFormatError(f"{shard.path}: sha256 {sha} does not match {manifest} ({shard.sha256})")


class FeatureSet:
    """An opened (validated) feature set: one HDF5 file or a directory with ``manifest.json``."""

    def __init__(self, path: str | os.PathLike, verify_checksums: bool = True):
        """Open ``path`` and check its manifest, shard counts/checksums and model/dim consistency."""
        self.path = Path(path)
        self.format, self.manifest_identities = FORMAT, None
        if self.path.is_dir():
            self.shards, self.model, self.dim = self._read_manifest(verify_checksums)
        elif self.path.is_file():
            model, dim, n = _file_header(self.path)
            self.shards, self.model, self.dim = [Shard(self.path, n)], model, dim
        else:
            raise FileNotFoundError(f"feature set not found: {self.path}")
        self.count = sum(s.count for s in self.shards)
        columns = [_columns(s.path) for s in self.shards]
        #: optional per-row columns every shard holds (a column some shards lack is treated as absent)
        self.columns = set.intersection(*columns) if columns else set()

    def lacks(self, column: str) -> str | None:
        """None when every row has ``column`` (``identities``/``sources``), else why not (for messages)."""
        if column in self.columns:
            return None
        if self.format == READ_FORMATS[0]:
            return f"{self.path} is a {READ_FORMATS[0]} feature set (written before per-row {column} existed)"
        return f"{self.path} has no per-row {column!r} dataset"

    def _read_manifest(self, verify: bool) -> tuple[list[Shard], str, int]:
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FeatureFormatError(f"{self.path}: directory has no {MANIFEST}")
        try:
            man = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FeatureFormatError(f"{mpath}: not valid JSON ({exc})") from exc
        if not isinstance(man, dict):
            raise FeatureFormatError(f"{mpath}: not a JSON object")
        if man.get("format") not in READ_FORMATS:
            raise FeatureFormatError(f"{mpath}: format must be {FORMAT!r} (or {READ_FORMATS[0]!r}), found "
                                     f"{man.get('format')!r}")
        self.format = man["format"]
        names = man.get("identities")
        self.manifest_identities = ([str(x) for x in names] if isinstance(names, list) else None)
        for name in ("model", "dim", "shards"):
            if name not in man:
                raise FeatureFormatError(f"{mpath}: missing {name!r}")
        model, dim = str(man["model"]), int(man["dim"])
        shards = []
        for i, entry in enumerate(man["shards"]):
            if not isinstance(entry, dict) or "path" not in entry or "count" not in entry:
                raise FeatureFormatError(f"{mpath}: shard {i} needs 'path' and 'count'")
            spath = self.path / entry["path"]
            if not spath.is_file():
                raise FileNotFoundError(f"{mpath}: shard {entry['path']!r} not found ({spath})")
            s_model, s_dim, n = _file_header(spath)
            if n != int(entry["count"]):
                raise FeatureFormatError(f"{spath}: holds {n} rows but {mpath} says {entry['count']}")
            if s_model != model or s_dim != dim:
                raise FeatureFormatError(f"{spath}: model/dim {s_model!r}/{s_dim} differ from the manifest's "
                                         f"{model!r}/{dim} ({mpath})")
            sha = entry.get("sha256")
            if verify and not sha:
                raise FeatureFormatError(f"{mpath}: shard {entry['path']!r} has no sha256")
            shards.append(Shard(spath, n, sha))
        if verify:
            _verify_checksums(shards, mpath)
        if "count" in man and int(man["count"]) != sum(s.count for s in shards):
            raise FeatureFormatError(f"{mpath}: count {man['count']} != sum of shard counts "
                                     f"{sum(s.count for s in shards)}")
        return shards, model, dim

    def iter_blocks(self, block_size: int = 65536, unit: bool = True,
                    into: np.ndarray | None = None) -> Iterator[FeatureBlock]:
        """Stream the rows shard by shard in blocks of at most ``block_size`` (unit-norm float32; with
        ``unit=False`` only validated: ``features`` is None, ``raw`` and ``norms`` are set).  ``into``: an
        (n, D) array the stored rows are read straight into (``raw`` is then a view of it; no copy)."""
        h5py = _h5()
        start = 0
        for shard in self.shards:
            with h5py.File(shard.path, "r") as fh:
                dset = fh["features"]
                direct = into is not None and dset.dtype == into.dtype
                for lo in range(0, shard.count, block_size):
                    hi = min(lo + block_size, shard.count)
                    if direct:
                        dset.read_direct(into, np.s_[lo:hi], np.s_[start + lo:start + hi])
                        raw = into[start + lo:start + hi]
                    else:
                        raw = dset[lo:hi]
                        if into is not None:
                            into[start + lo:start + hi] = raw
                    norms = row_norms(raw, shard.path, lo)
                    feats = normalize_rows(raw, shard.path, lo, norms) if unit else None
                    keys = check_keys(_decode_keys(fh["keys"][lo:hi], shard.path), shard.path)
                    labels = np.asarray(fh["labels"][lo:hi], dtype=np.int64)
                    cols = {c: _decode_keys(fh[c][lo:hi], shard.path) if c in self.columns else None
                            for c in NAME_COLUMNS}
                    yield FeatureBlock(feats, keys, labels, shard.path, start + lo, raw, norms, **cols)
            start += shard.count

    def storage_dtype(self) -> np.dtype:
        """float16 when every shard stores float16, else float32 (float16 rows upcast exactly)."""
        h5py = _h5()
        for shard in self.shards:
            with h5py.File(shard.path, "r") as fh:
                if fh["features"].dtype != np.float16:
                    return np.dtype(np.float32)
        return np.dtype(np.float16)

    def load(self, block_size: int = 65536, progress: bool = False, keep_storage: bool = False) -> FeatureArrays:
        """All rows in memory (float32 unit-norm features); duplicate keys raise an error naming the file.

        ``keep_storage``: keep the validated rows as stored (float16 if every shard is float16, else float32,
        not normalised) — half the memory for float16 — and their ``norms``; wrap both in ``UnitRows`` to read
        unit float32 rows.
        """
        dtype = self.storage_dtype() if keep_storage else np.dtype(np.float32)
        feats = np.empty((self.count, self.dim), dtype=dtype)
        norms = np.empty(self.count, dtype=np.float32) if keep_storage else None
        keys, labels = [], []
        cols: dict[str, list[np.ndarray]] = {c: [] for c in NAME_COLUMNS}
        blocks = self.iter_blocks(block_size, unit=not keep_storage, into=feats if keep_storage else None)
        if progress:
            from tqdm import tqdm
            blocks = tqdm(blocks, total=sum(-(-s.count // block_size) for s in self.shards),
                          desc=f"read {self.path.name}", unit="block", leave=False)
        for b in blocks:
            if keep_storage:
                norms[b.start:b.start + len(b.keys)] = b.norms
            else:
                feats[b.start:b.start + len(b.keys)] = b.features
            keys.append(b.keys)
            labels.append(b.labels)
            for c in NAME_COLUMNS:
                if getattr(b, c) is not None:
                    cols[c].append(getattr(b, c))
        key_arr = np.concatenate(keys) if keys else np.zeros(0, dtype="<U1")
        lab_arr = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        check_unique_keys(key_arr, self)
        extra = {c: (np.concatenate(cols[c]) if cols[c] else np.zeros(0, dtype="<U1")) if c in self.columns
                 else None for c in NAME_COLUMNS}
        return FeatureArrays(feats, key_arr, lab_arr, self.model, self.dim, self.path, list(self.shards), norms,
                             **extra)

    def shard_of_row(self, row: int) -> Path:
        """The file holding global row ``row`` (for error messages)."""
        for shard in self.shards:
            if row < shard.count:
                return shard.path
            row -= shard.count
        return self.path


class UnitRows:
    """Stored feature rows (float16/float32) that read as unit-norm float32 rows, block by block.

    ``rows[i]`` / ``rows[a:b]`` / ``rows[index_array]`` give exactly the rows ``FeatureSet.load`` returns
    (``normalize_rows`` works row by row), so a 1M×512 float16 gallery costs 1 GB instead of 2 GB.  With
    the rows' ``norms`` (from ``load(keep_storage=True)``) a read is one conversion and one division.
    """

    def __init__(self, raw: np.ndarray, path: Path | str, norms: np.ndarray | None = None):
        self.raw, self.path, self.norms = raw, path, norms

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.raw.shape[0]), int(self.raw.shape[1]))

    @property
    def dtype(self):
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def __getitem__(self, idx) -> np.ndarray:
        norms = None if self.norms is None else np.atleast_1d(self.norms[idx])
        return normalize_rows(np.atleast_2d(self.raw[idx]), self.path, norms=norms)


def check_unique_keys(keys: np.ndarray, fs: FeatureSet) -> None:
    """Raise if a key occurs twice, naming the key and the file(s) holding it."""
    if len(keys) < 2:
        return
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    dup = np.flatnonzero(sk[1:] == sk[:-1])
    if dup.size:
        i = dup[0]
        a, b = int(order[i]), int(order[i + 1])
        files = {str(fs.shard_of_row(a)), str(fs.shard_of_row(b))}
        raise FeatureFormatError(f"{' and '.join(sorted(files))}: duplicate key {str(sk[i])!r} (rows {a} and {b}; "
                                 f"{dup.size} duplicate(s) in {fs.path})")


def check_compatible(sets: dict[str, FeatureSet]) -> tuple[str, int]:
    """All roles must share one model and dim; returns them or raises naming the files."""
    items = list(sets.items())
    role0, fs0 = items[0]
    for role, fs in items[1:]:
        if fs.model != fs0.model or fs.dim != fs0.dim:
            raise FeatureFormatError(f"mixed feature sets: {role} {fs.path} is model {fs.model!r} dim {fs.dim}, "
                                     f"but {role0} {fs0.path} is model {fs0.model!r} dim {fs0.dim}")
    return fs0.model, fs0.dim


# ----------------------------------------------------------------------------------------- writing

def write_feature_file(path: str | os.PathLike, features: np.ndarray, keys: Sequence[str],
                       labels: Sequence[int] | np.ndarray | None, model: str, dim: int | None = None,
                       dtype: str = "float32", identities: Sequence[str] | None = None,
                       sources: Sequence[str] | None = None) -> Path:
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
        fh.create_dataset("keys", data=np.asarray(keys, dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
        fh.create_dataset("labels", data=labels)
        for name, values in columns.items():
            fh.create_dataset(name, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype("utf-8"))
        fh.attrs["model"] = model
        fh.attrs["dim"] = dim
    return path


def write_manifest(directory: str | os.PathLike, model: str, dim: int,
                   shards: Iterable[str | os.PathLike]) -> Path:
    """Write ``directory/manifest.json`` for the given shard files (counts and sha256 are computed)."""
    directory = Path(directory)
    entries = []
    for shard in shards:
        spath = Path(shard) if Path(shard).is_absolute() else directory / shard
        s_model, s_dim, n = _file_header(spath)
        if s_model != model or s_dim != dim:
            raise FeatureFormatError(f"{spath}: model/dim {s_model!r}/{s_dim} differ from {model!r}/{dim}")
        entries.append({"path": os.path.relpath(spath, directory), "count": n, "sha256": sha256_file(spath)})
    man = {"format": FORMAT, "model": model, "dim": int(dim), "count": sum(e["count"] for e in entries),
           "shards": entries}
    write_json(directory / MANIFEST, man)
    return directory / MANIFEST


class FeatureSetWriter:
    """Write a sharded feature set incrementally: ``add`` batches, shards cut at ``shard_size``, manifest on close."""

    def __init__(self, directory: str | os.PathLike, model: str, dim: int, shard_size: int = 100_000,
                 dtype: str = "float32"):
        self.directory, self.model, self.dim = Path(directory), model, int(dim)
        self.shard_size, self.dtype = int(shard_size), dtype
        self.directory.mkdir(parents=True, exist_ok=True)
        self._buf: list[tuple[np.ndarray, list[str], np.ndarray, list[str] | None, list[str] | None]] = []
        self._buffered = 0
        self.shards: list[str] = []
        self._seen: set[str] = set()

    def add(self, features: np.ndarray, keys: Sequence[str], labels: Sequence[int] | np.ndarray | None = None,
            identities: Sequence[str] | None = None, sources: Sequence[str] | None = None):
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
        self._buf.append((np.asarray(features), keys, labels,
                          None if identities is None else [str(v) for v in identities],
                          None if sources is None else [str(v) for v in sources]))
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
        write_feature_file(self.directory / name, feats[:n], keys[:n], labels[:n], self.model, self.dim,
                           self.dtype, None if ids is None else ids[:n], None if srcs is None else srcs[:n])
        self.shards.append(name)
        self._buf = [(feats[n:], keys[n:], labels[n:], None if ids is None else ids[n:],
                      None if srcs is None else srcs[n:])] if len(keys) > n else []
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


# --------------------------------------------------------------------------------------- importers

def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty, non-comment (#) lines of a UTF-8 text file, stripped."""
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def _read_labels(path: Path, n: int) -> np.ndarray:
    labels = np.load(path) if path.suffix == ".npy" else np.asarray([int(x) for x in read_lines(path)])
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise FeatureFormatError(f"{path}: {labels.shape[0]} labels for {n} feature rows")
    return labels.astype(np.int64)


def import_npy(npy: str | os.PathLike, keys_file: str | os.PathLike, out: str | os.PathLike, model: str,
               labels_file: str | os.PathLike | None = None, shard_size: int = 100_000,
               dtype: str = "float32") -> Path:
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
        raise FeatureFormatError(f"{path}: header says {rows}x{cols} floats but the file has {len(raw) - 16} "
                                 f"data bytes")
    return np.frombuffer(raw[16:], dtype="<f4").astype(np.float32)


def import_megaface(root: str | os.PathLike, out: str | os.PathLike, model: str, suffix: str = ".bin",
                    identities: str | os.PathLike | None = None, shard_size: int = 100_000,
                    dtype: str = "float32", progress: bool = True) -> tuple[Path, int]:
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


def describe(fs: FeatureSet) -> dict:
    """Summary of a validated feature set (reads every row: checks NaN/Inf/zero rows and duplicate keys)."""
    arrays = fs.load()
    labels = arrays.labels
    return {"path": str(fs.path), "model": fs.model, "dim": fs.dim, "count": fs.count,
            "shards": len(fs.shards), "labelled": int((labels >= 0).sum()),
            "identities": int(np.unique(labels[labels >= 0]).size)}
