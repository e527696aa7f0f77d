"""Face preparation: detection + landmarks + ArcFace alignment run ONCE per image and cached.

Layout of a prepared folder (``out_dir``)::

    config.json            detector / landmarker / alignment settings (a resume must match them)
    crops/<key>.png        112×112 ArcFace-aligned RGB crops (lossless)
    chips/<key>.png        dlib 150×150 chips (only with ``chips=True`` and a 68-point landmarker)
    parts/part-<id>.npz    landmarks (original + crop coordinates), five points, matrices, boxes, scores
    parts/part-<id>.json   per-item status of that batch: ok, or failed with a reason
    prepared.json          manifest written at the end: counts, failures by reason
    failures.csv           key, path, identity, reason, detail

Each batch is written atomically (crops, then the ``.npz``, then the ``.json`` that marks it done), so
a killed run resumes by skipping every key already recorded; independent processes can prepare
disjoint shards of the same list into one folder (parts are named by a hash of their keys).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_json, write_text
from ..models.align import ALIGNED_SIZE, align_face, transform_points
from ..models.base import LandmarkError, ModelUnavailable
from .images import ImageError, read_image, write_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareItem:
    """One image to prepare: a unique ``key`` (also its crop's relative name), its file and identity."""

    key: str
    path: str
    identity: str = ""
    box: tuple[float, float, float, float] | None = None  # known face box (x0, y0, x1, y1): skips detection


@dataclass(frozen=True)
class PrepareConfig:
    """How faces are found and aligned (stored in ``config.json``; a resume must use the same)."""

    detector: str = "dlib-hog"  # dlib-hog | yunet | scrfd
    detector_model: str | None = None  # ONNX path for scrfd (or another YuNet file)
    landmarker: str = "dlib68"  # dlib68 | 2d106
    landmarker_model: str | None = None  # ONNX path for 2d106
    align_from: str = "landmarks"  # landmarks: five from the landmarker; detector: the detector's five
    select: str = "center"  # center | largest: which face when several are found
    size: int = ALIGNED_SIZE
    chips: bool = False  # also save dlib 150×150 chips (68-point landmarker only)

    def check(self) -> None:
        """Raise ``ValueError`` for inconsistent settings."""
        from ..models.detection import DETECTORS
        from ..models.landmarks import LANDMARKERS

        if self.detector not in DETECTORS:
            raise ValueError(f"unknown detector {self.detector!r}; choose one of {', '.join(DETECTORS)}")
        if self.landmarker not in LANDMARKERS:
            raise ValueError(f"unknown landmarker {self.landmarker!r}; choose one of {', '.join(LANDMARKERS)}")
        if self.align_from not in ("landmarks", "detector"):
            raise ValueError("align_from must be 'landmarks' or 'detector'")
        if self.align_from == "detector" and self.detector == "dlib-hog":
            raise ValueError("dlib HOG gives no 5 points: use --align-from landmarks or another detector")
        if self.chips and self.landmarker != "dlib68":
            raise ValueError("dlib chips need the dlib68 landmarker")


@dataclass
class PreparedFace:
    """The result of preparing one image (all points float32, ``(k, 2)``)."""

    crop: np.ndarray  # (size, size, 3) uint8 RGB, ArcFace-aligned
    matrix: np.ndarray  # (2, 3) image → crop
    points: np.ndarray  # all landmarks, original image coordinates
    five: np.ndarray  # the 5 alignment points, original coordinates
    jaw: np.ndarray
    nose: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    scheme: str
    chip: np.ndarray | None = None  # dlib 150×150 chip


class FacePreparer:
    """Detect → landmarks → align for one image; one detection feeds the crop, landmarks and dlib chip."""

    def __init__(self, config: PrepareConfig = PrepareConfig(), detector=None, landmarker=None):
        from ..models.detection import create_detector
        from ..models.landmarks import create_landmarker

        config.check()
        self.config = config
        self.detector = detector or create_detector(config.detector, config.detector_model)
        self.landmarker = landmarker or create_landmarker(
            config.landmarker, config.landmarker_model, detector=self.detector
        )

    def identity(self) -> dict[str, Any]:
        """Detector/landmarker identities for manifests."""
        return {"detector": self.detector.identity(), "landmarker": getattr(self.landmarker, "name", "?")}

    def prepare(self, image: np.ndarray, box: tuple[float, float, float, float] | None = None) -> PreparedFace:
        """Prepare one RGB uint8 image (``box``: a known face box, skips detection);
        raises ``LandmarkError`` (no face) or ``ValueError``."""
        from ..models.detection import Detection, select_face
        from ..models.landmarks import dlib_chip, to_rgb_uint8

        image = to_rgb_uint8(image)
        if box is not None:
            det = Detection(box=tuple(float(v) for v in box), score=float("nan"))
        else:
            found = self.detector.detect(image)
            if not found:
                raise LandmarkError(
                    f"no face found by {self.detector.name} in a {image.shape[1]}x{image.shape[0]} image"
                )
            det = select_face(found, image.shape, self.config.select)
        marks = self.landmarker.landmarks(image, box=det.box)
        five = marks.five if self.config.align_from == "landmarks" or det.five is None else det.five
        crop, matrix = align_face(image, five, self.config.size)
        chip = dlib_chip(image, marks.points) if self.config.chips else None
        return PreparedFace(
            crop=crop,
            matrix=matrix,
            points=marks.points,
            five=np.asarray(five, np.float32),
            jaw=marks.jaw,
            nose=marks.nose,
            box=det.box,
            score=float(det.score),
            scheme=marks.scheme,
            chip=chip,
        )


@dataclass
class PreparedSet:
    """Everything a prepared folder holds, in one order (``keys``); failures listed separately.

    Point arrays: ``points``/``points_crop`` ``(n, k, 2)``, ``five``/``five_crop`` ``(n, 5, 2)``,
    ``jaw``/``jaw_crop``, ``nose``/``nose_crop``; ``matrix`` ``(n, 2, 3)`` maps image → crop.
    """

    out_dir: Path
    config: dict[str, Any]
    keys: list[str]
    identities: list[str]
    paths: list[str]
    arrays: dict[str, np.ndarray]
    failures: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def crop_paths(self) -> list[Path]:
        """Paths of the aligned 112×112 crops, in ``keys`` order."""
        return [crop_path(self.out_dir, k) for k in self.keys]

    @property
    def chip_paths(self) -> list[Path] | None:
        """Paths of the dlib chips, or None when they were not saved."""
        if not self.config.get("chips"):
            return None
        return [chip_path(self.out_dir, k) for k in self.keys]

    def index(self, key: str) -> int:
        """Position of ``key`` in this set (``KeyError`` when it failed or was not prepared)."""
        if not hasattr(self, "_index"):
            self._index = {k: i for i, k in enumerate(self.keys)}
        return self._index[key]

    def load_crops(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Aligned crops ``(m, size, size, 3)`` uint8 for ``indices`` (all when None)."""
        idx = range(len(self)) if indices is None else indices
        paths = self.crop_paths
        size = int(self.config.get("size", ALIGNED_SIZE))
        out = np.empty((len(idx), size, size, 3), np.uint8)
        for j, i in enumerate(idx):
            out[j] = read_image(paths[i])
        return out

    def load_chips(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """dlib chips ``(m, 150, 150, 3)`` uint8 (requires ``chips=True`` at preparation)."""
        paths = self.chip_paths
        if paths is None:
            raise ValueError(f"{self.out_dir} was prepared without dlib chips (use chips=True / --chips)")
        idx = range(len(self)) if indices is None else indices
        return np.stack([read_image(paths[i]) for i in idx]) if len(idx) else np.empty((0, 150, 150, 3), np.uint8)

    def __iter__(self):
        """Records as dicts: prepared items ``{key, identity, path, crop}``, then failures
        ``{key, identity, path, reason, detail}``."""
        for key, ident, path, crop in zip(self.keys, self.identities, self.paths, self.crop_paths):
            yield {"key": key, "identity": ident, "path": path, "crop": str(crop)}
        yield from (dict(f) for f in self.failures)

    def failure_counts(self) -> dict[str, int]:
        """Number of failed items per reason."""
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f["reason"]] = counts.get(f["reason"], 0) + 1
        return dict(sorted(counts.items()))


def crop_path(out_dir: str | os.PathLike, key: str) -> Path:
    """Where the aligned crop of ``key`` lives."""
    return Path(out_dir) / "crops" / f"{key}.png"


def chip_path(out_dir: str | os.PathLike, key: str) -> Path:
    """Where the dlib chip of ``key`` lives."""
    return Path(out_dir) / "chips" / f"{key}.png"


def check_keys(items: Sequence[PrepareItem]) -> None:
    """Keys must be unique safe relative ``/``-separated names (``benchmark/safepath.py``): crops are written
    under them."""
    from ..safepath import check_key

    seen: set[str] = set()
    for it in items:
        check_key(it.key, "item key", "prepare")
        if it.key in seen:
            raise ValueError(f"duplicate item key {it.key!r}")
        seen.add(it.key)


def _batch_id(keys: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(keys).encode("utf-8")).hexdigest()[:16]


def _config_dict(config: PrepareConfig) -> dict[str, Any]:
    return asdict(config)


def _check_config(out_dir: Path, config: PrepareConfig) -> None:
    """Write ``config.json`` on first use; refuse to mix settings in one folder."""
    path = out_dir / "config.json"
    want = _config_dict(config)
    if path.is_file():
        have = json.loads(path.read_text())
        if have != want:
            diff = {k: (have.get(k), want.get(k)) for k in set(have) | set(want) if have.get(k) != want.get(k)}
            raise ValueError(
                f"{out_dir} was prepared with other settings {diff} (was, now): "
                "use another output folder or the same settings"
            )
    else:
        write_json(path, want)


def done_keys(out_dir: str | os.PathLike, include_failed: bool = True) -> set[str]:
    """Keys already recorded in ``out_dir``'s completed batches (ok, and failed unless ``include_failed`` is off)."""
    keys: set[str] = set()
    for part in sorted((Path(out_dir) / "parts").glob("part-*.json")):
        keys.update(r["key"] for r in json.loads(part.read_text())["records"] if include_failed or r["status"] == "ok")
    return keys


def prepare_faces(
    items: Sequence[PrepareItem],
    out_dir: str | os.PathLike,
    config: PrepareConfig = PrepareConfig(),
    *,
    batch_size: int = 64,
    workers: int = 1,
    detector=None,
    landmarker=None,
    progress: bool = True,
    max_failure_fraction: float = 1.0,
    retry_failed: bool = False,
) -> PreparedSet:
    """Prepare ``items`` into ``out_dir`` (resumable) and return the :class:`PreparedSet` of those items.

    Items already recorded are skipped; with ``retry_failed`` the ones recorded as failed are tried
    again (e.g. after the files were repaired) and a success replaces the failure. ``workers > 1`` prepares batches in that many processes
    (each loads its own models; ``detector``/``landmarker`` instances are only used in-process).
    Per-item failures (missing/corrupt file, no face, …) are recorded with a reason, never raised;
    if more than ``max_failure_fraction`` of the items fail, ``RuntimeError`` is raised at the end.
    """
    out_dir = Path(out_dir)
    items = list(items)
    check_keys(items)
    config.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, config)
    done = done_keys(out_dir, include_failed=not retry_failed)
    todo = [it for it in items if it.key not in done]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    if todo:
        log.info(
            "preparing %d of %d images into %s (%d already done)",
            len(todo),
            len(items),
            out_dir,
            len(items) - len(todo),
        )
        _run_batches(batches, out_dir, config, workers, detector, landmarker, progress)
    prepared = load_prepared(out_dir, keys=[it.key for it in items])
    _write_summary(out_dir, prepared, len(items))
    if items and len(prepared.failures) > max_failure_fraction * len(items):
        raise RuntimeError(
            f"{len(prepared.failures)} of {len(items)} images failed preparation "
            f"({prepared.failure_counts()}); see {out_dir / 'failures.csv'}"
        )
    return prepared


def _run_batches(batches, out_dir, config, workers, detector, landmarker, progress) -> None:
    from tqdm import tqdm

    bar = tqdm(total=sum(len(b) for b in batches), desc="prepare", unit="img", disable=not progress)
    if workers <= 1:
        preparer = FacePreparer(config, detector=detector, landmarker=landmarker)
        for batch in batches:
            _prepare_batch(batch, out_dir, preparer)
            bar.update(len(batch))
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(config,)) as pool:
            for n in pool.map(_worker_batch, batches, [out_dir] * len(batches)):
                bar.update(n)
    bar.close()


