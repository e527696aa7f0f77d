"""The README's step-by-step workflow (``pool`` → ``attack`` → ``embed`` × 3 → ``search``) gives exactly the
numbers ``mf2m run`` gives, even when the attack drops every image of one identity (needs ../shared/data/lfw).

Faces: LFW photos aligned once by mf2m's own preparation and saved as 112×112 JPEG crops (so clean keys end
in ``.jpg`` and the attack's keys in ``.png``); identity ``AAA_Faceless`` (first in sort order, so every
label after it would shift) has two 120×120 grey images the attack finds no face in. The real SFace model
and mask detector; commands run through ``mf2m``'s own entry point.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main

N_PAIRED, N_SINGLE = 20, 12
FARS = ["1e-3", "1e-2"]


@pytest.fixture(scope="module")
def crops(lfw_dir, tmp_path_factory) -> Path:
    """A face folder of aligned crops: 20 people × 2, 12 single-image people, one faceless person × 2."""
    from PIL import Image

    from benchmark.data.lfw import list_people
    from benchmark.data.prepare import PrepareItem, prepare_faces

    tmp = tmp_path_factory.mktemp("readme")
    people = list_people(lfw_dir)
    paired = [n for n, nums in people.items() if len(nums) >= 2][: N_PAIRED + 6]
    single = [n for n, nums in people.items() if len(nums) == 1][: N_SINGLE + 4]
    items = [
        PrepareItem(f"{n}/{n}_{k:04d}", str(lfw_dir / "images" / n / f"{n}_{k:04d}.jpg"), n)
        for n in paired
        for k in people[n][:2]
    ] + [
        PrepareItem(f"{n}/{n}_{people[n][0]:04d}", str(lfw_dir / "images" / n / f"{n}_{people[n][0]:04d}.jpg"), n)
        for n in single
    ]
    prepared = prepare_faces(items, tmp / "prepared", progress=False)
    ok = dict(zip(prepared.keys, prepared.crop_paths))
    root = tmp / "crops"
    by_person: dict[str, list[str]] = {}
    for key in ok:
        by_person.setdefault(key.split("/")[0], []).append(key)
    keep = [n for n in paired if len(by_person.get(n, [])) == 2][:N_PAIRED] + [n for n in single if n in by_person][
        :N_SINGLE
    ]
    assert len(keep) == N_PAIRED + N_SINGLE, "too few LFW faces prepared"
    for name in keep:
        for key in by_person[name]:
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.open(ok[key]).convert("RGB").save(root / f"{key}.jpg", quality=95)
    (root / "AAA_Faceless").mkdir()
    for k in (1, 2):
        Image.fromarray(np.full((120, 120, 3), 90 + k, np.uint8)).save(
            root / "AAA_Faceless" / f"AAA_Faceless_{k:04d}.jpg"
        )
    return root


CONFIG = """
name: readme
cache: {cache}
device: cpu
data: {{identities: {ids}, max_images: 2, min_images: 2, templates: 0, distractors: null, seed: 0}}
attack: {{fr: sface, md: mf2m-maskdet, methods: [solid]}}
evaluate: {{models: [sface], fars: [1.0e-3, 1.0e-2]}}
report: {{far: 1.0e-3, examples: 0}}
"""

METRIC_FIELDS = ("rank1", "cmc", "auc", "tar_at_far")


def test_readme_workflow_equals_mf2m_run(crops, tmp_path):
    spec = f"folder:{crops}?aligned=1"
    ids = N_PAIRED + 1
    # 1. mf2m run
    (tmp_path / "cfg.yaml").write_text(CONFIG.format(cache=tmp_path / "cache", ids=ids))
    assert (
        main(["run", str(tmp_path / "cfg.yaml"), "--data", spec, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    )
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    entry = next(e for e in run["entries"] if e["method"] == "solid")
    want = json.loads((tmp_path / "run" / entry["search"] / "metrics.json").read_text())
    # 2. the README's commands, one by one
    w = tmp_path / "readme"
    assert (
        main(
            [
                "pool",
                "--data",
                spec,
                "--identities",
                str(ids),
                "--max-images",
                "2",
                "--seed",
                "0",
                "--out",
                str(w / "pool"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "attack",
                "--method",
                "solid",
                "--probes",
                str(w / "pool" / "probes.csv"),
                "--out",
                str(w / "attacked" / "solid"),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = (w / "attacked" / "solid" / "probes.csv").read_text().splitlines()
    dropped = [r for r in rows if r.startswith("AAA_Faceless/")]
    assert len(dropped) == 2 and all("skipped" in r for r in dropped)  # every image of one identity
    assert (
        main(
            [
                "embed",
                "--data",
                f"folder:{w}/attacked/solid/images?aligned=1",
                "--model",
                "sface",
                "--out",
                str(w / "feats" / "probes_solid"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "embed",
                "--data",
                f"csv:{w}/pool/probes.csv",
                "--model",
                "sface",
                "--out",
                str(w / "feats" / "mates"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "embed",
                "--data",
                f"csv:{w}/pool/rest.csv",
                "--model",
                "sface",
                "--out",
                str(w / "feats" / "distractors"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "search",
                "--probes",
                str(w / "feats" / "probes_solid"),
                "--mates",
                str(w / "feats" / "mates"),
                "--distractors",
                str(w / "feats" / "distractors"),
                "--out",
                str(w / "search" / "solid"),
                "--far",
                *FARS,
                "--no-progress",
            ]
        )
        == 0
    )
    got = json.loads((w / "search" / "solid" / "metrics.json").read_text())
    for name in METRIC_FIELDS:
        assert got[name] == want[name], name
    for name in ("probes", "distractors", "positive_pairs", "negative_pairs"):
        assert got["counts"][name] == want["counts"][name], name
    assert got["counts"]["probes"] == 2 * N_PAIRED and got["counts"]["distractors"] == N_SINGLE
    assert got["counts"]["positive_pairs"] == 2 * N_PAIRED  # each probe pairs with its other image only
    assert got["identity_join"]["by"] == "name" and got["identity_join"]["own_image_pairs_excluded"] == 2 * N_PAIRED
