"""Attack library tests: masking geometry, the invariants of every attack, determinism.

Faces come from insightface's shipped sample images (a dependency), so nothing here needs ../shared.
The recognizer and mask detector are small real torch networks with seeded random weights
(tests/attack_models.py): the invariants hold for any differentiable model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from attack_models import TinyNet

from attacks import create, list_attacks
from attacks.fgsm import FGSM_METHODS, gaussian_kernel
from attacks.masking import (
    delaunay_mask,
    delaunay_triangles,
    piecewise_affine,
    polygon_mask,
    region_polygon,
    solid_mask,
)
from attacks.mf2m import identity_kernels, pixelwise_filter, project_simplex, shifted_stack
from attacks.templates import to_tensor

NOISE_EPS = {"advnoise-dm": 0.04, **{m: 0.04 for m in FGSM_METHODS}}


def _insightface_images() -> Path:
    spec = importlib.util.find_spec("insightface")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "images"


@pytest.fixture(scope="module")
def faces():
    """Aligned 112×112 faces with 68 landmarks: Tom Hanks (already aligned) + the faces of t1.jpg."""
    from benchmark.data.images import read_image
    from benchmark.models.align import align_face, transform_points
    from benchmark.models.landmarks import DlibLandmarker

    lm = DlibLandmarker()
    hanks = read_image(_insightface_images() / "Tom_Hanks_54745.png")
    crops, points = [hanks], [lm.landmarks_aligned(hanks).points]
    group = read_image(_insightface_images() / "t1.jpg")
    for box, score in lm.detect(group):
        if score < 0.5:
            continue
        found = lm.landmarks(group, box=box)
        crop, m = align_face(group, found.five)
        crops.append(crop)
        points.append(transform_points(found.points, m))
    assert len(crops) >= 4
    return np.stack(crops), np.stack(points).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    return TinyNet(64, True, seed=1), TinyNet(2, False, seed=2)


@pytest.fixture(scope="module")
def dm_batch(faces):
    """DM images of faces[0..2] wearing masks cut from the next face, with regions."""
    crops, points = faces
    out, regions = [], []
    for i in range(3):
        img, reg = delaunay_mask(crops[i], points[i], crops[i + 1], points[i + 1])
        out.append(img)
        regions.append(reg)
    return np.stack(out), np.stack(regions), crops[:3]


# ------------------------------------------------------------------------------------------ masking


def test_piecewise_affine_matches_global_affine(faces):
    """Triangles related by one global affine map warp exactly like cv2.warpAffine (independent reference)."""
    import cv2

    crop, pts = faces[0][0], faces[1][0].astype(np.float64)
    a = np.array([[0.9, 0.1, 4.0], [-0.05, 1.05, -3.0]])
    dst = pts @ a[:, :2].T + a[:, 2]
    warped, covered = piecewise_affine(crop, pts, dst, delaunay_triangles(dst), crop.shape[:2])
    reference = cv2.warpAffine(crop, a, (112, 112), flags=cv2.INTER_LINEAR)
    inner = cv2.erode(covered, np.ones((3, 3), np.uint8)) > 0  # rasterisation may differ on hull edges
    ys, xs = np.mgrid[0:112, 0:112]
    inv = cv2.invertAffineTransform(a)
    sx, sy = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    inner &= (sx >= 0) & (sx <= 111) & (sy >= 0) & (sy <= 111)  # borders are handled differently
    assert inner.sum() > 3000
    diff = np.abs(warped.astype(int) - reference.astype(int))[inner]
    assert diff.max() <= 2, diff.max()


def test_delaunay_triangles_cover_hull_without_degenerates(faces):
    pts = faces[1][0]
    tri = delaunay_triangles(pts)
    assert tri.shape[1] == 3 and len(tri) > 90  # 68 points → ~100 triangles
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    area = 0.5 * np.abs((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])
    from scipy.spatial import ConvexHull

    assert area.min() > 0 and abs(area.sum() - ConvexHull(pts).volume) < 1.0


def test_dm_changes_only_the_lower_face(dm_batch):
    images, regions, clean = dm_batch
    for img, reg, c in zip(images, regions, clean):
        assert np.array_equal(img[reg == 0], c[reg == 0])  # outside: bit-exact
        assert 0.15 < reg.mean() < 0.5  # a mask-sized region
        ys, xs = np.nonzero(reg)
        assert ys.min() > 45 and ys.mean() > 70  # below the eyes (y≈52 in the template)
        assert np.abs(img[reg > 0].astype(int) - c[reg > 0]).mean() > 5  # and it did change


def test_region_polygon_follows_jaw_and_nose(faces):
    pts = faces[1][0]
    poly = region_polygon(pts[:17], pts[27:36])
    assert np.allclose(poly[0], pts[1]) and np.allclose(poly[-2], pts[15]) and np.allclose(poly[-1], pts[28])
    mask = polygon_mask(poly, (112, 112))
    assert mask[int(pts[57, 1]), int(pts[57, 0])] == 1  # lower lip inside
    assert mask[int(pts[37, 1]), int(pts[37, 0])] == 0  # eye outside


@pytest.mark.parametrize("colour,channel", [("blue", 2), ("black", None)])
def test_solid_mask(faces, colour, channel):
    crop, pts = faces[0][0], faces[1][0]
    img, reg = solid_mask(crop, pts, colour)
    assert np.array_equal(img[reg == 0], crop[reg == 0])
    inside = img[reg > 0].astype(float).mean(0)
    if channel is None:
        assert inside.max() < 90
    else:
        assert inside.argmax() == channel


def test_solid_mask_covers_the_whole_region(faces):
    """No face shows through the solid mask: the region fills the jaw/nose polygon without holes and
    every pixel of it (beyond the feathered edge) is mask texture. Flat texture triangles (nose
    bridge, tip and mouth centre all lie on the texture's centre line) once left a skin wedge."""
    import cv2

    crops, points = faces
    for crop, pts in zip(crops, points):
        img, reg = solid_mask(crop, pts, "blue")
        poly = polygon_mask(region_polygon(pts[:17], pts[27:36]), crop.shape[:2])
        interior = cv2.erode(np.pad(poly, 1), np.ones((3, 3), np.uint8))[1:-1, 1:-1]
        assert not (interior & (1 - reg)).any(), "hole in the solid mask region"
        core = cv2.erode(np.pad(reg, 3), np.ones((7, 7), np.uint8))[3:-3, 3:-3] > 0  # beyond the 2-px feather
        px = img[core].astype(int)
        assert core.sum() > 2000 and (px[:, 2] - px[:, 0]).min() > 10  # blue texture everywhere
        assert np.array_equal(img[reg == 0], crop[reg == 0])


def test_seamless_dm_keeps_outside(faces):
    crops, points = faces
    img, reg = delaunay_mask(crops[0], points[0], crops[1], points[1], seamless=True)
    assert np.array_equal(img[reg == 0], crops[0][reg == 0])


# ------------------------------------------------------------------------------------------ attacks


def _run(method, models, dm_batch, **params):
    fr, md = models
    images, regions, clean = dm_batch
    attack = create(method, fr, md, **params)
    x = to_tensor(images)
    r = torch.from_numpy(regions)[:, None].float()
    adv = attack(x, r, to_tensor(clean), keys=["a", "b", "c"])
    return attack, x, r, adv


@pytest.mark.parametrize("method", sorted(NOISE_EPS))
def test_noise_attacks_stay_in_region_and_ball(method, models, dm_batch):
    steps = {"fgsm": {}, "ti-fgsm": {}}.get(method, {"steps": 4, "step": 0.01})
    _, x, r, adv = _run(method, models, dm_batch, **steps)
    assert torch.equal(adv[r.expand_as(adv) == 0], x[r.expand_as(x) == 0])
    delta = (adv - x).abs()
    assert delta.max() <= NOISE_EPS[method] + 1e-6
    assert delta.max() > NOISE_EPS[method] * 0.5  # and it moved


def test_fgsm_is_one_full_sign_step(models, dm_batch):
    _, x, r, adv = _run("fgsm", models, dm_batch)
    inside = (r.expand_as(x) > 0) & (x > 0.05) & (x < 0.95)
    moved = (adv - x)[inside].abs()
    assert ((moved - 0.04).abs() < 1e-6).float().mean() > 0.99  # ±ε everywhere the gradient is non-zero


def test_advnoise_raises_the_objective(models, dm_batch):
    attack, x, r, adv = _run("advnoise-dm", models, dm_batch, steps=5, step=0.004)
    ref = attack.reference_features(to_tensor(dm_batch[2]))
    with torch.no_grad():
        assert (attack.objective(adv, ref) > attack.objective(x, ref)).all()


def test_mf2m_raises_the_objective_and_keeps_outside(models, dm_batch):
    attack, x, r, adv = _run(
        "mf2m", models, dm_batch, noise_steps=2, kernel_steps=4, kernel_update="sign", kernel_lr=0.01
    )
    assert torch.equal(adv[r.expand_as(adv) == 0], x[r.expand_as(x) == 0])
    noised = _run("advnoise-dm", models, dm_batch, eps=0.01, step=0.001, steps=2)[3]
    ref = attack.reference_features(to_tensor(dm_batch[2]))
    with torch.no_grad():
        assert (attack.objective(adv, ref) > attack.objective(noised, ref)).all()


def test_mf2m_without_kernel_steps_is_the_pgd_noised_dm(models, dm_batch):
    mf = _run("mf2m", models, dm_batch, noise_steps=6, kernel_steps=0)[3]
    pgd = _run("advnoise-dm", models, dm_batch, eps=0.01, step=0.001, steps=6)[3]
    assert torch.equal(mf, pgd)


def test_pixelwise_filter_matches_conv2d(dm_batch):
    """With the same kernel at every pixel, pixel-wise filtering is an ordinary (cross-)correlation."""
    x = to_tensor(dm_batch[0])
    k = torch.rand(5, 5, generator=torch.Generator().manual_seed(0))
    kernels = k.flatten()[None, :, None, None].expand(len(x), 25, 112, 112)
    ours = pixelwise_filter(shifted_stack(x, 5), kernels)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    ref = torch.nn.functional.conv2d(padded, k.expand(3, 1, 5, 5), groups=3)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.equal(pixelwise_filter(shifted_stack(x, 5), identity_kernels(len(x), 5, 112, 112, "cpu")), x)


def test_project_simplex_matches_bisection_reference():
    """Sort-based projection vs an independent bisection on the threshold θ with Σ max(v − θ, 0) = 1."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 25, 4, 5, generator=g) * 0.7
    ours = project_simplex(v)
    lo, hi = v.min(1, keepdim=True).values - 1, v.max(1, keepdim=True).values
    for _ in range(200):
        mid = (lo + hi) / 2
        too_big = torch.clamp(v - mid, min=0).sum(1, keepdim=True) > 1
        lo, hi = torch.where(too_big, mid, lo), torch.where(too_big, hi, mid)
    ref = torch.clamp(v - (lo + hi) / 2, min=0)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert (ours >= 0).all() and torch.allclose(ours.sum(1), torch.ones(3, 4, 5), atol=1e-5)
    ident = identity_kernels(2, 5, 3, 3, "cpu")
    assert torch.equal(project_simplex(ident), ident)


@pytest.mark.parametrize("norm,convex", [("simplex", True), ("none", False)])
def test_mf2m_simplex_kernels_only_mix_neighbours(models, dm_batch, norm, convex):
    """With simplex kernels every filtered pixel lies between the min and max of its 5×5 neighbourhood
    (a blur-like convex combination); the raw unnormalised update leaves that range."""
    fr, md = models
    images, regions, clean = dm_batch
    attack = create("mf2m", fr, md, kernel_steps=6, kernel_norm=norm, kernel_lr=50.0 if convex else 0.1)
    x, r = to_tensor(images), torch.from_numpy(regions)[:, None].float()
    ref = attack.reference_features(to_tensor(clean))
    out = attack.filter_attack(x, r, ref)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    hi = torch.nn.functional.max_pool2d(padded, 5, 1)
    lo = -torch.nn.functional.max_pool2d(-padded, 5, 1)
    inside = r.expand_as(x) > 0
    outside_range = ((out > hi + 1e-5) | (out < lo - 1e-5)) & inside
    assert (out - x)[inside].abs().max() > 1e-3  # the kernels did move
    assert (not outside_range.any()) if convex else outside_range.any()
    with torch.no_grad():
        assert (attack.objective(out, ref) > attack.objective(x, ref)).all()


def test_gaussian_kernel():
    k = gaussian_kernel(7)
    assert k.shape == (7, 7) and abs(float(k.sum()) - 1) < 1e-6 and k.argmax() == 24 and torch.equal(k, k.T)


@pytest.mark.parametrize("method", ["advnoise-dm", "di2-fgsm", "m-di2-fgsm", "mf2m"])
def test_same_seed_same_result_and_batch_independent(method, models, dm_batch):
    params = {
        "mf2m": {"noise_steps": 2, "kernel_steps": 2, "random_start": True},
        "advnoise-dm": {"steps": 3, "random_start": True},
    }.get(method, {"steps": 3})
    a = _run(method, models, dm_batch, seed=7, **params)[3]
    b = _run(method, models, dm_batch, seed=7, **params)[3]
    c = _run(method, models, dm_batch, seed=8, **params)[3]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # image 0 alone gives (numerically) the same result as inside the batch: randomness is per key
    fr, md = models
    images, regions, clean = dm_batch
    single = create(method, fr, md, seed=7, **params)(
        to_tensor(images[:1]), torch.from_numpy(regions[:1])[:, None].float(), to_tensor(clean[:1]), keys=["a"]
    )
    assert (single - a[:1]).abs().max() < 2e-3


def test_repr_and_config(models):
    fr, md = models
    attack = create("mf2m", fr, md, kernel_steps=3)
    assert "kernel_steps=3" in repr(attack) and attack.config()["method"] == "mf2m"
    assert set(list_attacks(builtin_only=True)) == {"solid", "dm", "advnoise-dm", "mf2m", *FGSM_METHODS}
    with pytest.raises(ValueError, match="kernel_update"):
        create("mf2m", fr, md, kernel_update="bogus")
    with pytest.raises(ValueError, match="mask"):
        create("dm", fr, md)
