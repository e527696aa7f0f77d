"""The embed stage end to end with a real recognizer (SFace, onnxruntime) on real faces: a synthetic
MegaFace-testpack-shaped folder made from LFW crops, the LFW folder itself, a real ``kill -9`` in the
middle of a shard followed by a resume, the rank split/merge, and bad input of every kind.
Needs ../shared/data/lfw (skipped when absent)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmark.data.synthetic import lfw_crop, variants, write_testpack
from benchmark.embed.engine import EmbedConfig, run_embed

MODEL = "sface"


def _lfw_people(lfw_dir: Path, n: int) -> list[tuple[str, Path]]:
    """First ``n`` LFW people (sorted) with one image each."""
    out = []
    for person in sorted((lfw_dir / "images").iterdir())[:n]:
        out.append((person.name, sorted(person.glob("*.jpg"))[0]))
    return out


@pytest.fixture(scope="module")
def testpack(lfw_dir, tmp_path_factory) -> Path:
    """A MegaFace-testpack-shaped folder: 4 identities × 3 probe variants, 24 distractors (other people)."""
    root = tmp_path_factory.mktemp("pack")
    people = _lfw_people(lfw_dir, 28)
    probes = []
    for k, (name, path) in enumerate(people[:4]):
        for v in variants(lfw_crop(path), 3, seed=k, strength=0.7):
            probes.append((name, v))
    distractors = [lfw_crop(path) for _, path in people[4:]]
    write_testpack(root, probes, distractors, probe_noises=[f"{people[0][0]}_2.png"])
    return root


def _read_set(out: Path) -> tuple[dict, np.ndarray, list[str], np.ndarray]:
    manifest = json.loads((out / "manifest.json").read_text())
    feats, keys, labels = [], [], []
    for shard in manifest["shards"]:
        with h5py.File(out / shard["path"], "r") as f:
            feats.append(f["features"][:])
            keys += [k.decode() if isinstance(k, bytes) else k for k in f["keys"][:]]
            labels.append(f["labels"][:])
    return manifest, np.concatenate(feats), keys, np.concatenate(labels)


def _cfg(data: str, out: Path, **kw) -> EmbedConfig:
    # float32 whatever the CPU (auto is bf16 on CPUs with bf16 units; tests/test_precision.py covers that)
    base = dict(model=MODEL, batch_size=4, workers=0, device="cpu", progress=False, precision="fp32")
    base.update(kw)
    return EmbedConfig(data=data, out=str(out), **base)


def test_testpack_probes_and_distractors(testpack, tmp_path):
    m = run_embed(_cfg(f"megaface-probes:{testpack}", tmp_path / "p", shard_size=5))
    manifest, feats, keys, labels = _read_set(tmp_path / "p")
    assert m["count"] == manifest["count"] == 12 and len(manifest["shards"]) == 3
    assert [s["count"] for s in manifest["shards"]] == [5, 5, 2]
    assert keys == sorted(keys) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert manifest["failures"]["count"] == 0 and manifest["data"]["noise_keys"] == 1
    assert manifest["model_identity"]["sha256"] and manifest["dim"] == feats.shape[1]
    # real recognition: each probe's nearest other probe is a variant of the same person
    sims = feats @ feats.T
    np.fill_diagonal(sims, -2)
    assert (labels[sims.argmax(1)] == labels).all()

    run_embed(_cfg(f"megaface-distractors:{testpack}", tmp_path / "d", shard_size=100))
    manifest, dfeats, dkeys, dlabels = _read_set(tmp_path / "d")
    assert manifest["count"] == 24 and set(dlabels.tolist()) == {-1}
    assert all(len(k.split("/")) == 3 for k in dkeys)
    # distractors are other people: less similar to the probes than the probes' own mates
    assert (feats @ dfeats.T).max(1).mean() < sims.max(1).mean()


def test_flip_is_sum_of_image_and_mirror(testpack, tmp_path):
    from benchmark.data.images import read_image
    from benchmark.models.registry import create

    run_embed(_cfg(f"megaface-probes:{testpack}?limit=3", tmp_path / "f", flip=True))
    _, feats, keys, _ = _read_set(tmp_path / "f")
    rec = create(MODEL)
    faces = np.stack([read_image(testpack / "facescrub_images" / k) for k in keys])
    ref = rec.embed(faces) + rec.embed(np.ascontiguousarray(faces[:, :, ::-1]))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(feats, ref, atol=1e-4)


def _embed_cmd(data: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmark.cli",
        "embed",
        "--data",
        data,
        "--model",
        MODEL,
        "--out",
        str(out),
        "--batch-size",
        "3",
        "--shard-size",
        "7",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_kill_9_mid_shard_then_resume_is_identical(testpack, tmp_path):
    """A real SIGKILL once the first shard is on disk (the process is frozen with SIGSTOP the moment it appears,
    so the kill lands mid-run); the resumed run skips finished shards and writes byte-identical ones."""
    data = f"megaface-distractors:{testpack}"  # 24 items → shards of 7: 7, 7, 7, 3
    ref = tmp_path / "ref"
    subprocess.run(_embed_cmd(data, ref), check=True, capture_output=True, timeout=300)

    out = tmp_path / "run"
    proc = subprocess.Popen(_embed_cmd(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / ".progress" / "shard-00000.json"  # shard 0's completion record (written after its file)
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = [out / f"{r.stem}.h5" for r in sorted((out / ".progress").glob("shard-*.json"))]
    assert out / "shard-00000.h5" in done and len(done) < 4 and not (out / "manifest.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}

    res = subprocess.run(_embed_cmd(data, out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes  # completed shards skipped
    m_ref, f_ref, k_ref, l_ref = _read_set(ref)
    m_run, f_run, k_run, l_run = _read_set(out)
    assert k_run == k_ref and np.array_equal(l_run, l_ref)
    assert f_run.tobytes() == f_ref.tobytes()
    assert [s["sha256"] for s in m_run["shards"]] == [s["sha256"] for s in m_ref["shards"]]
    for s in m_ref["shards"]:
        assert (out / s["path"]).read_bytes() == (ref / s["path"]).read_bytes()
    assert not list(out.glob(".*.tmp"))


def test_ranks_split_and_merge(testpack, tmp_path, monkeypatch):
    data = f"megaface-distractors:{testpack}"
    run_embed(_cfg(data, tmp_path / "one", shard_size=5))
    out = tmp_path / "two"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "1")
    assert run_embed(_cfg(data, out, shard_size=5)) is None  # rank 1: shards 1, 3
    assert sorted(p.name for p in out.glob("shard-*.h5")) == ["shard-00001.h5", "shard-00003.h5"]
    assert not (out / "manifest.json").exists()
    monkeypatch.setenv("RANK", "0")
    merged = run_embed(_cfg(data, out, shard_size=5))  # rank 0: shards 0, 2, 4, then merge
    assert merged is not None and merged["count"] == 24
    _, f1, k1, _ = _read_set(tmp_path / "one")
    _, f2, k2, _ = _read_set(out)
    assert k1 == k2 and f1.tobytes() == f2.tobytes()


def test_resume_refuses_other_settings(testpack, tmp_path):
    data = f"megaface-probes:{testpack}?limit=2"
    run_embed(_cfg(data, tmp_path / "o"))
    with pytest.raises(ValueError, match="other settings"):
        run_embed(_cfg(data, tmp_path / "o", flip=True))


def _bad_inputs(root: Path, good: np.ndarray) -> dict[str, str]:
    """Write one file per bad-input case under ``root/<identity>/``; returns key → expected reason."""
    from PIL import Image

    cases: dict[str, str] = {}

    def save(key: str, im: Image.Image, fmt: str, reason: str) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / key, format=fmt)
        cases[key] = reason

    rgb = Image.fromarray(good)
    save("ok/rgb.png", rgb, "PNG", "")
    save("ok/cmyk.jpg", rgb.convert("CMYK"), "JPEG", "")
    save("ok/grey.png", rgb.convert("L"), "PNG", "")
    save("ok/rgba.png", rgb.convert("RGBA"), "PNG", "")
    grey16 = np.asarray(rgb.convert("L"), np.uint16) * 257
    save("ok/grey16.png", Image.fromarray(grey16), "PNG", "")
    (root / "bad").mkdir(parents=True, exist_ok=True)
    (root / "bad/empty.png").write_bytes(b"")
    cases["bad/empty.png"] = "empty-file"
    full = (root / "ok/rgb.png").read_bytes()
    (root / "bad/truncated.png").write_bytes(full[: len(full) // 2])
    cases["bad/truncated.png"] = "truncated"
    (root / "bad/garbage.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(300))
    cases["bad/garbage.jpg"] = "corrupt"
    (root / "bad/text.png").write_text("hello")
    cases["bad/text.png"] = "not-an-image"
    save("bad/big.png", rgb.resize((160, 160)), "PNG", "not-aligned")
    return cases


def test_bad_input_is_skipped_with_reasons(lfw_dir, tmp_path):
    good = lfw_crop(_lfw_people(lfw_dir, 1)[0][1])
    cases = _bad_inputs(tmp_path / "faces", good)
    lines = ["identity,path,key,aligned"] + [f"{k.split('/')[0]},faces/{k},{k},1" for k in cases]
    lines.append("ok,faces/ok/not_there.png,ok/not_there.png,1")
    cases["ok/not_there.png"] = "missing"
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")

    out = tmp_path / "o"
    run_embed(_cfg(f"csv:{tmp_path / 'list.csv'}", out, max_failure_fraction=1.0))
    manifest, feats, keys, _ = _read_set(out)
    expected_bad = {k: r for k, r in cases.items() if r}
    got = {f["key"]: f["reason"] for f in manifest["failures"]["items"]}
    assert got.keys() == expected_bad.keys()
    for key, reason in expected_bad.items():
        assert got[key] == reason or (reason == "corrupt" and got[key] in ("corrupt", "truncated", "not-an-image")), key
    assert sorted(keys) == sorted(k for k, r in cases.items() if not r)
    assert manifest["count"] + manifest["failures"]["count"] == len(cases)
    assert (out / "failures.csv").read_text().count("\n") == len(expected_bad) + 1
    # grey / CMYK / RGBA / 16-bit decode to usable faces close to the RGB original's feature
    ref = feats[keys.index("ok/rgb.png")]
    assert (feats @ ref).min() > 0.5

    # the same input with a strict failure limit stops with a clear error naming the fraction
    with pytest.raises(RuntimeError, match="max-failure-fraction"):
        run_embed(_cfg(f"csv:{tmp_path / 'list.csv'}", tmp_path / "strict", max_failure_fraction=0.1))


def test_cli_error_is_one_line(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmark.cli",
            "embed",
            "--data",
            f"folder:{tmp_path}/none",
            "--model",
            MODEL,
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert res.stderr.strip().startswith("mf2m embed: error:") and "does not exist" in res.stderr


def test_lfw_photos_are_aligned_then_embedded(lfw_dir, tmp_path):
    """LFW photos need detection + alignment: the preparation cache is filled once, then reused."""
    out = tmp_path / "lfw"
    m = run_embed(_cfg(f"lfw:{lfw_dir}?limit=6", out, max_failure_fraction=0.5))
    assert m["count"] + m["failures"]["count"] == 6 and m["count"] >= 5
    assert (out / "prepared" / "config.json").is_file()
    _, feats, keys, labels = _read_set(out)
    assert all("/" in k and not k.endswith(".jpg") for k in keys)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_gpu_benchmark_cpu_smoke(tmp_path):
    """benchmarks/gpu_embed.py's CPU path at tiny size (the GPU run needs a lent CUDA machine)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_embed.py"
    res = subprocess.run(
        [
            sys.executable,
            str(script),
            "--device",
            "cpu",
            "--images",
            "8",
            "--unique",
            "4",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--bare-seconds",
            "0.1",
            "--precision",
            "fp32",
            "--out",
            str(tmp_path / "gpu.md"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["images"] == 8 and result["runtime"] == "native" and result["end_to_end_img_s"] > 0
    assert "IResNet-50" in (tmp_path / "gpu.md").read_text()


def test_torch_runtime_matches_native_path():
    """The GPU code path (uint8 → [0,1] NCHW channels-last → torch module, flip by mirroring) run on CPU in
    float32 gives the recognizer's own ``embed`` features; the recognizer's module is left untouched."""
    import torch

    from benchmark.embed.runtime import Forward
    from benchmark.models.iresnet import IResNetRecognizer, build_iresnet

    torch.manual_seed(0)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        torch.save(build_iresnet("r18").state_dict(), Path(d) / "backbone.pth")
        rec = IResNetRecognizer(weights=Path(d) / "backbone.pth", device="cpu")
    faces = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    for flip in (False, True):
        via_torch = Forward(rec, device="cpu", flip=flip, precision="fp32", prefer_torch=True)
        native = Forward(rec, device="cpu", flip=flip, precision="fp32")
        assert via_torch.runtime == "torch-fp32" and native.runtime == "native"
        got = [f for _, f in via_torch.stream(iter([(0, torch.from_numpy(faces))]))][0]
        assert np.allclose(got, native.embed_numpy(faces), atol=1e-4)
    assert next(rec.torch_module("cpu").parameters()).dtype == torch.float32


def test_sface_embeds_through_torch_on_cpu_in_chunks():
    """SFace prefers its torch module on the CPU (faster than onnxruntime there); batches larger than a
    chunk are split, and the features equal onnxruntime's (with and without flip)."""
    import torch

    from benchmark.embed.runtime import CPU_TORCH_CHUNK, Forward
    from benchmark.models.registry import create

    rec = create("sface")
    faces = np.random.default_rng(3).integers(0, 256, (CPU_TORCH_CHUNK * 2 + 5, 112, 112, 3), dtype=np.uint8)
    for flip in (False, True):
        forward = Forward(rec, device="cpu", flip=flip, precision="fp32")  # auto is bf16 on CPUs with bf16 units
        assert forward.runtime == "torch-fp32"
        got = forward.embed_tensor(torch.from_numpy(faces))
        native = Forward(rec, device="cpu", flip=flip, precision="fp32", prefer_torch=False)
        assert native.runtime == "native"
        np.testing.assert_allclose(got, native.embed_numpy(faces), atol=1e-5)
