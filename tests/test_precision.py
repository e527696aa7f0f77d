"""``--precision`` for embed, lfw and attack (issue 12): resolution, clear errors, manifests, and bf16
features close to float32 on real faces. Written to pass on CPUs with and without bf16 units (bf16 is
emulated, and slow, on the latter), so the bf16 runs here are a handful of images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.device import cpu_bf16_units
from benchmark.precision import ATTACK_AUTO_REDUCED, attack_plan, plan, reduce_module


def _lfw_faces(lfw_dir: Path, n: int, skip: int = 0) -> tuple[list[str], np.ndarray]:
    """Aligned 112×112 crops of the first image of ``n`` LFW people (after ``skip``)."""
    from benchmark.data.synthetic import lfw_crop

    people = sorted((lfw_dir / "images").iterdir())[skip : skip + n]
    return [p.name for p in people], np.stack([lfw_crop(sorted(p.glob("*.jpg"))[0]) for p in people])


def test_auto_follows_the_cpu_units():
    """auto → bf16 exactly where /proc/cpuinfo names bf16 units (fp32 on this project's Zen 3 CI box)."""
    p = plan("auto", "cpu")
    if cpu_bf16_units():
        assert (p.precision, p.memory_format) == ("bf16", "channels_last")
    else:
        assert p.precision == "fp32" and "no bf16 units" in p.reason
    assert plan("fp32", "cpu").describe()["precision"] == "fp32"
    forced = plan("bf16", "cpu")
    assert forced.precision == "bf16" and forced.reduced
    assert ("emulated" in forced.reason) == (not cpu_bf16_units())


def test_attack_auto_stays_float32_until_parity_is_shown():
    p = attack_plan("auto", "cpu")
    if "bf16" not in ATTACK_AUTO_REDUCED:
        assert p.precision == "fp32"
        assert "parity" in p.reason or "no bf16 units" in p.reason
    assert attack_plan("bf16", "cpu").precision == "bf16"  # an explicit choice is kept


def test_fp16_on_cpu_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        plan("fp16", "cpu")
    with pytest.raises(ValueError, match="--precision must be one of"):
        plan("half", "cpu")


@pytest.mark.parametrize(
    "command",
    [
        ["embed", "--data", "folder:.", "--model", "sface", "--out", "o"],
        ["attack", "--method", "advnoise-dm", "--probes", ".", "--templates", ".", "--out", "o"],
    ],
)
def test_cli_fp16_on_cpu_says_why(command, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *command, "--device", "cpu", "--precision", "fp16"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 1
    assert "fp16 needs a CUDA device" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_reduced_module_keeps_float32_interface_and_gradients():
    """A bf16 copy takes float32, returns float32, passes float32 gradients to the input, and leaves the
    original module in float32; the mask detector's antialiased resize (no bf16 kernel) runs in float32."""
    from benchmark.models.mask_detector import build_masknet

    torch.manual_seed(0)
    md = build_masknet().eval()
    p = plan("bf16", "cpu")
    low = reduce_module(md, p)
    x = torch.rand(2, 3, 112, 112, requires_grad=True)
    y = low(x)
    assert y.dtype == torch.float32 and next(md.parameters()).dtype == torch.float32
    (g,) = torch.autograd.grad(y[:, 1].sum(), x)
    assert g.dtype == torch.float32
    xr = x.detach().requires_grad_(True)
    (g32,) = torch.autograd.grad(md(xr)[:, 1].sum(), xr)
    assert torch.allclose(y, md(x).detach(), atol=0.05)
    assert torch.nn.functional.cosine_similarity(g.flatten(), g32.flatten(), dim=0) > 0.95


def test_bf16_sface_features_match_float32_on_lfw_faces(lfw_dir):
    """Real faces (needs ../shared LFW): every bf16 feature has cosine ≥ 0.999 to float32's, and bf16
    did run (the features are not bit-identical)."""
    from benchmark.embed.runtime import Forward
    from benchmark.models.registry import create

    rec = create("sface")
    _, faces = _lfw_faces(lfw_dir, 6)
    f32 = Forward(rec, device="cpu", precision="fp32")
    b16 = Forward(rec, device="cpu", precision="bf16")
    assert (f32.runtime, b16.runtime) == ("torch-fp32", "torch-bf16")
    a = f32.embed_tensor(torch.from_numpy(faces))
    b = b16.embed_tensor(torch.from_numpy(faces))
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.999, cos
    assert np.abs(a - b).max() > 1e-6


def test_embed_manifest_records_precision_and_refuses_mixed_resume(lfw_dir, tmp_path):
    from benchmark.data.images import write_png
    from benchmark.embed.engine import EmbedConfig, run_embed

    names, faces = _lfw_faces(lfw_dir, 3, skip=10)
    for name, face in zip(names, faces):
        write_png(tmp_path / "faces" / name / "0.png", face)
    data = f"folder:{tmp_path / 'faces'}?aligned=1"

    def cfg(out: str, precision: str) -> EmbedConfig:
        return EmbedConfig(
            data=data,
            model="sface",
            out=str(tmp_path / out),
            batch_size=4,
            workers=0,
            device="cpu",
            precision=precision,
            progress=False,
        )

    m16 = run_embed(cfg("b", "bf16"))
    assert m16["precision"]["requested"] == "bf16" and m16["precision"]["precision"] == "bf16"
    assert m16["runtime"]["runtime"] == "torch-bf16" and m16["config"]["precision"] == "bf16"
    m_auto = run_embed(cfg("a", "auto"))
    assert m_auto["precision"]["requested"] == "auto"
    assert m_auto["precision"]["precision"] == ("bf16" if cpu_bf16_units() else "fp32")
    assert m_auto["precision"]["reason"].startswith("auto:")
    written = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert written["precision"] == m16["precision"]
    with pytest.raises(ValueError, match="other settings"):
        run_embed(cfg("b", "fp32"))


def test_native_runtime_falls_back_to_float32_and_says_so():
    """A recognizer without a torch module (like dlib) runs float32 whatever was asked, with the reason."""
    from attack_models import TinyRecognizer

    from benchmark.embed.runtime import Forward

    class NativeOnly(TinyRecognizer):
        def torch_module(self, device: str = "cpu"):
            raise NotImplementedError("native only")

    fw = Forward(NativeOnly(), device="cpu", precision="bf16")
    assert fw.runtime == "native" and fw.precision.precision == "fp32"
    assert "no torch module" in fw.precision.reason and fw.precision.requested == "bf16"


def test_attack_in_bf16_keeps_float32_updates_and_records_precision(tmp_path):
    """bf16 forward+backward: the attacked images are float32, inside the ε-ball, unchanged outside the
    region, close to the float32 attack; the attack manifest records what ran."""
    import importlib.util

    from attack_models import TinyMaskDetector, TinyRecognizer

    from attacks import create
    from attacks.pipeline import AttackJob, run_attack
    from benchmark.data.images import read_image, write_png

    fr, md = TinyRecognizer().torch_module(), TinyMaskDetector().torch_module()
    images = Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0]) / "data" / "images"
    face = read_image(images / "Tom_Hanks_54745.png")
    x = torch.from_numpy(face.copy()).permute(2, 0, 1)[None].float().div(255).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(2)
    r = torch.zeros(2, 1, 112, 112)
    r[:, :, 60:100, 25:90] = 1
    ref = fr(torch.rand(2, 3, 112, 112)).detach()
    out = {}
    for prec in ("fp32", "bf16"):
        attack = create("advnoise-dm", fr, md, steps=4, step=0.004, eps=0.016, precision=prec)
        adv = attack(x, r, ref)
        assert adv.dtype == torch.float32
        assert torch.equal(adv * (1 - r), x * (1 - r))
        assert (adv - x).abs().max() <= 0.016 + 1e-6
        assert attack.config()["precision"]["precision"] == prec
        out[prec] = adv
    # the sign steps agree on most pixels of the region
    agree = (torch.sign(out["bf16"] - x) == torch.sign(out["fp32"] - x))[r.expand_as(x) > 0].float().mean()
    assert agree > 0.8, agree

    write_png(tmp_path / "probes" / "hanks" / "hanks_1.png", face)
    job = AttackJob(
        method="i-fgsm", probes=str(tmp_path / "probes"), out=str(tmp_path / "o"), params={"steps": 2}, precision="bf16"
    )
    summary = run_attack(job, TinyRecognizer(), TinyMaskDetector(), progress=False)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert summary["precision"]["precision"] == "bf16"
    assert manifest["summary"]["precision"]["form"].startswith("bf16 weights+input")
    assert manifest["config"]["precision"] == "bf16" and manifest["config"]["precision_resolved"] == "bf16"
    with pytest.raises(ValueError, match="other settings"):
        run_attack(
            AttackJob(
                method="i-fgsm",
                probes=str(tmp_path / "probes"),
                out=str(tmp_path / "o"),
                params={"steps": 2},
                precision="fp32",
            ),
            TinyRecognizer(),
            TinyMaskDetector(),
            progress=False,
        )
