"""``benchmark.manifest.portable``: records meant to be committed name no folder of the machine that wrote them."""

from __future__ import annotations

import os
import sys
import tempfile

from benchmark.manifest import portable


def test_paths_become_relative_prefixed_or_stay():
    base = "/data/work/repo"
    rec = {"spec": "lfw:/data/work/shared/lfw", "argv": ["run", "--out=/data/work/repo/results/x"],
           "weights": os.path.join(sys.prefix, "lib", "m.onnx"), "url": "https://host/a/b", "n": 3,
           "other": "/opt/models/m.onnx", "text": "from /data/work/shared/lfw/a.jpg, 2 images"}
    out = portable(rec, base)
    assert out["spec"] == "lfw:../shared/lfw" and out["argv"] == ["run", "--out=results/x"]
    assert out["weights"] == "$PREFIX/lib/m.onnx" and out["url"] == "https://host/a/b" and out["n"] == 3
    assert out["other"] == "/opt/models/m.onnx"                    # nothing in common: kept
    assert out["text"] == "from ../shared/lfw/a.jpg, 2 images"


def test_hide_temp_rewrites_temp_and_home_folders():
    tmp = os.path.realpath(tempfile.gettempdir())
    home = os.path.expanduser("~")
    rec = [f"{tmp}/run/cache", f"{home}/faces/a.jpg"]
    assert portable(rec, "/nowhere/else") == rec                   # only with hide_temp
    assert portable(rec, "/nowhere/else", hide_temp=True) == ["$TMPDIR/run/cache", "~/faces/a.jpg"]
