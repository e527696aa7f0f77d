"""Defences: spec parsing, entry points and out-of-package plug-ins, the reference defences on real aligned
LFW faces with the real SFace recognizer, metrics against brute-force references, and the leaderboard.

Tests that need faces take the ``lfw_dir`` fixture (../shared/data/lfw) and skip without it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmark.defences import DEFENCES, api
from benchmark.defences.api import load_defence, parse_value, split_spec
from benchmark.defences.defended import DefendedRecognizer, defend
from benchmark.defences.metrics import mask_rate, search_metrics
from benchmark.defences.reference import UpperFace

# --------------------------------------------------------------------------------------------------
# Fixtures: a handful of aligned LFW faces and SFace
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces(lfw_dir: Path):
    """Aligned faces ``(n,112,112,3)`` with 68 landmarks and identities: 2 images each of 4 LFW people."""
    from attacks.templates import load_aligned
    from benchmark.models.landmarks import DlibLandmarker

    marker = DlibLandmarker()
    crops, points, ids = [], [], []
    people = [d for d in sorted((lfw_dir / "images").iterdir()) if len(list(d.glob("*.jpg"))) >= 2][:4]
    for person in people:
        for path in sorted(person.glob("*.jpg"))[:2]:
            crop, pts = load_aligned(path, marker)
            crops.append(crop)
            points.append(pts)
            ids.append(person.name)
    return np.stack(crops), np.stack(points), ids


@pytest.fixture(scope="module")
def sface():
    from benchmark.models.sface import SFaceRecognizer

    return SFaceRecognizer(device="cpu")


@pytest.fixture(scope="module")
def sface_torch(sface):
    """SFace's differentiable torch module (converted once per module: the conversion takes seconds)."""
    return sface.torch_module("cpu")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


# --------------------------------------------------------------------------------------------------
# Specs and loading
# --------------------------------------------------------------------------------------------------


def test_parse_values_and_specs():
    assert [parse_value(v) for v in ("3", "-2", "0.5", "1e-3", "true", "No", "abc")] == [
        3,
        -2,
        0.5,
        1e-3,
        True,
        False,
        "abc",
    ]
    assert split_spec("pkg.mod:make:q=5,on=true,name=x") == ("pkg.mod", "make", "", {"q": 5, "on": True, "name": "x"})
    assert split_spec("pkg.mod:make") == ("pkg.mod", "make", "", {})
    assert split_spec("jpeg:quality=30") == (None, None, "jpeg", {"quality": 30})
    assert split_spec("jpeg") == (None, None, "jpeg", {})
    for bad in ("", ":q=1", "m:f:a=1,a=2", "m:f:1x=2", "m:f:novalue"):
        with pytest.raises(ValueError):
            split_spec(bad)


