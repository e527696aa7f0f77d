"""``mf2m attack`` pipeline tests: outputs, invariants on the written PNGs, resume, determinism, CLI errors.

Probes/templates are crops of insightface's shipped sample photo (no ../shared needed); models are the
small seeded random-weight networks of tests/attack_models.py.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from attack_models import TinyMaskDetector, TinyRecognizer

from attacks.pipeline import AttackJob, run_attack
from attacks.templates import list_faces, load_aligned
from benchmark.data.images import read_image, write_png


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """probes/<id>/<img> (Tom Hanks aligned + two un-aligned crops, one broken file) and templates/<img>."""
    from benchmark.models.landmarks import DlibLandmarker

    root = tmp_path_factory.mktemp("faces")
    images = Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0]) / "data" / "images"
    group = read_image(images / "t1.jpg")
    boxes = [b for b, s in DlibLandmarker().detect(group) if s > 0.5]
    crops = []
    for x0, y0, x1, y1 in boxes:
        w = x1 - x0
        crops.append(group[max(0, y0 - w) : y1 + w, max(0, x0 - w) : x1 + w])
    (root / "probes" / "hanks").mkdir(parents=True)
    write_png(root / "probes" / "hanks" / "hanks_1.png", read_image(images / "Tom_Hanks_54745.png"))
    for i in (0, 1):
        write_png(root / "probes" / f"person{i}" / f"person{i}_1.png", crops[i])
    (root / "probes" / "person0" / "broken.jpg").write_bytes(b"not an image")
    for i in range(2, len(crops)):
        write_png(root / "templates" / f"tpl{i}.png", crops[i])
    write_png(root / "templates" / "person0.png", crops[0])  # same identity as a probe: must never be chosen
    return root


def _job(folders, out, method="advnoise-dm", **kw):
    params = kw.pop(
        "params",
        {"steps": 3, "step": 0.004}
        if method == "advnoise-dm"
        else {"noise_steps": 2, "kernel_steps": 2}
        if method == "mf2m"
        else {},
    )
    return AttackJob(
        method=method,
        probes=str(folders / "probes"),
        templates=str(folders / "templates"),
        out=str(out),
        batch_size=kw.pop("batch_size", 2),
        params=params,
        **kw,
    )


def _rows(out):
    with open(out / "probes.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_outputs_and_invariants(folders, tmp_path):
    """Written images equal the clean aligned input outside the region and stay within ε of DM inside it."""
    from attacks.masking import delaunay_mask
    from attacks.templates import TemplateBank
    from benchmark.models.landmarks import DlibLandmarker

    out = tmp_path / "adv"
    summary = run_attack(_job(folders, out), TinyRecognizer(), TinyMaskDetector(), progress=False)
    assert summary["counts"] == {"probes": 4, "processed_now": 4, "ok": 3, "skipped": 1}
    rows = {r["key"]: r for r in _rows(out)}
    assert rows["person0/broken"]["status"].startswith("skipped:image:")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "attack" and manifest["summary"]["skipped_reasons"]
    lm = DlibLandmarker()
    bank = TemplateBank.load(out / "template_bank.npz", np.load(out / "template_bank.npz")["signature"].item())
    for item in list_faces(folders / "probes"):
        row = rows[item.key]
        if row["status"] != "ok":
            continue
        assert row["template"] != "person0/person0" or item.identity != "person0"
        assert row["template"].split("/")[0] != item.identity
        clean, pts = load_aligned(item.path, lm)
        img = read_image(out / "images" / f"{item.key}.png")
        region = read_image(out / "regions" / f"{item.key}.png")[:, :, 0] > 0
        assert np.array_equal(img[~region], clean[~region])
        t = bank.keys.index(row["template"])
        dm, dm_region = delaunay_mask(clean, pts, bank.faces[t], bank.points[t])
        assert np.array_equal(dm_region > 0, region)
        assert np.abs(img.astype(int) - dm.astype(int)).max() <= round(0.04 * 255) + 1
        assert float(row["psnr"]) > 25 and 0 < float(row["ssim"]) < 1 and 0 <= float(row["p_masked"]) <= 1


def test_resume_after_kill_gives_the_same_bytes(folders, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    fr, md = TinyRecognizer(), TinyMaskDetector()
    run_attack(_job(folders, full), fr, md, progress=False)
    run_attack(_job(folders, resumed, limit=2), fr, md, progress=False)  # "killed" after 2 probes
    with open(resumed / "rows.jsonl", "a") as fh:
        fh.write('{"key": "torn')  # torn last line of a kill
    summary = run_attack(_job(folders, resumed), fr, md, progress=False)
    assert summary["counts"]["processed_now"] == 2
    for png in sorted((full / "images").rglob("*.png")):
        assert png.read_bytes() == (resumed / png.relative_to(full)).read_bytes()
    assert [r["key"] for r in _rows(full)] == [r["key"] for r in _rows(resumed)]


def test_other_settings_refuse_to_resume(folders, tmp_path):
    out = tmp_path / "x"
    run_attack(_job(folders, out, method="solid"), TinyRecognizer(), TinyMaskDetector(), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        run_attack(
            _job(folders, out, method="solid", mask_colour="white"),
            TinyRecognizer(),
            TinyMaskDetector(),
            progress=False,
        )


@pytest.mark.parametrize("method", ["solid", "dm", "mf2m", "ti-mi-fgsm"])
def test_methods_run_and_are_deterministic(folders, tmp_path, method):
    params = {"ti-mi-fgsm": {"steps": 2}}.get(method)
    kw = {"params": params} if params else {}
    a = run_attack(
        _job(folders, tmp_path / "a", method=method, seed=3, **kw), TinyRecognizer(), TinyMaskDetector(), progress=False
    )
    run_attack(
        _job(folders, tmp_path / "b", method=method, seed=3, **kw), TinyRecognizer(), TinyMaskDetector(), progress=False
    )
    assert a["counts"]["ok"] == 3
    for png in sorted((tmp_path / "a" / "images").rglob("*.png")):
        assert png.read_bytes() == (tmp_path / "b" / png.relative_to(tmp_path / "a")).read_bytes()


def test_csv_probe_list(folders, tmp_path):
    listing = tmp_path / "probes.csv"
    listing.write_text(f"identity,path\nhanks,{folders / 'probes' / 'hanks' / 'hanks_1.png'}\n")
    items = list_faces(listing)
    assert [(i.key, i.identity) for i in items] == [("hanks/hanks_1", "hanks")]
    job = AttackJob(method="solid", probes=str(listing), out=str(tmp_path / "o"))
    assert run_attack(job, TinyRecognizer(), TinyMaskDetector(), progress=False)["counts"]["ok"] == 1


def test_cli_errors(folders, tmp_path, capsys):
    from benchmark.cli import main

    assert (
        main(
            [
                "attack",
                "--method",
                "fgsm",
                "--probes",
                str(folders / "probes"),
                "--out",
                str(tmp_path / "o"),
                "--kernel-size",
                "3",
            ]
        )
        == 1
    )
    assert "does not take: --kernel-size" in capsys.readouterr().err
    assert main(["attack", "--method", "dm", "--probes", str(folders / "probes"), "--out", str(tmp_path / "o")]) == 1
    assert "needs --templates" in capsys.readouterr().err
    assert (
        main(
            [
                "attack",
                "--method",
                "dm",
                "--probes",
                str(tmp_path / "nope"),
                "--templates",
                "x",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    help_text = capsys.readouterr().out
    for method in ("advnoise-dm", "mf2m", "m-di2-fgsm", "--kernel-steps", "--mask-colour"):
        assert method in help_text


def test_template_bank_rejects_misaligned_templates(folders, tmp_path):
    """A 112×112 template taken as aligned but whose face is shifted and tilted, and a crop whose landmarks
    were moved off the face, are rejected with the reason; good templates stay; max_residual=None keeps all."""
    import cv2

    from attacks.templates import TemplateBank, alignment_errors
    from benchmark.models.landmarks import DlibLandmarker

    lm = DlibLandmarker()
    root = tmp_path / "templates"
    root.mkdir()
    hanks = read_image(folders / "probes" / "hanks" / "hanks_1.png")
    shifted = cv2.warpAffine(
        hanks,
        cv2.getRotationMatrix2D((56, 56), 20, 1.0) + [[0, 0, 14], [0, 0, 10]],
        (112, 112),
        borderMode=cv2.BORDER_REFLECT,
    )
    write_png(root / "shifted.png", shifted)
    for png in sorted((folders / "templates").glob("tpl*.png")):
        write_png(root / png.name, read_image(png))
    pts = lm.landmarks_aligned(hanks).points
    residual, offset = alignment_errors(pts)
    assert residual < 10 and offset < 10  # the well aligned face passes
    moved = pts.copy()
    moved[30] += [15.0, 0.0]  # nose tip found beside the nose
    assert alignment_errors(moved)[0] > 10
    # a similarity transform of the points changes the offset, never the fitted residual
    rot = cv2.getRotationMatrix2D((56, 56), 15, 0.9)
    turned = pts @ rot[:, :2].T + rot[:, 2]
    assert abs(alignment_errors(turned)[0] - residual) < 1e-3 * max(residual, 1) + 1e-3
    assert alignment_errors(turned)[1] > max(offset, 10)

    fr = TinyRecognizer().torch_module()
    bank = TemplateBank.build(root, fr, "tiny", tmp_path / "bank.npz", lm)
    assert "shifted/shifted" not in bank.keys and len(bank.keys) >= 2
    assert bank.skipped["shifted/shifted"].startswith("misaligned:five-point offset > 10 px:")
    assert TemplateBank.load(tmp_path / "bank.npz", "wrong") is None
    everything = TemplateBank.build(root, fr, "tiny", tmp_path / "bank_all.npz", lm, max_residual=None)
    assert "shifted/shifted" in everything.keys and not everything.skipped
    with pytest.raises(ValueError, match="max_residual"):
        TemplateBank.build(root, fr, "tiny", None, lm, max_residual=0)


def test_template_filter_rejects_lfw_misaligned_face(shared_dir, tmp_path):
    """Needs ../shared: LFW's Warren_Granados_0001 (landmarks off the face, the smeared red faced mask of
    an earlier run) is rejected; Aaron_Eckhart_0001 is kept. The skip is counted in the attack manifest."""
    from benchmark.models.landmarks import DlibLandmarker

    lfw = shared_dir / "data" / "lfw" / "images"
    if not (lfw / "Warren_Granados").is_dir():
        pytest.skip("LFW images not present")
    from attacks.templates import TemplateBank

    root = tmp_path / "templates"
    for name in ("Warren_Granados/Warren_Granados_0001.jpg", "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"):
        (root / name.split("/")[0]).mkdir(parents=True)
        (root / name).symlink_to(lfw / name)
    bank = TemplateBank.build(root, TinyRecognizer().torch_module(), "tiny", None, DlibLandmarker())
    assert bank.keys == ["Aaron_Eckhart/Aaron_Eckhart_0001"]
    assert bank.skipped["Warren_Granados/Warren_Granados_0001"].startswith("misaligned:five-point residual")
    probes = tmp_path / "probes" / "hanks"
    probes.mkdir(parents=True)
    insightface_images = (
        Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0]) / "data" / "images"
    )
    write_png(probes / "hanks_1.png", read_image(insightface_images / "Tom_Hanks_54745.png"))
    out = tmp_path / "dm"
    summary = run_attack(
        AttackJob(method="dm", probes=str(tmp_path / "probes"), templates=str(root), out=str(out)),
        TinyRecognizer(),
        TinyMaskDetector(),
        progress=False,
    )
    assert summary["templates"]["count"] == 1 and summary["templates"]["skipped"] == 1
    assert list(summary["templates"]["skipped_reasons"]) == ["misaligned:five-point residual > 10 px"]
    assert json.loads((out / "manifest.json").read_text())["summary"]["templates"]["skipped"] == 1
