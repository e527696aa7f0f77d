"""Several search processes: torchrun + torch.distributed (gloo on CPU) and fingerprinted partial files.

Each torchrun test starts real processes (``python -m torch.distributed.run``) on small random feature
sets and has a hard timeout, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmark.features import write_feature_file
from benchmark.search import distributed
from benchmark.search.run import SearchConfig, run_search

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 32)) * 2
    lab = np.repeat(np.arange(10), 3)
    names = [f"id{x}" for x in lab]
    write_feature_file(
        tmp / "p.h5",
        centers[lab] + rng.normal(size=(30, 32)),
        [f"{n}/p{i}.png" for i, n in enumerate(names)],
        None,
        "m",
        identities=names,
        sources=[f"{n}/m{i}" for i, n in enumerate(names)],
    )
    write_feature_file(
        tmp / "m.h5",
        centers[lab] + rng.normal(size=(30, 32)),
        [f"{n}/m{i}" for i, n in enumerate(names)],
        None,
        "m",
        identities=names,
    )
    write_feature_file(
        tmp / "d.h5", rng.normal(size=(5000, 32)), [f"d/{i}" for i in range(5000)], None, "m", dtype="float16"
    )
    return tmp


def torchrun(sets: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "benchmark.cli",
        "search",
        "--probes",
        str(sets / "p.h5"),
        "--mates",
        str(sets / "m.h5"),
        "--distractors",
        str(sets / "d.h5"),
        "--out",
        str(out),
        "--far",
        "1e-3",
        "1e-2",
        "--block-size",
        "512",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_torchrun_two_ranks_equal_one_process(sets, tmp_path):
    """float32 path on both sides: with bf16 screening each rank's first block runs in float32, so the
    screening bookkeeping in ``exactness`` (and the histogram AUC, within its bound) depend on the split."""
    proc = torchrun(sets, tmp_path / "two", "--precision", "fp32")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    one = run_search(
        SearchConfig(
            str(sets / "p.h5"),
            str(sets / "m.h5"),
            str(sets / "d.h5"),
            str(tmp_path / "one"),
            fars=[1e-3, 1e-2],
            block_size=512,
            device="cpu",
            progress=False,
            precision="fp32",
        )
    )
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two == json.loads(json.dumps(one))  # every metric field, bit for bit
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    assert not (tmp_path / "two" / "partials").exists()  # no files: the ranks used collectives


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out += [int(entry), *_children(int(entry))]
    return out


def _rank_pid(parent: int, rank: int) -> int | None:
    for pid in _children(parent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID=" in b"\0".join(environ):
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a rank's process")
def test_killing_one_rank_fails_the_run_quickly_naming_it(sets, tmp_path):
    proc = torchrun(sets, tmp_path / "killed", "--dist-timeout", "1")
    t0 = time.time()
    victim = None
    while victim is None and time.time() - t0 < 60 and proc.poll() is None:
        victim = _rank_pid(proc.pid, 1)
        time.sleep(0.1)
    assert victim is not None, "rank 1 never started"
    os.kill(victim, signal.SIGKILL)
    killed = time.time()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - killed < 60
    assert "rank      : 1" in out and "SIGKILL" in out, out[-3000:]
    assert not (tmp_path / "killed" / "metrics.json").exists()


def test_stale_or_foreign_partial_files_are_refused_by_name(sets, tmp_path, monkeypatch):
    """Independent jobs (RANK/WORLD_SIZE by hand, no torchrun): a partial of other inputs is never merged."""
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    cfg = dict(
        fars=[1e-3, 1e-2], block_size=512, device="cpu", progress=False, dist_timeout=0.05, precision="fp32"
    )  # screening bookkeeping depends on the split (see the torchrun test)
    # rank 1 of an earlier run with another FAR list left its partial in the shared --out
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "shared"
    assert (
        run_search(
            SearchConfig(
                str(sets / "p.h5"), str(sets / "m.h5"), str(sets / "d.h5"), str(out), **{**cfg, "fars": [1e-2]}
            )
        )
        == {}
    )
    stale = distributed.partial_path(out / "partials", 1, 2)
    assert stale.is_file()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match=f"{stale}.*other inputs, settings or code"):
        run_search(SearchConfig(str(sets / "p.h5"), str(sets / "m.h5"), str(sets / "d.h5"), str(out), **cfg))
    # the right rank 1, then rank 0: merged, equal to one process
    monkeypatch.setenv("RANK", "1")
    run_search(SearchConfig(str(sets / "p.h5"), str(sets / "m.h5"), str(sets / "d.h5"), str(out), **cfg))
    monkeypatch.setenv("RANK", "0")
    merged = run_search(SearchConfig(str(sets / "p.h5"), str(sets / "m.h5"), str(sets / "d.h5"), str(out), **cfg))
    assert not stale.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    single = run_search(
        SearchConfig(str(sets / "p.h5"), str(sets / "m.h5"), str(sets / "d.h5"), str(tmp_path / "single"), **cfg)
    )
    assert merged == single
    # a rank that never writes its partial: rank 0 fails naming it, within the timeout
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    t0 = time.time()
    with pytest.raises(RuntimeError, match=r"rank\(s\) 1, 2 wrote no partial"):
        run_search(
            SearchConfig(str(sets / "p.h5"), str(sets / "m.h5"), str(sets / "d.h5"), str(tmp_path / "lone"), **cfg)
        )
    assert time.time() - t0 < 30
