"""Face preparation: crops, landmarks, per-item failures, resume (needs ../shared/data/lfw)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data.prepare import PrepareConfig, PrepareItem, crop_path, load_prepared, prepare_faces
from benchmark.models.align import arcface_template, transform_points

NAMES = [
    "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    "Abdullah_Gul/Abdullah_Gul_0001.jpg",
    "Abdullah_Gul/Abdullah_Gul_0002.jpg",
    "Adrien_Brody/Adrien_Brody_0001.jpg",
]


@pytest.fixture(scope="module")
def items(lfw_dir, tmp_path_factory):
    """Four real LFW photos plus every kind of bad input."""
    bad = tmp_path_factory.mktemp("bad")
    src = lfw_dir / "images" / NAMES[0]
    photo = np.asarray(Image.open(src).convert("RGB"))
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "garbage.jpg").write_bytes(b"this is not an image" * 20)
    (bad / "truncated.jpg").write_bytes(src.read_bytes()[:3000])
    Image.fromarray(photo.mean(2).astype(np.uint8)).save(bad / "grey.png")
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])).save(bad / "rgba.png")
    Image.fromarray(photo[::12, ::12]).save(bad / "tiny.png")  # 21x21: no detectable face
    Image.fromarray(np.full((5, 5, 3), 128, np.uint8)).save(bad / "dot.png")  # below the decoder's 8 px
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(bad / "blank.png")
    good = [PrepareItem(n, str(lfw_dir / "images" / n), n.split("/")[0]) for n in NAMES]
    odd = [
        PrepareItem(f"bad/{n}", str(bad / n), "bad")
        for n in [
            "zero.jpg",
            "garbage.jpg",
            "truncated.jpg",
            "grey.png",
            "rgba.png",
            "tiny.png",
            "dot.png",
            "blank.png",
            "absent.jpg",
        ]
    ]
    return good + odd


EXPECTED_FAILURES = {
    "bad/zero.jpg": "empty-file",
    "bad/garbage.jpg": "not-an-image",
    "bad/truncated.jpg": "truncated",
    "bad/tiny.png": "no-face",
    "bad/dot.png": "too-small",
    "bad/blank.png": "no-face",
    "bad/absent.jpg": "missing",
}


@pytest.fixture(scope="module")
def prepared(items, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    return prepare_faces(items, out, PrepareConfig(chips=True), batch_size=4, progress=False)


def test_bad_input_is_counted_never_fatal(prepared, items):
    reasons = {f["key"]: f["reason"] for f in prepared.failures}
    assert reasons == EXPECTED_FAILURES
    assert len(prepared) + len(prepared.failures) == len(items)
    assert set(prepared.keys) == set(NAMES) | {"bad/grey.png", "bad/rgba.png"}  # grey and RGBA are fine
    rows = (prepared.out_dir / "failures.csv").read_text().splitlines()
    assert rows[0] == "key,path,identity,reason,detail" and len(rows) == 1 + len(EXPECTED_FAILURES)
    manifest = json.loads((prepared.out_dir / "prepared.json").read_text())
    assert manifest["failed"] == len(EXPECTED_FAILURES) and manifest["failures_by_reason"]["no-face"] == 2


def test_crops_and_landmarks_are_consistent(prepared):
    crops = prepared.load_crops()
    assert crops.shape == (len(prepared), 112, 112, 3) and crops.dtype == np.uint8
    n = len(prepared)
    assert prepared.points.shape == (n, 68, 2) and prepared.jaw_crop.shape == (n, 17, 2)
    assert prepared.matrix.shape == (n, 2, 3) and prepared.nose_crop.shape == (n, 9, 2)
    for i in range(n):
        np.testing.assert_allclose(
            prepared.points_crop[i], transform_points(prepared.points[i], prepared.matrix[i]), atol=1e-3
        )
    err = np.linalg.norm(prepared.five_crop - arcface_template()[None], axis=2)
    assert err.mean() < 4.0, err
    # the crop on disk is the warp of the original with the stored matrix
    import cv2

    from benchmark.data.images import read_image

    i = prepared.index(NAMES[0])
    again = cv2.warpAffine(read_image(prepared.paths[i]), prepared.matrix[i], (112, 112), flags=cv2.INTER_LINEAR)
    assert np.abs(again.astype(int) - crops[i]).max() <= 1
    assert prepared.load_chips([i]).shape == (1, 150, 150, 3)
    rec = next(r for r in prepared if r["key"] == NAMES[0])
    assert rec["identity"] == "Aaron_Eckhart" and rec["crop"].endswith(".png")


def test_resume_skips_done_items_and_redoes_lost_batches(prepared, items):
    out = prepared.out_dir
    parts = sorted((out / "parts").glob("part-*.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in parts}
    again = prepare_faces(items, out, PrepareConfig(chips=True), batch_size=4, progress=False)
    assert {p: p.stat().st_mtime_ns for p in parts} == mtimes  # nothing recomputed
    assert again.keys == prepared.keys
    # a run killed before a batch was recorded: its keys are prepared again, the rest untouched
    lost = parts[0]
    lost_keys = {r["key"] for r in json.loads(lost.read_text())["records"]}
    lost.unlink()
    redone = prepare_faces(items, out, PrepareConfig(chips=True), batch_size=4, progress=False)
    assert {r["key"] for r in json.loads(lost.read_text())["records"]} == lost_keys  # rewritten
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in parts[1:])  # others untouched
    np.testing.assert_allclose(redone.points, prepared.points)


def test_settings_cannot_be_mixed_and_unknown_keys_are_reported(prepared, items):
    with pytest.raises(ValueError, match="other settings"):
        prepare_faces(items, prepared.out_dir, PrepareConfig(detector="yunet"), progress=False)
    sub = load_prepared(prepared.out_dir, keys=[NAMES[1], "nobody/x.jpg", "bad/zero.jpg"])
    assert sub.keys == [NAMES[1]]
    assert [f["reason"] for f in sub.failures] == ["not-prepared", "empty-file"]
    with pytest.raises(ValueError, match="duplicate"):
        prepare_faces(items[:1] * 2, prepared.out_dir, PrepareConfig(chips=True), progress=False)
    with pytest.raises(ValueError, match=r"item key .../x. holds a .... component"):
        prepare_faces([PrepareItem("../x", items[0].path)], prepared.out_dir, PrepareConfig(chips=True), progress=False)


def test_failed_items_are_retried_only_when_asked(items, tmp_path):
    """A repaired file stays failed on a plain resume and is prepared by ``retry_failed``."""
    late = tmp_path / "late" / "photo.jpg"
    batch = [items[0], PrepareItem("late/photo.jpg", str(late), "late")]
    first = prepare_faces(batch, tmp_path / "out", PrepareConfig(), batch_size=1, progress=False)
    assert [f["reason"] for f in first.failures] == ["missing"]
    late.parent.mkdir()
    late.write_bytes(Path(items[1].path).read_bytes())  # the user repairs the file
    again = prepare_faces(batch, tmp_path / "out", PrepareConfig(), batch_size=1, progress=False)
    assert [f["key"] for f in again.failures] == ["late/photo.jpg"]
    retried = prepare_faces(batch, tmp_path / "out", PrepareConfig(), batch_size=1, progress=False, retry_failed=True)
    assert retried.failures == [] and retried.keys == [items[0].key, "late/photo.jpg"]
    assert crop_path(tmp_path / "out", "late/photo.jpg").is_file()
    summary = json.loads((tmp_path / "out" / "prepared.json").read_text())
    assert summary["failed"] == 0


def test_failure_fraction_limit(items, tmp_path):
    with pytest.raises(RuntimeError, match="failed preparation"):
        prepare_faces(items[-3:], tmp_path, PrepareConfig(), progress=False, max_failure_fraction=0.5)


def test_yunet_alignment_and_worker_processes_match(items, tmp_path):
    """Two worker processes give the same result as one; YuNet's own 5 points can drive the alignment."""
    cfg = PrepareConfig(detector="yunet", align_from="detector")
    one = prepare_faces(items[:4], tmp_path / "one", cfg, batch_size=2, progress=False)
    two = prepare_faces(items[:4], tmp_path / "two", cfg, batch_size=2, workers=2, progress=False)
    assert one.keys == two.keys == NAMES
    np.testing.assert_array_equal(one.matrix, two.matrix)
    assert np.array_equal(one.load_crops(), two.load_crops())
    assert crop_path(tmp_path / "two", NAMES[0]).is_file()
    assert np.linalg.norm(one.five_crop - arcface_template()[None], axis=2).mean() < 4.0


def test_prepare_command(lfw_dir, tmp_path):
    pytest.importorskip("benchmark.data.datasets")
    from benchmark.cli import main

    root = tmp_path / "faces" / "Abdullah_Gul"
    root.mkdir(parents=True)
    for n in NAMES[1:3]:
        (root / n.split("/")[1]).write_bytes((lfw_dir / "images" / n).read_bytes())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "prep"
    assert main(["prepare", "--data", str(tmp_path / "faces"), "--out", str(out), "--no-progress"]) == 0
    got = load_prepared(out)
    assert len(got) == 2 and len(got.failures) == 1
    assert got.failures[0]["reason"] in ("truncated", "corrupt", "not-an-image")
