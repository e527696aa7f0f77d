"""Mask detectors: the committed default (MaskNet) and the RetinaNet checkpoint loader.

Tests marked ``shared`` need ../shared/data/facemask (they skip without it): the committed weights are
checked on files the training report lists as held out, and a tiny training run goes through the CLI.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.models.base import ModelUnavailable
from benchmark.models.mask_detector import DEFAULT_WEIGHTS, CNNMaskDetector, load_weights
from benchmark.models.retinanet_mask import RetinaNetMaskDetector, build_retinanet, load_retinanet_state


@pytest.fixture(scope="module")
def facemask_dir(shared_dir: Path) -> Path:
    """../shared/data/facemask (with_mask/, without_mask/); skips when absent."""
    path = shared_dir / "data" / "facemask"
    if not (path / "with_mask").is_dir():
        pytest.skip("../shared/data/facemask is not present")
    return path


@pytest.fixture(scope="module")
def detector() -> CNNMaskDetector:
    return CNNMaskDetector(device="cpu")


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- default


def test_committed_weights_are_small_and_carry_a_card():
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.stat().st_size <= 10 * 1024 * 1024
    card = (DEFAULT_WEIGHTS.parent / "MASK_DETECTOR_CARD.md").read_text()
    assert "held-out" in card and "train-mask-detector" in card
    _, meta = load_weights(DEFAULT_WEIGHTS)
    assert meta["metrics"]["held_out"]["accuracy"] >= 0.95


def test_p_masked_shape_range_and_matches_torch_module(detector):
    faces = _faces(5)
    p = detector.p_masked(faces)
    assert p.shape == (5,) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))
    module = detector.torch_module("cpu")
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = torch.softmax(module(x), 1)[:, 1].numpy()
    np.testing.assert_allclose(p, ref, atol=1e-5)
    assert detector.p_masked(faces[0]).shape == (1,)  # a single face is accepted too


def test_torch_module_is_differentiable(detector):
    module = detector.torch_module("cpu")
    x = torch.from_numpy(_faces(4, 1)).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(module(x), torch.zeros(4, dtype=torch.long))  # Eq. 5: y = 0
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # every sample gets its own gradient (no batch coupling in eval mode)
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_bad_weights_files_fail_clearly(tmp_path):
    with pytest.raises(ModelUnavailable, match="train-mask-detector"):
        CNNMaskDetector(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        CNNMaskDetector(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ValueError, match="not an mf2m mask-detector file"):
        CNNMaskDetector(other)


@pytest.mark.shared
def test_committed_weights_accuracy_on_held_out_sample(detector, facemask_dir, tmp_path):
    """≥ 0.9 accuracy on 80 files the training report lists as held out (needs ../shared)."""
    from benchmark.workflows.mask_training import align_dataset, classification_metrics

    report = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    held = report["held_out_paths"]
    pick = [held[i] for i in np.linspace(0, len(held) - 1, 80).round().astype(int)]
    items = [(facemask_dir / rel, 1 if rel.startswith("with_mask") else 0) for rel in pick]
    aligned = align_dataset(items, facemask_dir, tmp_path, progress=False)
    assert len(aligned.labels) == 80 and not aligned.skipped  # held-out files were all aligned before
    metrics = classification_metrics(detector.p_masked(aligned.faces), aligned.labels)
    assert set(aligned.labels.tolist()) == {0, 1}
    assert metrics["accuracy"] >= 0.9, metrics


# ---------------------------------------------------------------------------------------------- training


def _tiny_dataset(src: Path, dst: Path, per_class: int = 32) -> Path:
    for cls in ("with_mask", "without_mask"):
        files = sorted((src / cls).glob("*.jpg"))
        (dst / cls).mkdir(parents=True)
        for f in files[:: max(1, len(files) // per_class)][:per_class]:
            shutil.copy(f, dst / cls / f.name)
    return dst


@pytest.mark.shared
def test_tiny_training_run_through_cli(facemask_dir, tmp_path, capsys):
    """1 epoch on 64 images via `mf2m train-mask-detector`: weights + report + card, deterministic (needs ../shared)."""
    from benchmark.cli import main

    data = _tiny_dataset(facemask_dir, tmp_path / "data")
    (data / "without_mask" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # counted, not fatal
    out = tmp_path / "out" / "tiny.pt"
    argv = [
        "train-mask-detector",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--seed",
        "3",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    card = (out.parent / "TINY_CARD.md").read_text()
    report = json.loads(out.with_suffix(".json").read_text())
    assert sorted(p.name for p in out.parent.iterdir()) == ["TINY_CARD.md", "tiny.json", "tiny.pt"]  # no temp files
    assert report["manifest"]["stage"] == "train-mask-detector"
    assert any(s["path"].endswith("broken.jpg") for s in report["skipped"])
    n_aligned = report["split"]["train"] + report["split"]["held_out"]
    assert n_aligned + len(report["skipped"]) == 65
    assert abs(report["split"]["held_out"] - 0.2 * n_aligned) <= 1
    assert "## Results" in card and "held-out 20%" in card
    det = CNNMaskDetector(out, device="cpu")
    assert det.p_masked(_faces(3)).shape == (3,)
    # same seed → identical weights (alignment comes from the cache the first run wrote)
    first = {k: v.clone() for k, v in det.torch_module().state_dict().items()}
    out2 = tmp_path / "out2" / "tiny.pt"
    assert main(argv[:4] + [str(out2)] + argv[5:]) == 0
    second = CNNMaskDetector(out2, device="cpu").torch_module().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.shared
def test_failed_run_leaves_existing_weights_untouched(facemask_dir, tmp_path):
    """A run that cannot train (one class has a single image) errors cleanly and writes nothing (needs ../shared)."""
    from benchmark.cli import main

    data = tmp_path / "data"
    (data / "with_mask").mkdir(parents=True)
    (data / "without_mask").mkdir()
    shutil.copy(sorted((facemask_dir / "with_mask").glob("*.jpg"))[0], data / "with_mask")
    for f in sorted((facemask_dir / "without_mask").glob("*.jpg"))[:3]:
        shutil.copy(f, data / "without_mask")
    out = tmp_path / "m.pt"
    out.write_bytes(b"previous")
    assert (
        main(
            [
                "train-mask-detector",
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "m.pt"]


def test_missing_class_folder_is_a_clear_error(tmp_path):
    from benchmark.cli import main

    (tmp_path / "with_mask").mkdir()
    with pytest.raises(FileNotFoundError, match="without_mask"):
        from benchmark.workflows.mask_training import list_dataset

        list_dataset(tmp_path)
    assert main(["train-mask-detector", "--data", str(tmp_path), "--out", str(tmp_path / "x.pt")]) == 1


# ---------------------------------------------------------------------------------------------- RetinaNet


@pytest.fixture(scope="module")
def retina_ckpt(tmp_path_factory):
    """A checkpoint saved from a randomly initialised model in the simpletask1/yhenon training layout."""
    torch.manual_seed(0)
    net = build_retinanet()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel prefix
    path = tmp_path_factory.mktemp("retina") / "csv_retinanet50_random.pt"
    torch.save(
        {
            "last_epoch": 1,
            "model_state_dict": state,
            "optimizer_state_dict": {},
            "loss": collections.deque([0.5, 0.4], maxlen=500),
        },
        path,
    )
    return path, state


def test_retinanet_layout_has_yhenon_key_names(retina_ckpt):
    _, state = retina_ckpt
    expected_shapes = {  # from yhenon/pytorch-retinanet retinanet/model.py with num_classes=2
        "module.conv1.weight": (64, 3, 7, 7),
        "module.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "module.layer3.5.bn3.running_var": (1024,),
        "module.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "module.fpn.P3_1.weight": (256, 512, 1, 1),
        "module.fpn.P5_1.weight": (256, 2048, 1, 1),
        "module.fpn.P6.weight": (256, 2048, 3, 3),
        "module.fpn.P7_2.weight": (256, 256, 3, 3),
        "module.regressionModel.conv4.weight": (256, 256, 3, 3),
        "module.regressionModel.output.weight": (36, 256, 3, 3),
        "module.classificationModel.output.weight": (18, 256, 3, 3),
        "module.classificationModel.output.bias": (18,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("module.anchors", "module.focalLoss", "module.fpn.P7_1")) for k in state)


def test_retinanet_checkpoint_loads_and_scores(retina_ckpt):
    path, state = retina_ckpt
    det = RetinaNetMaskDetector(path, device="cpu", min_side=96)
    loaded = det.torch_module("cpu").net.state_dict()
    assert torch.equal(loaded["fpn.P6.weight"], state["module.fpn.P6.weight"])
    p = det.p_masked(_faces(2))
    assert p.shape == (2,) and np.all((p >= 0) & (p <= 1))
    x = torch.from_numpy(_faces(1)).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    torch.nn.functional.cross_entropy(det.torch_module()(x), torch.zeros(1, dtype=torch.long)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert len(det.weights_hash()) == 64


def test_retinanet_wrong_layouts_fail_clearly(retina_ckpt, tmp_path):
    _, state = retina_ckpt
    broken = dict(state)
    del broken["module.fpn.P6.weight"]
    broken["module.fpn.P6_extra.weight"] = torch.zeros(1)
    p1 = tmp_path / "missing.pt"
    torch.save({"model_state_dict": broken}, p1)
    with pytest.raises(ValueError, match=r"missing\.pt.*missing keys: fpn\.P6\.weight.*unexpected keys: fpn\.P6_extra"):
        load_retinanet_state(p1)
    coco = build_retinanet(num_classes=80)  # a COCO RetinaNet is not a face-mask detector
    p2 = tmp_path / "coco.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in coco.state_dict().items()}}, p2)
    with pytest.raises(ValueError, match=r"wrong shapes: classificationModel\.output"):
        load_retinanet_state(p2)
    with pytest.raises(ValueError, match="missing keys"):
        load_retinanet_state(p1.parent.parent / p1.parent.name / "missing.pt", depth=101)
    p3 = tmp_path / "code.pt"
    torch.save({"model_state_dict": state, "hook": print}, p3)  # a pickled callable is never run
    with pytest.raises(ValueError, match="refusing to load builtins.print.*allow_pickle=True"):
        load_retinanet_state(p3)
    with pytest.raises(ModelUnavailable, match="no checkpoint given"):
        RetinaNetMaskDetector(None)
    with pytest.raises(ModelUnavailable):
        RetinaNetMaskDetector(tmp_path / "absent.pt")


def test_registry_entries():
    from benchmark.models import registry

    names = {s.name: s for s in registry.list_models("mask-detector")}
    assert names["mf2m-maskdet"].module == "benchmark.models.mask_detector"
    assert names["retinanet-facemask"].module == "benchmark.models.retinanet_mask"
    assert registry.status("mf2m-maskdet")[0] is True
    ok, why = registry.status("retinanet-facemask")
    assert not ok and "csv_retinanet50_140epochs.pt" in why
    det = registry.create("mf2m-maskdet", device="cpu")
    assert isinstance(det, CNNMaskDetector) and det.differentiable
    with pytest.raises(ModelUnavailable):
        registry.create("retinanet-facemask")