def test_bad_specs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown defence 'nope'"):
        load_defence("nope")
    with pytest.raises(ValueError, match="cannot import module"):
        load_defence("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="bad parameters"):
        load_defence("jpeg:qualty=3")
    with pytest.raises(ValueError, match="quality must be"):
        load_defence("jpeg:quality=0")
    with pytest.raises(ValueError, match="not a defence"):
        load_defence("benchmark.defences.reference:gaussian_kernel_size:sigma=1")


def test_builtins_are_registered_once_and_load():
    """Every built-in is in the registry (not also declared as an entry point of mf2m itself) and loads."""
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert DEFENCES.group not in tomllib.loads(pyproject.read_text())["project"].get("entry-points", {})
    builtins = DEFENCES.names(builtin_only=True)
    assert builtins == [
        "jpeg",
        "median-blur",
        "gaussian-blur",
        "bit-depth",
        "random-resize-pad",
        "upper-face",
        "faced-mask-aware-detector",
    ]
    listed = {name: (target, origin) for name, target, origin in api.list_defences()}
    for name in builtins:
        assert listed[name][1] == "built-in" and listed[name][0].startswith("benchmark.defences.reference:")
        d = load_defence(name)
        assert d.name == name and d.kind in api.KINDS and d.source == f"builtin:{name}"
    with pytest.raises(ValueError, match=r"did you mean 'median-blur'.*choose from jpeg, median-blur"):
        load_defence("median-blurr:k=3")


EXTERNAL = textwrap.dedent('''
    """A defence written outside mf2m: swap the red and blue channels (straight-through gradient)."""
    import numpy as np
    from benchmark.defences.api import InputTransform

    class SwapRB(InputTransform):
        name = "swap-rb"
        gradient = "exact"

        def __init__(self, strength=1, apply_to="both"):
            super().__init__(apply_to)
            self.strength = strength

        def params(self):
            return {"strength": self.strength, **super().params()}

        def apply(self, faces):
            return np.ascontiguousarray(np.asarray(faces)[..., ::-1])

        def surrogate(self, x):
            return x.flip(1)

    def make(strength=1, apply_to="both"):
        return SwapRB(strength, apply_to)
''')


def test_external_defence_via_spec_and_entry_point(tmp_path, monkeypatch, faces, sface, capsys):
    """A defence in a file outside the package is loaded by ``--defence module:callable:…`` and through an
    entry point of a tiny installed distribution (a .dist-info folder on sys.path), then evaluated on SFace."""
    (tmp_path / "my_defence_mod.py").write_text(EXTERNAL)
    dist = tmp_path / "my_mf2m_defence-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-mf2m-defence\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mf2m.defences]\nswap-rb = my_defence_mod:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    by_spec = load_defence("my_defence_mod:make:strength=2,apply_to=recognition")
    assert (by_spec.name, by_spec.params) == ("swap-rb", {"strength": 2, "apply_to": "recognition"})
    assert by_spec.source == "spec:my_defence_mod:make"
    assert "swap-rb" in [name for name, _, _ in api.list_defences()]
    by_ep = load_defence("swap-rb:strength=3")
    assert by_ep.source == "entry-point:swap-rb" and by_ep.params["strength"] == 3

    crops = faces[0][:4]
    rec, md = defend(by_spec, sface, None)
    assert md is None and rec.name == "sface+swap-rb[apply_to=recognition,strength=2]"
    assert rec.weights_hash() != sface.weights_hash()
    np.testing.assert_allclose(rec.embed(crops), sface.embed(crops[..., ::-1].copy()), atol=1e-6)
    assert _cos(rec.embed(crops), sface.embed(crops)).max() < 0.999

    from benchmark.cli import main

    assert main(["defend", "--list"]) == 0
    assert "swap-rb\tmy_defence_mod:make" in capsys.readouterr().out
    assert main(["defend", "--config", str(tmp_path / "none.yaml"), "--defence", "swap-rb:strength=1"]) == 1
    assert "leaderboard config not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Reference defences on real faces
# --------------------------------------------------------------------------------------------------

TRANSFORMS = [
    "jpeg:quality=50",
    "median-blur:k=3",
    "gaussian-blur:sigma=1.0",
    "bit-depth:bits=4",
    "random-resize-pad:min_scale=0.8,seed=3",
    "upper-face:mode=blank",
    "upper-face:mode=crop",
]


def test_jpeg_quality_orders_feature_change(faces, sface):
    crops = faces[0]
    base = sface.embed(crops)
    cos = {q: _cos(sface.embed(load_defence(f"jpeg:quality={q}").impl.apply(crops)), base) for q in (100, 5)}
    assert cos[100].min() > 0.97, cos[100]
    assert cos[5].mean() < cos[100].mean() - 0.05, (cos[5], cos[100])


@pytest.mark.parametrize("spec", TRANSFORMS)
def test_transforms_are_deterministic_shape_preserving_and_change_pixels(spec, faces):
    crops = faces[0]
    t = load_defence(spec).impl
    a, b = t.apply(crops), t.apply(crops.copy())
    assert a.shape == crops.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, crops)
    np.testing.assert_array_equal(t.apply(crops[1:2]), a[1:2])  # batch-independent


