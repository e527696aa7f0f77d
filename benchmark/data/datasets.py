"""Dataset specs → ordered lists of items ``(key, label, path, needs_alignment)``.

A *spec* is one string, ``KIND:PATH`` with optional ``?option=value&…`` options:

=============================  =====================================================================
``folder:ROOT``                face folder ``ROOT/<identity>/<image>``; label = identity (sorted index)
``csv:FILE``                   CSV with ``identity,path[,key[,aligned]]`` rows (a header row naming
                               the columns is optional; relative paths are relative to the CSV's
                               folder; key defaults to the path as written, or to
                               ``<identity>/<file name>`` for absolute paths (clashes get ``~2``, ``~3``…,
                               reported in the notes and the log); aligned 1/0 per row
                               overrides the option; empty identity → label -1; a ``source`` column
                               names the clean image an attacked probe was made from)
``megaface-probes:ROOT``       insightface MegaFace testpack probes: ``ROOT/facescrub_images/<Name>/…``
                               (listed by ``ROOT/facescrub_lst`` when present), aligned 112×112
``megaface-distractors:ROOT``  testpack distractors ``ROOT/megaface_images/<a>/<b>/<photo>.jpg``
                               (listed by ``ROOT/megaface_lst`` when present), label -1, aligned
``megaface-originals:ROOT``    MegaFace original photos with ``<photo>.json`` boxes; label -1; aligned
                               by the preparation stage
``facescrub-originals:ROOT``   FaceScrub original photos ``ROOT/<Name>/<photo>`` (+ optional JSON boxes)
``lfw:ROOT``                   LFW ``ROOT/images/<Name>/<Name>_NNNN.jpg`` (photos: aligned on the fly)
``prepared:DIR``               crops cached by ``mf2m prepare`` (already aligned)
=============================  =====================================================================

A bare path is read as ``folder:`` for a directory and ``csv:`` for a ``.csv`` file. The ``images/`` folder
of an ``mf2m attack`` output is a face folder whose identity names and source keys (the key of the clean
image each probe was made from) come from the attack's ``probes.csv``.

Options: ``aligned=1`` (folder/csv: the images already are ArcFace-aligned 112×112 crops; default 0,
i.e. photos that need detection + alignment), ``noises=drop`` (megaface kinds: leave out the keys of
``facescrub_noises.txt`` / ``megaface_noises.txt``; default ``keep``, since ``mf2m search --noise-list``
excludes them later), ``list=FILE`` (megaface kinds: another list file, e.g. ``facescrub_lst_all``),
``limit=N`` (first N items after sorting; for quick trials).

Keys are relative paths with ``/`` separators (the MegaFace list convention: ``Name/Name_id.png`` for
probes, ``a/b/photo.jpg`` for distractors), so noise lists and feature sets line up. Items come sorted by
key, so every run (and every rank of a multi-GPU run) sees the same order.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
KINDS = (
    "folder",
    "csv",
    "megaface-probes",
    "megaface-distractors",
    "megaface-originals",
    "facescrub-originals",
    "lfw",
    "prepared",
)
_OPTIONS = {"aligned", "noises", "list", "limit"}


@dataclass(frozen=True)
class Item:
    """One image of a dataset."""

    key: str  # unique relative name, "/"-separated
    label: int  # identity index, -1 when unknown
    path: str  # file to decode
    needs_alignment: bool  # True: a photo that must be detected + aligned first
    identity: str = ""  # identity name ("" when unknown)
    source: str = ""  # key of the clean image an attacked probe was made from ("" when none)
    box: tuple[float, float, float, float] | None = None  # face box (x0, y0, x1, y1) when given
    five: tuple[tuple[float, float], ...] | None = None  # 5 landmarks when given


@dataclass
class Dataset:
    """The items of a spec, with their identity names (``identities[label]``) and listing notes."""

    spec: str
    kind: str
    root: str
    items: list[Item]
    identities: list[str]
    noise_keys: set[str] = field(default_factory=set)  # keys named by a noise list (kept or dropped)
    dropped_noises: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)  # items lost before decoding (key, reason)

    @property
    def needs_alignment(self) -> bool:
        """True when at least one item is a photo needing detection + alignment."""
        return any(item.needs_alignment for item in self.items)

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the dataset."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "root": self.root,
            "items": len(self.items),
            "identities": len(self.identities),
            "noise_keys": len(self.noise_keys),
            "dropped_noises": self.dropped_noises,
            **self.notes,
        }


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """Split ``KIND:PATH?opt=v&…`` into ``(kind, path, options)``; a bare path picks folder/csv."""
    if not spec:
        raise ValueError("empty dataset spec")
    body, options = spec, {}
    if "?" in spec:
        body, query = spec.rsplit("?", 1)
        for part in filter(None, query.split("&")):
            name, _, value = part.partition("=")
            if name not in _OPTIONS:
                raise ValueError(f"dataset spec {spec!r}: unknown option {name!r} (known: {sorted(_OPTIONS)})")
            options[name] = value
    kind, sep, path = body.partition(":")
    if not sep or kind not in KINDS:
        # a bare path (also Windows drive letters such as C:\…)
        path = body
        kind = "csv" if path.lower().endswith(".csv") else _bare_folder_kind(Path(path).expanduser(), spec)
    if not path:
        raise ValueError(f"dataset spec {spec!r} has no path (expected KIND:PATH, kinds: {', '.join(KINDS)})")
    return kind, Path(path).expanduser(), options


_LFW_FILES = ("people.txt", "pairs.txt", "peopleDevTrain.txt", "pairsDevTrain.txt", "lfw-names.txt")


def _bare_folder_kind(root: Path, spec: str) -> str:
    """``lfw`` for a folder in LFW's layout (``images/<Name>/…`` and/or LFW's list files), else ``folder``.

    A MegaFace testpack root is refused: it holds both probes and distractors, so the role must be named.
    """
    if not root.is_dir():
        return "folder"
    if (root / "facescrub_images").is_dir() or (root / "megaface_images").is_dir():
        raise ValueError(
            f"dataset spec {spec!r} is a MegaFace testpack; name the role: "
            f"megaface-probes:{root} or megaface-distractors:{root}"
        )
    subdirs = [d.name for d in root.iterdir() if d.is_dir()]
    if any((root / f).is_file() for f in _LFW_FILES) or subdirs == ["images"]:
        return "lfw"
    return "folder"


def load_dataset(spec: str) -> Dataset:
    """Resolve a spec into a :class:`Dataset` (files are listed, not decoded)."""
    kind, path, options = parse_spec(spec)
    if not path.exists():
        raise FileNotFoundError(f"dataset spec {spec!r}: {path} does not exist")
    loader = _LOADERS[kind]
    dataset = loader(spec, path, options)
    if "limit" in options:
        dataset.items = dataset.items[: _int_option(options, "limit", spec)]
    _check_unique(dataset)
    return dataset


# ---------------------------------------------------------------------------------------------------
# helpers


def _int_option(options: dict[str, str], name: str, spec: str) -> int:
    try:
        value = int(options[name])
    except ValueError:
        raise ValueError(f"dataset spec {spec!r}: option {name} must be an integer") from None
    if value < 0:
        raise ValueError(f"dataset spec {spec!r}: option {name} must be ≥ 0")
    return value


def _flag(options: dict[str, str], name: str, spec: str) -> bool:
    value = options.get(name, "0").lower()
    if value in ("1", "true", "yes", ""):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"dataset spec {spec!r}: option {name} must be 0 or 1")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(root: Path) -> list[str]:
    """Relative ``/``-separated paths of every image under ``root`` (hidden files skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            if _is_image(name):
                out.append(name if rel == "." else f"{rel}/{name}")
    return sorted(out)


def _labelled(
    entries: Iterable[tuple[str, str, str]], needs_alignment: bool, extra: dict[str, dict[str, Any]] | None = None
) -> tuple[list[Item], list[str]]:
    """Items from ``(key, identity, path)``; labels index the sorted identity names ("" → -1).

    ``extra[key]`` holds per-item field overrides (box, five, needs_alignment).
    """
    entries = sorted(entries)
    names = sorted({identity for _, identity, _ in entries if identity})
    index = {name: i for i, name in enumerate(names)}
    extra = extra or {}
    items = [
        Item(
            key=key,
            label=index.get(identity, -1),
            path=path,
            identity=identity,
            **{"needs_alignment": needs_alignment, **extra.get(key, {})},
        )
        for key, identity, path in entries
    ]
    return items, names


def _check_unique(dataset: Dataset) -> None:
    """Keys are unique, safe relative paths (they name files under the stages' output folders)."""
    from ..safepath import check_key

    seen: set[str] = set()
    for item in dataset.items:
        check_key(item.key, "item key", f"dataset {dataset.spec!r}")
        if item.key in seen:
            raise ValueError(f"dataset {dataset.spec!r}: duplicate key {item.key!r}")
        seen.add(item.key)


def read_list(path: str | os.PathLike) -> list[str]:
    """Non-empty, non-comment lines of a list file (``facescrub_lst``, ``megaface_lst``…), ``/``-separated."""
    with open(path, encoding="utf-8") as fh:
        lines = (line.strip().replace("\\", "/") for line in fh)
        return [line[2:] if line.startswith("./") else line for line in lines if line and not line.startswith("#")]


def read_noise_list(path: str | os.PathLike) -> set[str]:
    """Entries of an insightface noise list (``#`` lines skipped; ``id<TAB>name`` → name).

    ``facescrub_noises.txt`` names image files (``Name_id.png``); ``megaface_noises.txt`` names
    ``a/b/photo.jpg`` paths. :func:`is_noise` matches either against a key.
    """
    out = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t")
            out.add((parts[1] if len(parts) > 1 else parts[0]).strip().replace("\\", "/"))
    return out


def is_noise(key: str, noises: set[str]) -> bool:
    """True when ``key`` (a relative path) or its file name is in a noise list."""
    return key in noises or key.rsplit("/", 1)[-1] in noises


# ---------------------------------------------------------------------------------------------------
# loaders


def attack_rows(images: Path) -> dict[str, dict[str, str]] | None:
    """The ``probes.csv`` rows of an ``mf2m attack`` output whose ``images/`` folder is ``images`` (by image
    path relative to it), or None when ``images`` is not such a folder."""
    out = images.parent
    table, manifest = out / "probes.csv", out / "manifest.json"
    if images.name != "images" or not table.is_file() or not manifest.is_file():
        return None
    try:
        if json.loads(manifest.read_text(encoding="utf-8")).get("stage") != "attack":
            return None
    except (OSError, ValueError):
        return None
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {f"{r['key']}.png": r for r in rows if r.get("status") == "ok" and r.get("key")}


def _folder(spec: str, root: Path, options: dict[str, str]) -> Dataset:
    if not root.is_dir():
        raise ValueError(f"dataset spec {spec!r}: {root} is not a directory (folder:ROOT/<identity>/<image>)")
    aligned = _flag(options, "aligned", spec)
    attacked = attack_rows(root)  # an attack's images/: identity names and source keys from its probes.csv
    entries, extra = [], {}
    for rel in _walk_images(root):
        identity = rel.split("/", 1)[0] if "/" in rel else ""
        row = (attacked or {}).get(rel)
        if row is not None:
            identity = row.get("identity") or identity
            if row.get("source"):
                extra[rel] = {"source": row["source"]}
        entries.append((rel, identity, str(root / rel)))
    items, names = _labelled(entries, needs_alignment=not aligned, extra=extra)
    notes = {"attack_output": str(root.parent)} if attacked is not None else {}
    return Dataset(spec, "folder", str(root), items, names, notes=notes)


def _csv(spec: str, file: Path, options: dict[str, str]) -> Dataset:
    aligned_default = _flag(options, "aligned", spec)
    base = file.parent
    entries, extras, columns = [], [], ["identity", "path", "key", "aligned"]
    derived: list[tuple[int, int]] = []  # (entry, CSV line) of rows whose key was derived from the path
    with open(file, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            row = [c.strip() for c in row]
            if not any(row) or row[0].startswith("#"):
                continue
            if lineno == 1 and "path" in [c.lower() for c in row]:
                columns = [c.lower() for c in row]  # a header names the columns
                if "identity" not in columns:
                    raise ValueError(f"{file}: header must name an 'identity' and a 'path' column")
                continue
            rec = dict(zip(columns, row))
            if not rec.get("path"):
                raise ValueError(f"{file}:{lineno}: expected 'identity,path[,key[,aligned]]', got {row!r}")
            rel = rec["path"]
            path = Path(rel) if os.path.isabs(rel) else base / rel
            key = rec.get("key") or _key_of_path(rel, rec.get("identity", ""))
            if not rec.get("key") and key != rel.replace("\\", "/"):
                derived.append((len(entries), lineno))
            entries.append((key, rec.get("identity", ""), str(path)))
            extra: dict[str, Any] = {}
            if rec.get("aligned"):
                extra["needs_alignment"] = rec["aligned"] not in ("1", "true", "yes")
            if rec.get("source"):
                extra["source"] = rec["source"]
            extras.append(extra)
    notes = _disambiguate(file, entries, derived)
    by_key = {key: e for (key, _, _), e in zip(entries, extras) if e}
    items, names = _labelled(entries, needs_alignment=not aligned_default, extra=by_key)
    return Dataset(spec, "csv", str(file), items, names, notes=notes)


def _key_of_path(written: str, identity: str) -> str:
    """The key of a CSV row without a key column: the path as written when it is a plain relative path,
    else ``<identity>/<file name>`` (absolute paths, ``..``, ``~``, Windows drives: nothing to keep)."""
    from ..safepath import key_problem

    rel = written.replace("\\", "/")
    if key_problem(rel) is None and not rel.startswith("~"):
        return rel
    name = rel.rstrip("/").rsplit("/", 1)[-1]
    return f"{identity}/{name}" if identity else name


def _disambiguate(file: Path, entries: list, derived: list[tuple[int, int]]) -> dict[str, Any]:
    """Give derived keys (``derived``: entry index, CSV line) that clash with an earlier key ``~2``, ``~3``…
    before the extension, in place; every renaming is in the returned notes and logged, naming the CSV line."""
    rows = dict(derived)
    taken = {key for i, (key, _, _) in enumerate(entries) if i not in rows}
    renamed = []
    for i, lineno in derived:
        key, identity, path = entries[i]
        if key in taken:
            stem, dot, ext = key.rpartition(".")
            n, new = 2, key
            while new in taken:
                new = f"{stem}~{n}.{ext}" if dot and "/" not in ext else f"{key}~{n}"
                n += 1
            renamed.append({"line": lineno, "derived": key, "key": new, "path": path})
            entries[i] = (new, identity, path)
            key = new
        taken.add(key)
    notes: dict[str, Any] = {"derived_keys": len(derived)} if derived else {}
    if renamed:
        notes["key_clashes"] = renamed
        log.warning(
            "%s: %d row(s) without a key derived an <identity>/<file name> key already taken and were renamed: %s",
            file,
            len(renamed),
            "; ".join(f"line {r['line']}: {r['derived']!r} → {r['key']!r}" for r in renamed[:5])
            + (" …" if len(renamed) > 5 else ""),
        )
    return notes


def _lfw(spec: str, root: Path, options: dict[str, str]) -> Dataset:
    from .lfw import images_root, list_people

    images = images_root(root)
    entries = []
    for name, numbers in list_people(root).items():
        for number in numbers:
            key = f"{name}/{name}_{number:04d}"  # the LFW parser's key (pairs.txt lookups)
            entries.append((key, name, str(images / f"{key}.jpg")))
    items, names = _labelled(entries, needs_alignment=not _flag(options, "aligned", spec))
    return Dataset(spec, "lfw", str(root), items, names)


def _prepared(spec: str, root: Path, options: dict[str, str]) -> Dataset:
    from .prepare import load_prepared

    prepared = load_prepared(root)
    entries = [
        (key, identity or "", str(path))
        for key, identity, path in zip(prepared.keys, prepared.identities, prepared.crop_paths)
    ]
    items, names = _labelled(entries, needs_alignment=False)
    failures = [{"key": f["key"], "path": f.get("path", ""), "reason": f["reason"]} for f in prepared.failures]
    return Dataset(
        spec, "prepared", str(root), items, names, notes={"prepare_failures": len(failures)}, failures=failures
    )


def _megaface_loaders():
    """The MegaFace/FaceScrub loaders (``megaface.py``, which builds on this module)."""
    from . import megaface

    return megaface


_LOADERS = {
    "folder": _folder,
    "csv": _csv,
    "megaface-probes": lambda s, p, o: _megaface_loaders().megaface(s, p, o, probes=True),
    "megaface-distractors": lambda s, p, o: _megaface_loaders().megaface(s, p, o, probes=False),
    "megaface-originals": lambda s, p, o: _megaface_loaders().originals(s, p, o, facescrub=False),
    "facescrub-originals": lambda s, p, o: _megaface_loaders().originals(s, p, o, facescrub=True),
    "lfw": _lfw,
    "prepared": _prepared,
}
