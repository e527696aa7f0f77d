"""The plug-in registry: an attack defined outside the package, installed as an entry point, runs through
``mf2m attack --method NAME`` like a built-in one and is accepted by ``mf2m run`` configs.

The "installed package" is a real distribution on ``sys.path``: a module plus a ``.dist-info`` folder whose
``entry_points.txt`` declares the attack in the group ``mf2m.attacks`` (what pip writes for a package that
lists it under ``[project.entry-points."mf2m.attacks"]``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmark.plugins import Registry

ROOT = Path(__file__).resolve().parents[1]

TOY_ATTACK = '''
"""A one-step sign attack written outside mf2m."""
from attacks.base import Attack


class ToySign(Attack):
    name = "toy-sign"
    base = "solid"                       # starts from the solid-mask image
    params = ("eps", "alpha", "seed")

    def __init__(self, fr, md=None, *, eps: float = 0.03, alpha: float = 1.0, seed: int = 0,
                 precision: str = "fp32"):
        super().__init__(fr, md, alpha=alpha, seed=seed, precision=precision)
        self.eps = float(eps)

    def forward(self, images, regions, ref, keys):
        grad, _ = self.gradient(images, ref)
        return self.project(images + self.eps * grad.sign(), images, regions, self.eps)
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding an installed third-party distribution that provides the attack ``toy-sign``."""
    site = tmp_path_factory.mktemp("site")
    (site / "toy_mf2m_attack").mkdir()
    (site / "toy_mf2m_attack" / "__init__.py").write_text(TOY_ATTACK)
    info = site / "toy_mf2m_attack-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-mf2m-attack\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mf2m.attacks]\ntoy-sign = toy_mf2m_attack:ToySign\n")
    return site


def _run(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    """Two real face photos (shipped with insightface): a probe folder root/<identity>/<image>."""
    from benchmark.data.images import read_image, write_png

    images = Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0]) / "data" / "images"
    root = tmp_path_factory.mktemp("probes")
    face = read_image(images / "Tom_Hanks_54745.png")
    write_png(root / "hanks" / "hanks_1.png", face)
    write_png(root / "hanks_mirror" / "mirror_1.png", np.ascontiguousarray(face[:, ::-1]))
    return root