def test_upper_face_leaves_everything_above_the_nose_line(faces, sface):
    crops = faces[0]
    policy = UpperFace(mode="blank", fill=0)
    line = policy.line()
    assert line == 72  # ArcFace template nose tip y = 71.74
    out = policy.apply(crops)
    np.testing.assert_array_equal(out[:, :line], crops[:, :line])
    assert (out[:, line:] == 0).all()
    d = load_defence("upper-face")
    rec, md = defend(d, sface, "detector-untouched")
    assert md == "detector-untouched"  # a recognition policy leaves the mask detector alone
    feats = rec.embed(crops)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # upper-face features still identify: each face's best match among the others is its mate
    sims = feats @ feats.T - 2 * np.eye(len(feats))
    ids = np.asarray(faces[2])
    assert (ids[sims.argmax(1)] == ids).mean() >= 0.75


@pytest.mark.parametrize("spec", TRANSFORMS)
def test_differentiable_versions_pass_gradients_and_match_forward(spec, faces, sface, sface_torch):
    import torch

    crops = faces[0][:2]
    d = load_defence(spec)
    t = d.impl
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    if t.gradient == "exact":  # the surrogate is the transform itself, up to 8-bit rounding
        real = torch.from_numpy(t.apply(crops)).permute(0, 3, 1, 2).float()
        assert float((t.surrogate(x.detach()) * 255 - real).abs().max()) <= 2.0
    rec, _ = defend(d, sface, None)
    from torch import nn

    module = nn.Sequential(t.torch_module(), sface_torch)  # what DefendedRecognizer.torch_module builds
    feats = module(x)
    ref = torch.from_numpy(sface.embed(crops[::-1].copy())[::-1].copy())
    loss = ((feats - ref) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    if spec.startswith("upper-face:mode=blank"):
        assert float(grad[:, :, UpperFace().line() :].abs().max()) == 0.0  # nothing below the line matters
    # forward value = the real defence: torch features of the defended module ≈ onnxruntime's
    with torch.no_grad():
        np.testing.assert_allclose(module(x.detach()).numpy(), rec.embed(crops), atol=2e-2)


def test_defended_torch_module_is_transform_then_recognizer(faces, sface, sface_torch):
    import torch

    d = load_defence("median-blur:k=3")
    rec, _ = defend(d, sface, None)
    module = rec.torch_module("cpu")
    x = torch.from_numpy(faces[0][:2]).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), sface_torch(module[0](x)).numpy(), atol=1e-6)
        blurred = torch.from_numpy(d.impl.apply(faces[0][:2])).permute(0, 3, 1, 2).float().div(255)
        np.testing.assert_allclose(module(x).numpy(), sface_torch(blurred).numpy(), atol=1e-5)


def test_defended_identity_is_distinct_and_recorded(sface):
    a, b = load_defence("jpeg:quality=50"), load_defence("jpeg:quality=60")
    ra, rb = DefendedRecognizer(sface, a, a.impl), DefendedRecognizer(sface, b, b.impl)
    hashes = {sface.weights_hash(), ra.weights_hash(), rb.weights_hash()}
    assert len(hashes) == 3 and len({sface.name, ra.name, rb.name}) == 3
    ident = ra.identity()
    assert ident["defence"]["params"]["quality"] == 50 and ident["base_model"]["sha256"] == sface.weights_hash()
    assert ident["defence"]["gradient"] == "bpda-identity"


