"""MegaFace and FaceScrub layouts for the dataset specs: the insightface testpack's probe and distractor
folders (list files, noise lists) and the original photos with optional face-box sidecars (JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .datasets import Dataset, _labelled, _walk_images, is_noise, read_list, read_noise_list


def megaface(spec: str, root: Path, options: dict[str, str], *, probes: bool) -> Dataset:
    sub, lst, noise_file = (
        ("facescrub_images", "facescrub_lst", "facescrub_noises.txt")
        if probes
        else ("megaface_images", "megaface_lst", "megaface_noises.txt")
    )
    image_root = root / sub
    if not image_root.is_dir():
        raise FileNotFoundError(
            f"dataset spec {spec!r}: {image_root} not found (expected the insightface "
            f"MegaFace testpack layout: {sub}/, {lst}, {noise_file})"
        )
    list_file = Path(options["list"]) if "list" in options else root / lst
    if "list" in options and not list_file.is_absolute():
        list_file = root / list_file
    if "list" in options and not list_file.exists():
        raise FileNotFoundError(f"dataset spec {spec!r}: list file {list_file} not found")
    rels = read_list(list_file) if list_file.exists() else _walk_images(image_root)
    depth = 2 if probes else 3
    entries = []
    for rel in rels:
        parts = rel.split("/")
        if parts[0] == sub:  # some lists carry the folder name
            rel, parts = "/".join(parts[1:]), parts[1:]
        if len(parts) != depth:
            raise ValueError(
                f"{list_file if list_file.exists() else image_root}: entry {rel!r} is not "
                f"{'<Name>/<image>' if probes else '<a>/<b>/<photo>'}"
            )
        entries.append((rel, parts[0] if probes else "", str(image_root / rel)))
    noises: set[str] = set()
    dropped = 0
    if (root / noise_file).exists():
        listed = read_noise_list(root / noise_file)
        noises = {key for key, _, _ in entries if is_noise(key, listed)}
    noises_mode = options.get("noises", "keep")
    if noises_mode not in ("keep", "drop"):
        raise ValueError(f"dataset spec {spec!r}: noises must be keep or drop")
    if noises_mode == "drop":
        before = len(entries)
        entries = [e for e in entries if e[0] not in noises]
        dropped = before - len(entries)
    items, names = _labelled(entries, needs_alignment=False)
    kind = "megaface-probes" if probes else "megaface-distractors"
    notes = {"list_file": str(list_file) if list_file.exists() else None}
    return Dataset(spec, kind, str(root), items, names, noise_keys=noises, dropped_noises=dropped, notes=notes)


def read_box_json(path: str | os.PathLike) -> dict[str, Any]:
    """Box (and 5 landmarks when present) from a MegaFace/FaceScrub JSON sidecar.

    Accepts ``{"bounding_box": {"x", "y", "width", "height"}}`` (MegaFace) or ``{"box": [x0, y0, x1, y1]}``,
    and optional ``"five"`` / ``"landmarks5"`` ``[[x, y] × 5]`` in ArcFace order.
    """
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    out: dict[str, Any] = {}
    bb = data.get("bounding_box")
    if isinstance(bb, dict) and {"x", "y", "width", "height"} <= set(bb):
        x, y, w, h = (float(bb[k]) for k in ("x", "y", "width", "height"))
        out["box"] = (x, y, x + w, y + h)
    elif isinstance(data.get("box"), (list, tuple)) and len(data["box"]) == 4:
        out["box"] = tuple(float(v) for v in data["box"])
    five = data.get("five", data.get("landmarks5"))
    if isinstance(five, (list, tuple)) and len(five) == 5:
        out["five"] = tuple((float(p[0]), float(p[1])) for p in five)
    return out


def originals(spec: str, root: Path, options: dict[str, str], *, facescrub: bool) -> Dataset:
    if not root.is_dir():
        raise ValueError(f"dataset spec {spec!r}: {root} is not a directory")
    entries, extra = [], {}
    for rel in _walk_images(root):
        identity = rel.split("/", 1)[0] if (facescrub and "/" in rel) else ""
        path = root / rel
        for sidecar in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
            if sidecar.exists():
                try:
                    extra[rel] = read_box_json(sidecar)
                except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
                    raise ValueError(f"{sidecar}: unreadable box JSON ({exc})") from None
                break
        entries.append((rel, identity, str(path)))
    items, names = _labelled(entries, needs_alignment=True, extra=extra)
    kind = "facescrub-originals" if facescrub else "megaface-originals"
    return Dataset(spec, kind, str(root), items, names, notes={"with_boxes": len(extra)})
