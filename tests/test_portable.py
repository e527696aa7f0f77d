"""``benchmark.manifest.portable``: records meant to be committed name no folder of the machine that wrote them."""

from __future__ import annotations

import os
import sys
import tempfile

from benchmark.manifest import portable


def test_paths_become_relative_prefixed_or_stay():
    base = "/data/work/repo"
    rec = {
        "spec": "lfw:/data/work/shared/lfw",
        "argv": ["run", "--out=/data/work/repo/results/x"],
        "weights": os.path.join(sys.prefix, "lib", "m.onnx"),
        "url": "https://host/a/b",
        "n": 3,
        "other": "/opt/models/m.onnx",
        "text": "from /data/work/shared/lfw/a.jpg, 2 images",
    }
    out = portable(rec, base)
    assert out["spec"] == "lfw:../shared/lfw" and out["argv"] == ["run", "--out=results/x"]
    assert out["weights"] == "$PREFIX/lib/m.onnx" and out["url"] == "https://host/a/b" and out["n"] == 3
    assert out["other"] == "/opt/models/m.onnx"  # nothing in common: kept
    assert out["text"] == "from ../shared/lfw/a.jpg, 2 images"


def test_hide_temp_rewrites_temp_and_home_folders():
    tmp = os.path.realpath(tempfile.gettempdir())
    home = os.path.expanduser("~")
    rec = [f"{tmp}/run/cache", f"{home}/faces/a.jpg"]
    assert portable(rec, "/nowhere/else") == rec  # only with hide_temp
    assert portable(rec, "/nowhere/else", hide_temp=True) == ["$TMPDIR/run/cache", "~/faces/a.jpg"]


def test_git_commit_is_dirty_only_for_source_changes(tmp_path):
    """Regenerating a committed run rewrites tracked results: that alone must not mark the commit dirty."""
    import subprocess

    from benchmark.manifest import git_commit

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    (tmp_path / "benchmark").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "benchmark" / "a.py").write_text("x = 1\n")
    (tmp_path / "results" / "run.json").write_text("{}\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "c")
    clean = git_commit(tmp_path)
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "results" / "run.json").write_text('{"new": 1}\n')
    assert git_commit(tmp_path) == clean
    (tmp_path / "benchmark" / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"