def test_faced_mask_aware_detector_loads_a_retrained_masknet(tmp_path):
    """The replacement detector wraps a MaskNet file; a missing file is a clear ModelUnavailable."""
    from benchmark.models.base import ModelUnavailable
    from benchmark.models.mask_detector import build_masknet, save_weights

    d = load_defence(f"faced-mask-aware-detector:weights={tmp_path / 'missing.pt'}")
    with pytest.raises(ModelUnavailable, match="missing.pt"):
        defend(d, None, None, device="cpu")
    import torch

    torch.manual_seed(0)
    save_weights(tmp_path / "faced.pt", build_masknet(), {"note": "untrained, for the wrapper test"})
    d = load_defence(f"faced-mask-aware-detector:weights={tmp_path / 'faced.pt'}")
    rec, md = defend(d, "recognizer-untouched", None, device="cpu")
    assert rec == "recognizer-untouched" and md.name.startswith("mf2m-maskdet-faced+faced-mask-aware-detector[")
    p = md.p_masked(np.zeros((2, 112, 112, 3), np.uint8))
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()


# --------------------------------------------------------------------------------------------------
# Metrics and leaderboard cells
# --------------------------------------------------------------------------------------------------


def _brute_force(probe, probe_keys, probe_ids, mates, mate_keys, mate_ids, dist, far):
    """Independent loop implementation of the search protocol (docs/protocol.md §2) in float64."""
    probe, mates, dist = (np.asarray(a, np.float64) for a in (probe, mates, dist))
    ranks, genuine, negative = [], [], []
    for i in range(len(probe)):
        negs = [float(probe[i] @ d) for d in dist]
        negative += negs
        for j in range(len(mates)):
            if mate_ids[j] == probe_ids[i] and mate_keys[j] != probe_keys[i]:
                s = float(probe[i] @ mates[j])
                genuine.append(s)
                ranks.append(1 + sum(n > s for n in negs))
    tau = sorted(negative, reverse=True)[int(np.floor(far * len(negative)))]
    tar = float(np.mean([g > tau for g in genuine]))
    g, n = np.asarray(genuine)[:, None], np.asarray(negative)[None, :]
    auc = float(((g > n) + 0.5 * (g == n)).mean())
    return float(np.mean(np.asarray(ranks) == 1)), tar, auc, len(genuine), len(negative)


def test_cell_metrics_come_from_the_search_engine_and_match_a_brute_force():
    """search_metrics (the leaderboard's Rank-1/TAR/AUC, computed by benchmark.search) equals a loop over pairs."""
    rng = np.random.default_rng(0)
    ids = [f"id{i // 3}" for i in range(15)]
    keys = [f"k{i}" for i in range(15)]
    centres = rng.normal(size=(5, 32))
    clean = np.stack([centres[int(s[2:])] + 0.6 * rng.normal(size=32) for s in ids])
    probe = clean + 0.9 * rng.normal(size=clean.shape)
    dist = rng.normal(size=(40, 32)) + 0.3 * centres[rng.integers(0, 5, 40)]
    norm = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    probe, clean, dist = norm(probe), norm(clean), norm(dist)
    sub = [0, 1, 4, 6, 7, 9, 12, 13]  # some probes were skipped by the attack; every clean face is a mate
    for far in (1e-6, 0.01, 0.1):
        got = search_metrics(probe[sub], [keys[i] for i in sub], [ids[i] for i in sub], clean, keys, ids, dist, far)
        rank1, tar, auc, n_pos, n_neg = _brute_force(
            probe[sub], [keys[i] for i in sub], [ids[i] for i in sub], clean, keys, ids, dist, far
        )
        assert got["rank1"] == pytest.approx(rank1) and 0 < rank1 < 1
        assert got["tar"] == pytest.approx(tar)
        assert abs(got["auc"] - auc) <= got["auc_max_error"] + 1e-12  # the engine's own certified bound
        assert got["auc_max_error"] < 1e-6
        assert (got["positive_pairs"], got["negative_pairs"]) == (n_pos, n_neg) == (len(sub) * 2, len(sub) * 40)
    with pytest.raises(ValueError, match="at least one distractor"):
        search_metrics(probe, keys, ids, clean, keys, ids, dist[:0])
    with pytest.raises(ValueError, match="do not line up"):
        search_metrics(probe, keys[:3], ids, clean, keys, ids, dist)
    assert mask_rate(np.array([0.1, 0.5, 0.9])) == pytest.approx(2 / 3) and mask_rate(np.zeros(0)) is None


