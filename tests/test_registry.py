"""Model registry, ``mf2m models`` and the arcface_torch IResNet layout / loading / error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmark.models import registry  # noqa: E402
from benchmark.models.base import ModelUnavailable, Recognizer  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_defaults_are_registered_and_available():
    names = {s.name: s for s in registry.list_models()}
    for name, kind in [
        ("sface", "recognizer"),
        ("dlib", "recognizer"),
        ("dlib68", "landmarker"),
        ("dlib-hog", "detector"),
        ("yunet", "detector"),
        ("iresnet50", "recognizer"),
        ("arcface-onnx:", "recognizer"),
        ("mf2m-maskdet", "mask-detector"),
    ]:
        assert names[name].kind == kind
    for name in ("sface", "dlib", "dlib68", "yunet"):
        ok, reason = registry.status(name)
        assert ok, f"{name}: {reason}"
    assert registry.provider_errors() == {}
    assert [s.kind for s in registry.list_models()] == sorted(
        (s.kind for s in registry.list_models()), key=registry.KINDS.index
    )


def test_create_packaged_models():
    rec = registry.create("sface", device="cpu", batch_size=8)
    assert isinstance(rec, Recognizer) and rec.dim == 128 and rec.differentiable and rec.batch_size == 8
    assert rec.identity()["sha256"] == "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
    dlib_rec = registry.create("dlib", device="cpu", chip="landmarks")
    assert dlib_rec.dim == 128 and dlib_rec.chip == "landmarks" and not dlib_rec.differentiable


def test_unknown_names_and_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown model 'sfac'.*Did you mean sface"):
        registry.create("sfac")
    with pytest.raises(ValueError, match="does not take colour"):
        registry.create("sface", colour="BGR")
    with pytest.raises(ModelUnavailable, match="needs user weights .the name arcface-onnx:PATH"):
        registry.create("arcface-onnx:")
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.list_models("nope")


def test_missing_user_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("MF2M_WEIGHTS_IRESNET50", raising=False)
    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    ok, reason = registry.status("iresnet50")
    assert not ok and "--weights PATH" in reason and "MF2M_WEIGHTS_IRESNET50" in reason and "arcface_torch" in reason
    with pytest.raises(ModelUnavailable, match="needs user weights"):
        registry.create("iresnet50")
    with pytest.raises(ModelUnavailable, match=r"weights file from --weights not found: .*nothere\.pth"):
        registry.create("iresnet50", weights=tmp_path / "nothere.pth")
    monkeypatch.setenv("MF2M_WEIGHTS_IRESNET50", str(tmp_path / "env.pth"))
    ok, reason = registry.status("iresnet50")
    assert not ok and "$MF2M_WEIGHTS_IRESNET50 not found" in reason


def test_register_decorator_and_providers(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", registry.MODELS.copy())

    @registry.register(
        "toy-detector",
        kind="detector",
        description="toy",
        check=lambda: (False, "no toy here."),
        how_to_get="Build a toy.",
    )
    class Toy:
        def __init__(self, threshold: float = 0.5):
            self.threshold = threshold

    assert registry.status("toy-detector") == (False, "no toy here. Build a toy.")
    toy = registry.create("toy-detector", threshold=0.7, device="cuda")  # device dropped: Toy takes none
    assert toy.threshold == 0.7
    registry.register("toy-detector", kind="detector")(dict)  # second registration ignored
    assert registry.get_spec("toy-detector")[0].factory is Toy
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.register("x", kind="gadget")


def test_broken_provider_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(registry, "PROVIDERS", list(registry.PROVIDERS))
    monkeypatch.setattr(registry, "_PROVIDER_ERRORS", {})
    monkeypatch.setattr(registry, "_LOADED", False)
    registry.add_provider("benchmark.models.no_such_module_here")
    names = {s.name for s in registry.list_models()}
    assert "sface" in names
    assert "benchmark.models.no_such_module_here" in registry.provider_errors()


def test_models_command_lists_everything(capsys, tmp_path, monkeypatch):
    from benchmark.cli import main

    monkeypatch.delenv(registry.MODELS_DIR_ENV, raising=False)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "available" in lines["sface"] and "available" in lines["dlib"] and "available" in lines["dlib68"]
    assert "missing" in lines["iresnet50"] and "--weights" in lines["iresnet50"]
    assert main(["models", "--json", "--kind", "recognizer"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} == {"recognizer"}
    assert next(r for r in rows if r["name"] == "sface")["differentiable"] is True
    # weights found in --models-dir make a user model available
    save_random_iresnet(tmp_path / "iresnet18.pth")
    assert main(["models", "--kind", "recognizer", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "available" in next(line for line in out.splitlines() if line.startswith("iresnet18 "))


# --------------------------------------------------------------------------------------------------
# IResNet: arcface_torch layout
# --------------------------------------------------------------------------------------------------

ARCFACE_TORCH_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def arcface_torch_layout(layers: tuple[int, int, int, int], num_features: int = 512) -> dict[str, tuple]:
    """Key → shape of arcface_torch's ``IResNet`` state dict, written from its public ``iresnet.py``:
    conv1/bn1/prelu, layer1-4 of IBasicBlock(bn1, conv1 3×3, bn2, prelu, conv2 3×3 stride, bn3,
    downsample.0 1×1 conv + downsample.1 BN on block 0), bn2, fc (512·7·7 → features), features (BN1d)."""
    keys = {"conv1.weight": (64, 3, 3, 3), **_bn("bn1", 64), "prelu.weight": (64,)}
    inplanes = 64
    for k, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), 1):
        for i in range(blocks):
            p = f"layer{k}.{i}"
            cin = inplanes if i == 0 else planes
            keys.update(
                {
                    **_bn(f"{p}.bn1", cin),
                    f"{p}.conv1.weight": (planes, cin, 3, 3),
                    **_bn(f"{p}.bn2", planes),
                    f"{p}.prelu.weight": (planes,),
                    f"{p}.conv2.weight": (planes, planes, 3, 3),
                    **_bn(f"{p}.bn3", planes),
                }
            )
            if i == 0:
                keys.update({f"{p}.downsample.0.weight": (planes, cin, 1, 1), **_bn(f"{p}.downsample.1", planes)})
        inplanes = planes
    keys.update(
        {
            **_bn("bn2", 512),
            "fc.weight": (num_features, 512 * 49),
            "fc.bias": (num_features,),
            **_bn("features", num_features),
        }
    )
    return keys


@pytest.mark.parametrize("arch", list(ARCFACE_TORCH_LAYERS))
def test_iresnet_state_dict_matches_arcface_torch_layout(arch):
    from benchmark.models.iresnet import build_iresnet

    with torch.device("meta"):  # shapes only: r200 would take ~260 MB
        model = build_iresnet(arch)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == arcface_torch_layout(ARCFACE_TORCH_LAYERS[arch])


def random_arcface_state(arch: str = "r18", seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict in arcface_torch's layout with random values (BN statistics included)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in arcface_torch_layout(ARCFACE_TORCH_LAYERS[arch]).items():
        if key.endswith("num_batches_tracked"):
            t = torch.tensor(100)
        elif key.endswith("running_var") or key.endswith(".weight") and len(shape) == 1 and "prelu" not in key:
            t = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("prelu.weight"):
            t = torch.rand(shape, generator=gen) * 0.25
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            t = torch.randn(shape, generator=gen) / np.sqrt(fan_in)
        state[prefix + key] = t
    return state


def save_random_iresnet(path, arch: str = "r18", prefix: str = ""):
    torch.save(random_arcface_state(arch, prefix=prefix), path)
    return path


def reference_forward(state: dict, x: torch.Tensor, layers) -> torch.Tensor:
    """arcface_torch's IResNet forward written directly with torch.nn.functional on the state dict."""
    import torch.nn.functional as F

    def bn(t, p):
        return F.batch_norm(
            t,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            False,
            0.0,
            1e-5,
        )

    x = F.prelu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"), state["prelu.weight"])
    for k, blocks in enumerate(layers, 1):
        for i in range(blocks):
            p = f"layer{k}.{i}"
            stride = 2 if i == 0 else 1
            out = F.conv2d(bn(x, f"{p}.bn1"), state[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(out, f"{p}.bn2"), state[f"{p}.prelu.weight"])
            out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn3")
            short = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=2), f"{p}.downsample.1") if i == 0 else x
            x = out + short
    x = torch.flatten(bn(x, "bn2"), 1)
    return bn(F.linear(x, state["fc.weight"], state["fc.bias"]), "features")


