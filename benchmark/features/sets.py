"""Feature sets: the ``mf2m.features.v2`` format (``v1`` is read too), reading and validation.

See the package docstring (``benchmark.features``) for the format.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.manifest import sha256_file

FORMAT = "mf2m.features.v2"
READ_FORMATS = ("mf2m.features.v1", FORMAT)  # v1: no per-row identity names / source keys
MANIFEST = "manifest.json"
NAME_COLUMNS = ("identities", "sources")  # optional per-row string datasets (v2)


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
    raw: np.ndarray | None = None  # the stored rows (float16/float32), before normalisation
    norms: np.ndarray | None = None  # (n,) float32 row norms of ``raw`` (the load rule's)
    identities: np.ndarray | None = None  # (n,) identity names ("" unknown) when the file has them
    sources: np.ndarray | None = None  # (n,) clean source keys ("" none) when the file has them


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
    identities: np.ndarray | None = None  # (n,) identity names ("" unknown); None: the set has none (v1)
    sources: np.ndarray | None = None  # (n,) clean source keys ("" none); None: the set has none


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
        from ..safepath import key_problem

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
            raise FeatureFormatError(f"{path}: keys {keys.shape} / labels {labels.shape} do not match {n} feature rows")
        if labels.dtype.kind not in "iu":
            raise FeatureFormatError(f"{path}: labels must be int64, not {labels.dtype}")
        if keys.dtype.kind not in "OSU":
            raise FeatureFormatError(f"{path}: keys must be UTF-8 strings, not {keys.dtype}")
        for name in NAME_COLUMNS:
            if name in fh and (fh[name].shape != (n,) or fh[name].dtype.kind not in "OSU"):
                raise FeatureFormatError(
                    f"{path}: {name!r} must be {n} UTF-8 strings (one per row), found "
                    f"shape {fh[name].shape} dtype {fh[name].dtype}"
                )
    return model, dim, n


def _columns(path: Path) -> set[str]:
    """Which optional per-row string datasets (``identities``, ``sources``) a feature file holds."""
    with _h5().File(path, "r") as fh:
        return {name for name in NAME_COLUMNS if name in fh}


def _float32_tensor(features: np.ndarray):
    """A new float32 torch tensor holding ``features`` (the input, maybe a read-only map, is never modified)."""
    import torch

    arr = np.ascontiguousarray(features)
    if arr.dtype == np.float32:
        return torch.from_numpy(arr.copy())
    with warnings.catch_warnings():  # read-only input: torch only reads it (the conversion copies)
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).to(torch.float32)


_F16_VALUES = None  # float64 value of every float16 bit pattern (built on first use)


def _norm_kernels():
    """Compiled row-norm kernels (numba): float64 sum of squares, row by row, in index order, of float32
    rows or of float16 bit patterns read through a table of their values."""
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def norms32(x, out):  # pragma: no cover (compiled)
        for i in numba.prange(x.shape[0]):
            acc = 0.0
            for j in range(x.shape[1]):
                v = np.float64(x[i, j])
                acc += v * v
            out[i] = np.float32(np.sqrt(acc))

    @numba.njit(parallel=True, cache=True, nogil=True)
    def norms16(bits, lut, out):  # pragma: no cover (compiled)
        for i in numba.prange(bits.shape[0]):
            acc = 0.0
            for j in range(bits.shape[1]):
                v = lut[bits[i, j]]
                acc += v * v
            out[i] = np.float32(np.sqrt(acc))

    return norms32, norms16


_NORMS = None


def row_norms(features, path: Path | str, start: int = 0) -> np.ndarray:
    """The load rule's float32 L2 norm of each row, ``float32(sqrt(Σ x_i²))`` with the squares and the sum
    in float64 (so the correctly rounded norm up to float64 rounding of the sum, whatever library or batch
    computes it); NaN/Inf or zero rows raise an error naming the file and row (``start`` = the block's
    first row).  float16 rows are read through a table of their float64 values (no float32 copy)."""
    global _F16_VALUES, _NORMS
    import torch

    x = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if _NORMS is None:
        _NORMS = _norm_kernels()
    out = np.empty(x.shape[0], np.float32)
    if x.shape[0] and x.dtype == np.float16:
        if _F16_VALUES is None:
            with np.errstate(invalid="ignore"):  # signalling-NaN patterns
                _F16_VALUES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
        _NORMS[1](np.ascontiguousarray(x).view(np.uint16), _F16_VALUES, out)
    elif x.shape[0]:
        _NORMS[0](np.ascontiguousarray(x, dtype=np.float32), out)
    norms = torch.from_numpy(out)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        rows = np.flatnonzero(bad.numpy())
        nonfinite = ~np.isfinite(x[rows].astype(np.float32)).all(axis=1)
        row = int(rows[np.flatnonzero(nonfinite)[0]] if nonfinite.any() else rows[0]) + start
        what = "has NaN or Inf features" if nonfinite.any() else "has values too large for float32 (norm overflows)"
        raise FeatureFormatError(f"{path}: row {row} {what} ({rows.size} such rows in this block)")
    zero = ~(norms > 0)
    if bool(zero.any()):
        rows = np.flatnonzero(zero.numpy())
        raise FeatureFormatError(
            f"{path}: row {int(rows[0]) + start} is an all-zero feature vector ({rows.size} such rows in this block)"
        )
    return norms.numpy()


def normalize_rows(
    features: np.ndarray, path: Path | str, start: int = 0, norms: np.ndarray | None = None
) -> np.ndarray:
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
            raise FeatureFormatError(
                f"{mpath}: format must be {FORMAT!r} (or {READ_FORMATS[0]!r}), found {man.get('format')!r}"
            )
        self.format = man["format"]
        names = man.get("identities")
        self.manifest_identities = [str(x) for x in names] if isinstance(names, list) else None
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
                raise FeatureFormatError(
                    f"{spath}: model/dim {s_model!r}/{s_dim} differ from the manifest's {model!r}/{dim} ({mpath})"
                )
            sha = entry.get("sha256")
            if verify and not sha:
                raise FeatureFormatError(f"{mpath}: shard {entry['path']!r} has no sha256")
            shards.append(Shard(spath, n, sha))
        if verify:
            _verify_checksums(shards, mpath)
        if "count" in man and int(man["count"]) != sum(s.count for s in shards):
            raise FeatureFormatError(
                f"{mpath}: count {man['count']} != sum of shard counts {sum(s.count for s in shards)}"
            )
        return shards, model, dim

    def iter_blocks(
        self, block_size: int = 65536, unit: bool = True, into: np.ndarray | None = None
    ) -> Iterator[FeatureBlock]:
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
                        dset.read_direct(into, np.s_[lo:hi], np.s_[start + lo : start + hi])
                        raw = into[start + lo : start + hi]
                    else:
                        raw = dset[lo:hi]
                        if into is not None:
                            into[start + lo : start + hi] = raw
                    norms = row_norms(raw, shard.path, lo)
                    feats = normalize_rows(raw, shard.path, lo, norms) if unit else None
                    keys = check_keys(_decode_keys(fh["keys"][lo:hi], shard.path), shard.path)
                    labels = np.asarray(fh["labels"][lo:hi], dtype=np.int64)
                    cols = {
                        c: _decode_keys(fh[c][lo:hi], shard.path) if c in self.columns else None for c in NAME_COLUMNS
                    }
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

            blocks = tqdm(
                blocks,
                total=sum(-(-s.count // block_size) for s in self.shards),
                desc=f"read {self.path.name}",
                unit="block",
                leave=False,
            )
        for b in blocks:
            if keep_storage:
                norms[b.start : b.start + len(b.keys)] = b.norms
            else:
                feats[b.start : b.start + len(b.keys)] = b.features
            keys.append(b.keys)
            labels.append(b.labels)
            for c in NAME_COLUMNS:
                if getattr(b, c) is not None:
                    cols[c].append(getattr(b, c))
        key_arr = np.concatenate(keys) if keys else np.zeros(0, dtype="<U1")
        lab_arr = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        check_unique_keys(key_arr, self)
        extra = {
            c: (np.concatenate(cols[c]) if cols[c] else np.zeros(0, dtype="<U1")) if c in self.columns else None
            for c in NAME_COLUMNS
        }
        return FeatureArrays(
            feats, key_arr, lab_arr, self.model, self.dim, self.path, list(self.shards), norms, **extra
        )

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
        raise FeatureFormatError(
            f"{' and '.join(sorted(files))}: duplicate key {str(sk[i])!r} (rows {a} and {b}; "
            f"{dup.size} duplicate(s) in {fs.path})"
        )


def check_compatible(sets: dict[str, FeatureSet]) -> tuple[str, int]:
    """All roles must share one model and dim; returns them or raises naming the files."""
    items = list(sets.items())
    role0, fs0 = items[0]
    for role, fs in items[1:]:
        if fs.model != fs0.model or fs.dim != fs0.dim:
            raise FeatureFormatError(
                f"mixed feature sets: {role} {fs.path} is model {fs.model!r} dim {fs.dim}, "
                f"but {role0} {fs0.path} is model {fs0.model!r} dim {fs0.dim}"
            )
    return fs0.model, fs0.dim


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty, non-comment (#) lines of a UTF-8 text file, stripped."""
    return [
        ln.strip()
        for ln in Path(path).read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]


def describe(fs: FeatureSet) -> dict:
    """Summary of a validated feature set (reads every row: checks NaN/Inf/zero rows and duplicate keys)."""
    arrays = fs.load()
    labels = arrays.labels
    return {
        "path": str(fs.path),
        "model": fs.model,
        "dim": fs.dim,
        "count": fs.count,
        "shards": len(fs.shards),
        "labelled": int((labels >= 0).sum()),
        "identities": int(np.unique(labels[labels >= 0]).size),
    }