def test_leaderboard_cells_on_real_masked_faces(faces, sface):
    """Cells on real faces: solid masks cost SFace accuracy, the clean cost of a defence is computed, tables render."""
    from attacks.masking import solid_mask
    from benchmark.report.leaderboard import render_csv, render_markdown
    from benchmark.workflows.defend import add_clean_cost, evaluate_cell

    crops, points, ids = faces
    masked = np.stack([solid_mask(c, p)[0] for c, p in zip(crops, points)])
    keys = [f"{n}/{i}" for i, n in enumerate(ids)]
    distractors = np.stack([np.roll(c, 40, axis=1) for c in crops])  # shifted faces: real, non-matching
    rows = []
    for d in (None, load_defence("jpeg:quality=10"), load_defence("upper-face")):
        rec = sface if d is None else defend(d, sface, None)[0]
        name = "none" if d is None else d.tag
        for attack, images in (("clean", crops), ("solid", masked)):
            cell = evaluate_cell(rec, None, images, keys, ids, crops, keys, ids, distractors, 1e-6)
            rows.append(
                {
                    "defence": name,
                    "kind": "",
                    "attack": attack,
                    "mode": "non-adaptive",
                    "gradient": None,
                    "probes": cell["probes"],
                    "skipped": 0,
                    **{
                        k: cell[k]
                        for k in (
                            "rank1",
                            "tar",
                            "auc",
                            "mask_rate",
                            "genuine_mean",
                            "positive_pairs",
                            "negative_pairs",
                        )
                    },
                }
            )
    add_clean_cost(rows)
    by = {(r["defence"], r["attack"]): r for r in rows}
    assert by[("none", "clean")]["clean_cost_rank1"] == 0.0
    assert by[("none", "solid")]["genuine_mean"] < by[("none", "clean")]["genuine_mean"] - 0.05
    assert by[("none", "solid")]["auc"] <= by[("none", "clean")]["auc"]
    jpeg = next(k for k in by if k[0].startswith("jpeg") and k[1] == "clean")
    assert by[jpeg]["clean_cost_auc"] == pytest.approx(by[jpeg]["auc"] - by[("none", "clean")]["auc"])
    md = render_markdown(rows, {"recognizer": "sface", "mask_detector": "none", "far": 1e-6, "pool": "test"})
    assert md.count("\n| ") == len(rows) + 1 and "n/a" in md  # no mask detector → n/a
    csv_text = render_csv(rows)
    assert csv_text.splitlines()[0].startswith("defence,kind,attack,mode") and len(csv_text.splitlines()) == 7


