"""``mf2m demo``: the whole pipeline on the built-in demo config, offline.

Data, in order: ``--data``, ``$MF2M_DATA``, else a tiny face folder cut from the face photos that ship
inside installed packages (insightface's ``t1.jpg`` group photo and ``Tom_Hanks_54745.png``,
scikit-image's astronaut). Those are one photo per person, so each person's second image is a
horizontally mirrored copy: the demo then shows that every stage runs, not how well anything works.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from .config import DATA_ENV, load_config
from .run import run_pipeline

log = logging.getLogger(__name__)

BUNDLED_WARNING = (
    "mf2m demo: no --data and no ${env} given, so the demo uses the {n} faces that ship inside "
    "installed packages (insightface, scikit-image), each with a mirrored copy as its second image. "
    "That is far too little for meaningful numbers: it only shows that every stage works. "
    "Use --data lfw:/path/to/lfw (or any face folder ROOT/<identity>/<image>) for a real run."
)


def demo_config_path() -> Path:
    """The demo config shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def bundled_photos() -> list[Path]:
    """Face photos shipped inside installed packages (the ones present)."""
    found = [
        _package_file("insightface", "data", "images", "t1.jpg"),
        _package_file("insightface", "data", "images", "Tom_Hanks_54745.png"),
        _package_file("skimage", "data", "astronaut.png"),
    ]
    return [p for p in found if p is not None]


def build_bundled_faces(out: Path) -> int:
    """Cut every detected face (with margin) out of the bundled photos into ``out/person_NN/{a,b}.png``.

    Returns the number of people written; the second image of each is the first one mirrored.
    """
    from ..data.images import read_image, write_png
    from ..models.detection import create_detector

    detector = create_detector("dlib-hog")
    n = 0
    for photo in bundled_photos():
        image = read_image(photo)
        for det in sorted(detector.detect(image), key=lambda d: d.box[0]):
            x0, y0, x1, y1 = det.box
            w, h = x1 - x0, y1 - y0
            box = [
                int(max(0, x0 - 0.6 * w)),
                int(max(0, y0 - 0.7 * h)),
                int(min(image.shape[1], x1 + 0.6 * w)),
                int(min(image.shape[0], y1 + 0.5 * h)),
            ]
            crop = np.ascontiguousarray(image[box[1] : box[3], box[0] : box[2]])
            person = out / f"person_{n:02d}"
            write_png(person / "a.png", crop)
            write_png(person / "b_mirror.png", np.ascontiguousarray(crop[:, ::-1]))
            n += 1
    if n == 0:
        raise RuntimeError("no faces found in the photos bundled with the installed packages; use --data")
    return n


PAGE_WARNING = (
    "This demo ran on the {n} faces that ship inside installed packages (insightface, scikit-image), "
    "each person's second image a mirrored copy of the first: far too little data for any number on "
    "this page to mean anything. It only shows that every stage works. Run `mf2m demo --data "
    "lfw:/path/to/lfw` (or any face folder) for a real run."
)


def run_demo(
    data: str | None = None,
    out: str = "results/demo",
    device: str | None = None,
    config: str | None = None,
    progress: bool = True,
    model_factory=None,
    methods: list[str] | None = None,
) -> dict:
    """Run the demo config on ``data`` (or the bundled faces); returns the run record.

    ``methods`` limits the masking methods (e.g. ``["none", "solid", "dm"]`` for a quick check)."""
    data = data or os.environ.get(DATA_ENV)
    cfg = load_config(config or demo_config_path(), data=data, out=out, device=device, methods=methods)
    warning = None
    if not data:
        faces = Path(out) / "bundled_faces"
        n = build_bundled_faces(faces)
        print(BUNDLED_WARNING.replace("{env}", DATA_ENV).replace("{n}", str(n)))
        cfg.data.spec = f"folder:{faces}"
        # people: half as probes, two as templates, the rest as distractors
        cfg.data.identities = max(2, n // 2)
        cfg.data.templates = 2
        cfg.data.template_share = 0.5  # two of the ~4 other people: the DM rows need templates
        cfg.data.max_images = 2
        cfg.data.distractors = None
        cfg.evaluate.distractor_sizes = []
        warning = PAGE_WARNING.replace("{n}", str(n))
    record = run_pipeline(cfg, progress=progress, model_factory=model_factory, data_warning=warning)
    print(f"demo: {record['summary']}; open {cfg.out}/report/index.html")
    return record
