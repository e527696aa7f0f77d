"""Packaging and command-line surface: environment.yml mirrors pyproject, every command has --help."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# pip names whose conda/GPU counterpart has another name in environment.yml
CONDA_NAMES = {"torch": "pytorch", "onnxruntime": "onnxruntime-gpu"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_has_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            names |= {_name(d) for d in dep["pip"]}
        else:
            names.add(_name(dep))
    missing = [d for d in project["dependencies"] if CONDA_NAMES.get(_name(d), _name(d)) not in names]
    assert not missing, f"environment.yml lacks {missing}"


def test_python_versions_claimed_are_the_ones_tested():
    """requires-python's lower bound, the classifiers and environment.yml name the versions the suite runs on."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = sorted(
        tuple(map(int, c.rsplit(":: ", 1)[1].split(".")))
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    low = re.fullmatch(r">=\s*(\d+)\.(\d+)", project["requires-python"].strip())
    assert low and listed, (project["requires-python"], project["classifiers"])
    assert (int(low[1]), int(low[2])) == listed[0]
    assert sys.version_info[:2] in listed, f"the suite runs on Python {sys.version_info[:2]}, not claimed in {listed}"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pinned = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert tuple(map(int, pinned.split("=")[1].split(".")[:2])) in listed


def _commands() -> list[str]:
    from benchmark.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_core_commands_exist():
    assert {"search"} <= set(_commands())


@pytest.mark.parametrize("command", [None] + _commands())
def test_every_command_has_help(command):
    argv = [sys.executable, "-m", "benchmark.cli"] + ([command] if command else []) + ["--help"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "usage: mf2m" in out.stdout
    # every option documented: no option line without help text
    for line in out.stdout.splitlines():
        if re.match(r"^\s+--[\w-]+( [A-Z_\[\]., ]+)?$", line):
            idx = out.stdout.splitlines().index(line)
            nxt = out.stdout.splitlines()[idx + 1] if idx + 1 < len(out.stdout.splitlines()) else ""
            assert nxt.startswith(" " * 8), f"option without help in `mf2m {command}`: {line.strip()}"


# dependencies used without an import of their own name: distribution → (module it provides, why)
INDIRECT = {
    "dlib-bin": "dlib",  # the wheel's top-level module is dlib (metadata lists _dlib_pybind11)
    "setuptools": "face_recognition_models",  # its pkg_resources is imported by face_recognition_models
}


def test_every_declared_dependency_is_used():
    """No declared-but-unused dependency: each one's module is imported (or looked up) by the packages."""
    import ast
    from importlib.metadata import packages_distributions

    modules_of: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    used: set[str] = set()
    for path in [*(ROOT / "benchmark").rglob("*.py"), *(ROOT / "attacks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                used |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                used.add(node.module.split(".")[0])
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "find_spec"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                used.add(str(node.args[0].value).split(".")[0])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    unused = []
    for dep in project["dependencies"]:
        name = _name(dep)
        provided = modules_of.get(name, set()) | ({INDIRECT[name]} if name in INDIRECT else set())
        if not provided & used:
            unused.append(name)
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"


def test_demo_config_has_one_source():
    """``configs/demo.yaml`` is a link to the copy inside the package (the one ``mf2m demo`` reads)."""
    from benchmark.workflows.demo import demo_config_path

    link = ROOT / "configs" / "demo.yaml"
    assert link.is_symlink() and link.resolve() == demo_config_path().resolve()
    assert demo_config_path().is_file()


def test_gpu_check_script_runs_every_step_dry(tmp_path):
    """``benchmarks/gpu_check.sh --dry-run``: every step of the GPU check, at a tiny size on the CPU, exits 0
    and writes its results (so a lent GPU's minutes are not spent on a broken script)."""
    import os

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    exits = re.findall(r"^exit (\d+)$", log, re.M)
    assert exits == ["0"] * 6, log[-3000:]
    for name in ("search_scale.json", "search_scale_fp32.json", "embed.md", "embed_fp32.md", "gpu_check.log"):
        assert (tmp_path / "out" / name).is_file(), name