@pytest.mark.slow
def test_leaderboard_end_to_end_and_resume(tmp_path, lfw_dir, sface):
    """A tiny real leaderboard on LFW: solid mask + 1-step AdvNoise-DM, undefended vs JPEG (non-adaptive and
    adaptive through BPDA). The mask detector is a MaskNet with seeded random weights (its *rates* mean nothing
    here; the default detector's weights are not needed to check the orchestration)."""
    import torch

    from benchmark.models.mask_detector import CNNMaskDetector, build_masknet, save_weights
    from benchmark.workflows.defend import LeaderboardConfig, run_leaderboard

    torch.manual_seed(0)
    save_weights(tmp_path / "md.pt", build_masknet(), {"note": "random init, orchestration test"})
    md = CNNMaskDetector(tmp_path / "md.pt", device="cpu")
    raw = {
        "data": f"folder:{lfw_dir / 'images'}",
        "out": str(tmp_path / "lb"),
        "identities": 2,
        "max_images": 2,
        "distractors": 3,
        "templates": 3,
        "device": "cpu",
        "batch_size": 4,
        "attacks": ["solid", {"name": "adv", "method": "advnoise-dm", "params": {"steps": 1, "step": 0.01}}],
        "defences": ["none", "jpeg:quality=40"],
    }
    cfg = LeaderboardConfig.from_dict(raw)
    result = run_leaderboard(cfg, progress=False, models=(sface, md))
    rows = {(r["defence"], r["attack"], r["mode"]): r for r in result["rows"]}
    jpeg = "jpeg[apply_to=both,quality=40]"
    assert set(rows) == {
        ("none", "clean", "—"),
        ("none", "solid", "undefended"),
        ("none", "adv", "undefended"),
        (jpeg, "clean", "—"),
        (jpeg, "solid", "non-adaptive"),
        (jpeg, "adv", "non-adaptive"),
        (jpeg, "adv", "adaptive"),
    }
    assert rows[(jpeg, "adv", "adaptive")]["gradient"] == "bpda-identity"
    for r in result["rows"]:
        assert r["probes"] + r["skipped"] == 4 and 0 <= r["auc"] <= 1 and 0 <= r["mask_rate"] <= 1
    out = tmp_path / "lb"
    assert (out / "attacks").is_dir() and len(list((out / "attacks").glob("*/*/manifest.json"))) == 3
    import json

    manifest = json.loads((out / "leaderboard.json").read_text())
    assert manifest["stage"] == "defend" and manifest["models"][jpeg]["fr"]["defence"]["params"]["quality"] == 40
    md_text = (out / "leaderboard.md").read_text()
    assert "adaptive" in md_text and "non-adaptive" in md_text
    first = (out / "leaderboard.csv").read_text()
    again = run_leaderboard(cfg, progress=False, models=(sface, md))  # resumes: attacks are not redone
    assert (out / "leaderboard.csv").read_text() == first and len(again["rows"]) == 7
    # raw outputs: each cell's metrics.json + per_probe.csv re-render the leaderboard byte for byte
    from benchmark.defences.raw import read_per_probe
    from benchmark.report.leaderboard import rerender

    rerender(out, tmp_path / "again")
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.html"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    cells = json.loads((out / "leaderboard.json").read_text())["cells"]
    source: dict[str, str] = {}
    for cell in cells:
        probes = read_per_probe(out / cell["raw"] / "per_probe.csv")
        pos = sum(p["positive_pairs"] for p in probes)
        assert len(probes) == cell["probes"] and pos == cell["positive_pairs"]
        assert sum(p["rank1_hits"] for p in probes) / pos == pytest.approx(cell["rank1"], abs=1e-9)
        for p in probes:  # the data set's key of the clean image, the same in every cell
            assert source.setdefault(p["key"], p["source"]) == p["source"] and p["source"].startswith(p["identity"])
        # PSNR/SSIM against the attack's base image: for the adversarial attack only (masks and clean: none)
        adversarial = cell["attack"] == "adv"
        assert all((p["psnr"] is not None and p["psnr"] > 20 and 0 < p["ssim"] <= 1) == adversarial for p in probes)
    # the data set is recorded by name and listing hash, never by this machine's path
    text = (out / "leaderboard.json").read_text()
    assert str(lfw_dir) not in text and manifest["data"]["spec"] == "folder:$DATA/images"
    assert len(manifest["data"]["listing_sha256"]) == 64