_WORKER_PREPARER: FacePreparer | None = None


def _worker_init(config: PrepareConfig) -> None:
    global _WORKER_PREPARER
    _WORKER_PREPARER = FacePreparer(config)


def _worker_batch(batch: list[PrepareItem], out_dir: Path) -> int:
    assert _WORKER_PREPARER is not None
    _prepare_batch(batch, out_dir, _WORKER_PREPARER)
    return len(batch)


def _prepare_batch(batch: list[PrepareItem], out_dir: Path, preparer: FacePreparer) -> None:
    """Prepare one batch and write it: crops (and chips), then the ``.npz``, then the ``.json``."""
    records: list[dict[str, Any]] = []
    ok: list[PreparedFace] = []
    for it in batch:
        rec: dict[str, Any] = {"key": it.key, "path": it.path, "identity": it.identity}
        try:
            face = preparer.prepare(read_image(it.path), box=it.box)
        except ImageError as exc:
            rec.update(status="failed", reason=exc.reason, detail=exc.detail)
        except LandmarkError as exc:
            rec.update(status="failed", reason="no-face", detail=str(exc))
        except ModelUnavailable:
            raise
        except (ValueError, RuntimeError, OSError) as exc:  # e.g. degenerate landmarks → no alignment
            rec.update(status="failed", reason="alignment-failed", detail=f"{type(exc).__name__}: {exc}")
        else:
            write_png(crop_path(out_dir, it.key), face.crop)
            if face.chip is not None:
                write_png(chip_path(out_dir, it.key), face.chip)
            rec.update(status="ok", row=len(ok), scheme=face.scheme)
            ok.append(face)
        records.append(rec)
    bid = _batch_id([it.key for it in batch])
    parts = out_dir / "parts"
    if ok:
        arrays = _stack(ok)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with atomic_path(parts / f"part-{bid}.npz") as tmp:
            tmp.write_bytes(buf.getvalue())
    write_json(parts / f"part-{bid}.json", {"records": records})