def test_third_party_attack_runs_through_mf2m_attack(plugin_site, probes, tmp_path):
    common = [
        "--probes",
        str(probes),
        "--fr",
        "sface",
        "--md",
        "mf2m-maskdet",
        "--device",
        "cpu",
        "--no-progress",
        "--batch-size",
        "2",
    ]
    res = _run(
        [
            "-m",
            "benchmark.cli",
            "attack",
            "--method",
            "toy-sign",
            "--eps",
            "0.03",
            "--out",
            str(tmp_path / "toy"),
            *common,
        ],
        plugin_site,
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    solid = _run(
        ["-m", "benchmark.cli", "attack", "--method", "solid", "--out", str(tmp_path / "solid"), *common],
        plugin_site,
        tmp_path,
    )
    assert solid.returncode == 0, solid.stderr[-3000:]
    with open(tmp_path / "toy" / "probes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    manifest = json.loads((tmp_path / "toy" / "manifest.json").read_text())
    assert "toy-sign" in json.dumps(manifest)
    from benchmark.data.images import read_image

    changed = 0
    for r in rows:
        toy = read_image(tmp_path / "toy" / "images" / f"{r['key']}.png").astype(int)
        base = read_image(tmp_path / "solid" / "images" / f"{r['key']}.png").astype(int)
        region = read_image(tmp_path / "toy" / "regions" / f"{r['key']}.png") > 0
        region = region if region.ndim == 3 else region[..., None].repeat(3, axis=-1)
        diff = np.abs(toy - base)
        assert diff[~region].max() == 0  # nothing changes outside the mask region
        assert diff[region].max() <= round(0.03 * 255) + 1  # the attack stays inside its ε-ball
        changed += int(diff[region].max() > 0)
    assert changed == len(rows)  # and it did move every probe


def test_third_party_attack_is_listed_and_accepted_by_run_configs(plugin_site, tmp_path):
    code = textwrap.dedent(f"""
        import attacks
        from benchmark.workflows.config import load_config
        assert "toy-sign" in attacks.list_attacks()
        assert "toy-sign" not in attacks.list_attacks(builtin_only=True)
        assert attacks.base_of("toy-sign") == "solid" and attacks.is_adversarial("toy-sign")
        attacks.check_params("toy-sign", {{"eps": 0.01}})
        cfg = load_config({str(ROOT / "configs" / "demo.yaml")!r}, methods=["none", "toy-sign"])
        assert cfg.attack.methods == ["none", "toy-sign"]
        try:
            attacks.check_params("toy-sign", {{"epz": 0.01}})
        except ValueError as exc:
            assert "did you mean 'eps'" in str(exc)
        else:
            raise AssertionError("a misspelt parameter was accepted")
        print("ok")
    """)
    res = _run(["-c", code], plugin_site, tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
    help_text = _run(["-m", "benchmark.cli", "attack", "--help"], plugin_site, tmp_path).stdout
    assert "toy-sign" in help_text


def test_registry_lazy_entries_duplicates_and_unknown_names():
    reg = Registry("widget")
    reg.register("json-dumps", "json:dumps", flavour="text")
    assert reg.names() == ["json-dumps"] and reg.info("json-dumps") == {"flavour": "text"}
    assert reg.load("json-dumps")([1]) == "[1]"

    @reg.register("square", sides=4)
    class Square:
        pass

    assert reg.load("square") is Square and reg.names() == ["json-dumps", "square"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("square", "json:loads")
    with pytest.raises(ValueError, match="did you mean 'square'"):
        reg.entry("sqare")


TOY_MODELS = '''
"""A provider module of another package: importing it registers a recognizer."""
import numpy as np
from benchmark.models.registry import register


@register("toy-rec", kind="recognizer", description="a 4-D colour-mean recognizer (plug-in test)")
class ToyRecognizer:
    name, dim = "toy-rec", 4

    def __init__(self, device="cpu"):
        self.device = device

    def embed(self, faces):
        x = np.asarray(faces, np.float32).mean(axis=(1, 2))
        return np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
'''


def test_third_party_models_come_from_entry_points(tmp_path):
    site = tmp_path / "site"
    (site / "toy_mf2m_models").mkdir(parents=True)
    (site / "toy_mf2m_models" / "__init__.py").write_text(TOY_MODELS)
    info = site / "toy_mf2m_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-mf2m-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mf2m.models]\ntoy = toy_mf2m_models\n")
    code = textwrap.dedent("""
        import numpy as np
        from benchmark.models import registry
        assert "toy-rec" in [s.name for s in registry.list_models("recognizer")]
        model = registry.create("toy-rec", device="cpu")
        assert model.embed(np.zeros((2, 112, 112, 3), np.uint8)).shape == (2, 4)
        print("ok")
    """)
    res = _run(["-c", code], site, tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
    listing = _run(["-m", "benchmark.cli", "models", "--kind", "recognizer"], site, tmp_path)
    assert listing.returncode == 0 and "toy-rec" in listing.stdout, listing.stderr[-2000:]


TOY_DEFENCE = '''
"""A defence written outside mf2m: colour inversion (an exact straight-through gradient)."""
import numpy as np
from benchmark.defences.api import InputTransform


class Invert(InputTransform):
    name = "toy-invert"
    gradient = "exact"

    def __init__(self, amount: int = 255, apply_to: str = "both"):
        super().__init__(apply_to)
        self.amount = int(amount)

    def params(self):
        return {"amount": self.amount, **super().params()}

    def apply(self, faces):
        return (self.amount - np.asarray(faces, dtype=np.int16)).clip(0, 255).astype(np.uint8)

    def surrogate(self, x):
        return (self.amount / 255.0 - x).clamp(0, 1)
'''


def test_third_party_defence_comes_from_the_registry(tmp_path):
    """A defence in another installed distribution (entry-point group ``mf2m.defences``) is listed by the
    defence registry and ``mf2m defend --list``, and ``load_defence("NAME:k=v")`` builds and applies it."""
    site = tmp_path / "site"
    (site / "toy_mf2m_defence").mkdir(parents=True)
    (site / "toy_mf2m_defence" / "__init__.py").write_text(TOY_DEFENCE)
    info = site / "toy_mf2m_defence-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-mf2m-defence\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mf2m.defences]\ntoy-invert = toy_mf2m_defence:Invert\n")
    code = textwrap.dedent("""
        import numpy as np
        from benchmark.defences import DEFENCES
        from benchmark.defences.api import load_defence
        from benchmark.defences.defended import defend
        from benchmark.models.sface import SFaceRecognizer
        assert "toy-invert" in DEFENCES.names() and "toy-invert" not in DEFENCES.names(builtin_only=True)
        assert DEFENCES.entry("toy-invert").origin == "entry point (toy-mf2m-defence)"
        assert DEFENCES.load("toy-invert").__module__ == "toy_mf2m_defence"
        d = load_defence("toy-invert:amount=200,apply_to=recognition")
        assert (d.name, d.kind, d.source) == ("toy-invert", "input-transform", "entry-point:toy-invert"), d
        assert d.params == {"amount": 200, "apply_to": "recognition"}
        faces = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
        sface = SFaceRecognizer(device="cpu")
        rec, md = defend(d, sface, None)
        assert md is None and rec.name == "sface+toy-invert[amount=200,apply_to=recognition]"
        inverted = (200 - faces.astype(np.int16)).clip(0, 255).astype(np.uint8)
        np.testing.assert_allclose(rec.embed(faces), sface.embed(inverted), atol=1e-6)
        assert not np.allclose(rec.embed(faces), sface.embed(faces), atol=1e-3)
        try:
            load_defence("toy-invrt:amount=3")
        except ValueError as exc:
            assert "did you mean 'toy-invert'" in str(exc) and "toy-invert" in str(exc).split("choose from")[1]
        else:
            raise AssertionError("an unknown defence name was accepted")
        print("ok")
    """)
    res = _run(["-c", code], site, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
    listing = _run(["-m", "benchmark.cli", "defend", "--list"], site, tmp_path)
    assert listing.returncode == 0, listing.stderr[-3000:]
    rows = [line.split("\t") for line in listing.stdout.splitlines()]
    assert rows[0] == ["jpeg", "benchmark.defences.reference:JPEG", "built-in"]
    assert rows[-1] == ["toy-invert", "toy_mf2m_defence:Invert", "entry point (toy-mf2m-defence)"]