def test_config_adaptive_lists_select_defences():
    """``adaptive: [names]`` runs an attack adaptively only through those defences; masks never adaptively."""
    from benchmark.workflows.defend import LeaderboardConfig

    cfg = LeaderboardConfig.from_dict(
        {
            "data": "folder:x",
            "out": "o",
            "attacks": [
                "dm",
                {"name": "a", "method": "advnoise-dm", "adaptive": ["jpeg", "median-blur[apply_to=both,k=5]"]},
                {"name": "b", "method": "mf2m", "adaptive": False},
                {"name": "c", "method": "i-fgsm"},
            ],
        }
    )
    jpeg, med3, med5 = load_defence("jpeg:quality=50"), load_defence("median-blur:k=3"), load_defence("median-blur:k=5")
    dm, a, b, c = cfg.attacks
    assert [a.adaptive_for(x) for x in (jpeg, med3, med5)] == [True, False, True]
    assert not dm.adaptive_for(jpeg) and not b.adaptive_for(jpeg) and c.adaptive_for(med3)
    with pytest.raises(ValueError, match="adaptive must be"):
        LeaderboardConfig.from_dict({"data": "d", "out": "o", "attacks": [{"method": "mf2m", "adaptive": "jpeg"}]})


# --------------------------------------------------------------------------------------------------
# Faced-mask-aware detector retraining
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_mask_detector_with_faced_masks_tiny(shared_dir, lfw_dir, tmp_path, capsys):
    """`mf2m train-mask-detector --with-faced-masks` on a tiny real subset (12 facemask photos per class, 16 LFW
    images, 1 epoch from the shipped detector): DM positives are made from other identities' faces, LFW is split
    by identity, both models are evaluated on the same held-out sets, and the defence loads the weights."""
    import json

    from benchmark.cli import main
    from benchmark.models.mask_detector import load_weights
    from benchmark.workflows.mask_training import faced_mask_faces

    facemask = shared_dir / "data" / "facemask"
    if not (facemask / "with_mask").is_dir():
        pytest.skip("../shared/data/facemask is not present")
    out = tmp_path / "w" / "faced.pt"
    argv = [
        "train-mask-detector",
        "--with-faced-masks",
        "--data",
        str(facemask),
        "--lfw",
        str(lfw_dir),
        "--out",
        str(out),
        "--limit-per-class",
        "12",
        "--faced-limit",
        "16",
        "--base-per-class",
        "0",
        "--epochs",
        "1",
        "--held-out",
        "0.25",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "LFW held-out identities, DM faced mask" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["FACED_CARD.md", "faced.json", "faced.pt"]
    report = json.loads(out.with_suffix(".json").read_text())
    train, held = report["lfw_paths"]["train"], report["lfw_paths"]["held_out"]
    person = lambda p: Path(p).parent.name  # noqa: E731
    assert train and held and not {person(p) for p in train} & {person(p) for p in held}
    assert all(person(face) != person(tpl) for face, tpl in report["lfw_templates"].items())
    assert len(train) + len(held) + len(report["skipped"]) == 16
    m = report["metrics"]
    assert set(m["initial"]) == set(m["retrained"]) and len(m["retrained"]) == 5
    for name, r in m["retrained"].items():
        assert r["n"] == m["initial"][name]["n"] > 0 and 0 <= r["accuracy"] <= 1
    # the DM faces really wear a faced mask: lower face changed, upper face untouched
    fs = faced_mask_faces(lfw_dir, 16, 0, progress=False)
    diff = np.abs(fs.faced.astype(int) - fs.bare.astype(int)).sum(axis=3)
    assert (diff[:, 90:100].mean(axis=(1, 2)) > 5).all() and (diff[:, :30] == 0).all()
    # fine-tuned from the shipped detector: changed weights, loadable by the defence
    new, _ = load_weights(out)
    from benchmark.models.mask_detector import DEFAULT_WEIGHTS

    old, _ = load_weights(DEFAULT_WEIGHTS)
    assert any(
        not np.allclose(a.numpy(), b.numpy()) for a, b in zip(new.state_dict().values(), old.state_dict().values())
    )
    d = load_defence(f"faced-mask-aware-detector:weights={out}")
    _, md = defend(d, None, None, device="cpu")
    assert md.p_masked(fs.faced[:2]).shape == (2,)
    assert "## Held-out accuracy" in (out.parent / "FACED_CARD.md").read_text()