def test_iresnet_loads_arcface_torch_file_and_matches_reference(tmp_path):
    state = random_arcface_state("r18", seed=3)
    path = tmp_path / "backbone.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)  # DataParallel-style prefix
    rec = registry.create("iresnet:" + str(path), device="cpu", batch_size=3)
    assert rec.arch == "r18" and rec.dim == 512 and rec.name == "iresnet18"
    assert rec.preprocessing.normalisation == "(x/255-0.5)/0.5" and rec.preprocessing.color == "RGB"
    faces = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    feats = rec.embed(faces)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = torch.nn.functional.normalize(reference_forward(state, (x - 0.5) / 0.5, (2, 2, 2, 2)), dim=1).numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-4)
    # white-box module: same numbers and gradients to the input
    module = rec.torch_module("cpu")
    xg = x.clone().requires_grad_(True)
    out = module(xg)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-4)
    out[:, 0].sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    # fp16 flag: autocast only on CUDA; on CPU results are unchanged
    rec16 = registry.create("iresnet18", weights=path, fp16=True, device="cpu")
    np.testing.assert_allclose(rec16.embed(faces), feats, atol=1e-4)


def test_iresnet_round_trip_via_env_and_models_dir(tmp_path, monkeypatch):
    from benchmark.models.iresnet import build_iresnet

    model = build_iresnet("r18").eval()
    torch.save(model.state_dict(), tmp_path / "iresnet18.pth")
    monkeypatch.setenv(registry.MODELS_DIR_ENV, str(tmp_path))
    rec = registry.create("iresnet18", device="cpu")
    assert rec.path == tmp_path / "iresnet18.pth"
    monkeypatch.delenv(registry.MODELS_DIR_ENV)
    monkeypatch.setenv("MF2M_WEIGHTS_IRESNET18", str(tmp_path / "iresnet18.pth"))
    rec2 = registry.create("iresnet18", device="cpu")
    faces = np.full((1, 112, 112, 3), 128, np.uint8)
    np.testing.assert_allclose(rec.embed(faces), rec2.embed(faces), atol=1e-6)


def test_iresnet_wrong_depth_and_bad_files(tmp_path):
    path = save_random_iresnet(tmp_path / "r18.pth")
    with pytest.raises(
        ValueError,
        match=r"IResNet-r34 expects blocks per layer \(3, 4, 6, 3\), the file has "
        r"\(2, 2, 2, 2\) \(that is r18\)",
    ):
        registry.create("iresnet34", weights=path, device="cpu")
    state = random_arcface_state("r18")
    del state["layer2.0.bn1.weight"]
    state["fc.weight"] = torch.zeros(512, 100)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(
        ValueError,
        match=r"broken\.pth: not an arcface_torch IResNet-r18 state dict: missing keys "
        r"\['layer2\.0\.bn1\.weight'\].*fc\.weight: expected \(512, 25088\)",
    ):
        registry.create("iresnet18", weights=tmp_path / "broken.pth", device="cpu")
    (tmp_path / "garbage.pth").write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pth: not a readable torch state dict"):
        registry.create("iresnet50", weights=tmp_path / "garbage.pth", device="cpu")
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"blocks per layer \(1, 0, 0, 0\) match no IResNet depth"):
        registry.create("iresnet:" + str(tmp_path / "odd.pth"), device="cpu")