def _stack(faces: list[PreparedFace]) -> dict[str, np.ndarray]:
    """Arrays of one batch, in original and crop coordinates."""
    out: dict[str, np.ndarray] = {
        "matrix": np.stack([f.matrix for f in faces]).astype(np.float64),
        "box": np.asarray([f.box for f in faces], np.float32),
        "score": np.asarray([f.score for f in faces], np.float32),  # NaN when the box was given
    }
    for name in ("points", "five", "jaw", "nose"):
        orig = np.stack([np.asarray(getattr(f, name), np.float32) for f in faces])
        out[name] = orig
        out[f"{name}_crop"] = np.stack([transform_points(getattr(f, name), f.matrix) for f in faces])
    return out


def load_prepared(out_dir: str | os.PathLike, keys: Sequence[str] | None = None) -> PreparedSet:
    """Read a prepared folder. With ``keys``: those items in that order (unprepared ones become
    failures with reason ``not-prepared``); without: every item, in key order."""
    out_dir = Path(out_dir)
    cfg_path = out_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a prepared folder (no config.json): run `mf2m prepare` first")
    config = json.loads(cfg_path.read_text())
    ok: dict[str, tuple[dict, str, int]] = {}
    failed: dict[str, dict] = {}
    for part in sorted((out_dir / "parts").glob("part-*.json")):
        for rec in json.loads(part.read_text())["records"]:
            if rec["status"] == "ok":
                ok[rec["key"]] = (rec, part.with_suffix(".npz").name, rec["row"])
            else:
                failed[rec["key"]] = {k: rec.get(k, "") for k in ("key", "path", "identity", "reason", "detail")}
    wanted = sorted(set(ok) | set(failed)) if keys is None else list(keys)
    chosen = [k for k in wanted if k in ok]
    missing = {"path": "", "identity": "", "reason": "not-prepared", "detail": "not in this prepared folder"}
    failures = [failed.get(k, {"key": k, **missing}) for k in wanted if k not in ok]
    arrays: dict[str, np.ndarray] = {}
    cache: dict[str, Any] = {}
    rows: dict[str, list[np.ndarray]] = {}
    for k in chosen:
        _, part, row = ok[k]
        if part not in cache:
            with np.load(out_dir / "parts" / part) as z:
                cache[part] = {name: z[name] for name in z.files}
        for name, arr in cache[part].items():
            rows.setdefault(name, []).append(arr[row])
    for name, lst in rows.items():
        arrays[name] = np.stack(lst)
    return PreparedSet(
        out_dir=out_dir,
        config=config,
        keys=chosen,
        identities=[ok[k][0]["identity"] for k in chosen],
        paths=[ok[k][0]["path"] for k in chosen],
        arrays=arrays,
        failures=failures,
    )


def _write_summary(out_dir: Path, prepared: PreparedSet, n_items: int) -> None:
    """``prepared.json`` (manifest with counts) and ``failures.csv`` for the items of this call."""
    from ..manifest import build_manifest

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["key", "path", "identity", "reason", "detail"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(prepared.failures)
    write_text(out_dir / "failures.csv", buf.getvalue())
    write_json(
        out_dir / "prepared.json",
        build_manifest(
            "prepare",
            prepared.config,
            items=n_items,
            prepared=len(prepared),
            failed=len(prepared.failures),
            failures_by_reason=prepared.failure_counts(),
            failure_examples=[f"{f['key']}: {f['reason']}" for f in prepared.failures[:10]],
        ),
    )
