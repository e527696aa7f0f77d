"""Hostile input: keys and paths with ``..``, absolute paths or control characters never leave ``--out``;
users' CSVs of absolute paths work; names are escaped in the HTML report; weights never run code."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.data.datasets import load_dataset
from benchmark.data.images import write_png
from benchmark.safepath import UnsafePathError, check_key, join_under, key_problem

BAD_KEYS = [
    "../x.png",
    "a/../../x.png",
    "/etc/passwd",
    "a/\x1b[31mred.png",
    "a\nb.png",
    "C:/x.png",
    "a\\..\\x.png",
    "",
    "a//b.png",
    "./a.png",
    "a/\x00.png",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused_by_name(key):
    assert key_problem(key)
    with pytest.raises(UnsafePathError) as err:
        check_key(key, "item key", "list.csv")
    assert repr(key) in str(err.value) and "list.csv" in str(err.value)


def test_safe_keys_pass_and_symlinks_cannot_escape(tmp_path):
    for key in ("a.png", "Name/Name_0001.jpg", "a/b/c.jpg", "x..y/z.png"):
        assert check_key(key) == key
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        join_under(tmp_path / "out", "link/escaped.png")
    assert join_under(tmp_path / "out", "a/b.png") == tmp_path / "out" / "a" / "b.png"


def _face() -> np.ndarray:
    import insightface

    from benchmark.data.images import read_image

    return read_image(Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png")


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


@pytest.mark.parametrize("key", ["../../escaped", "/tmp/escaped", "a/\x07bell"])
def test_hostile_csv_key_is_refused_before_anything_is_written(tmp_path, key):
    write_png(tmp_path / "img.png", np.zeros((112, 112, 3), np.uint8))
    _write_csv(tmp_path / "list.csv", [["identity", "path", "key"], ["a", "img.png", key]])
    with pytest.raises(UnsafePathError) as err:
        load_dataset(f"csv:{tmp_path / 'list.csv'}")
    assert repr(key) in str(err.value)
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmark.cli",
            "embed",
            "--data",
            f"csv:{tmp_path / 'list.csv'}",
            "--model",
            "sface",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0 and "refusing it" in res.stderr
    assert not out.exists() or not any(out.rglob("*.png"))
    assert not (tmp_path.parent / "escaped").exists() and not Path("/tmp/escaped.png").exists()


def test_folder_names_with_control_characters_are_refused(tmp_path):
    write_png(tmp_path / "faces" / "ok" / "a.png", np.zeros((112, 112, 3), np.uint8))
    write_png(tmp_path / "faces" / "bad\x1b[2J" / "a.png", np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(UnsafePathError, match="control character"):
        load_dataset(f"folder:{tmp_path / 'faces'}?aligned=1")


def test_feature_file_keys_are_checked(tmp_path):
    from benchmark.features import FeatureFormatError, FeatureSet, write_feature_file

    feats = np.eye(3, 8, dtype=np.float32)
    write_feature_file(
        tmp_path / "f.h5", feats, ["a/1.png", "../../x.png", "b/2.png"], np.zeros(3, np.int64), model="m"
    )
    with pytest.raises(FeatureFormatError, match=r"'\.\./\.\./x\.png'"):
        FeatureSet(tmp_path / "f.h5").load(progress=False)


def test_csv_of_absolute_paths_without_keys_embeds(tmp_path, caplog):
    """The way users have lists: absolute paths, no key column; clashing file names are renamed and reported."""
    face = _face()
    for who in ("ann", "bob"):
        for folder in ("x", "y"):  # the same file name in two folders: a clash per person
            write_png(tmp_path / who / folder / "face.png", face if who == "ann" else face[:, ::-1].copy())
    rows = [["identity", "path"]] + [
        [who, str(tmp_path / who / folder / "face.png")] for who in ("ann", "bob") for folder in ("x", "y")
    ]
    _write_csv(tmp_path / "list.csv", rows)
    ds = load_dataset(f"csv:{tmp_path / 'list.csv'}?aligned=1")
    assert [it.key for it in ds.items] == ["ann/face.png", "ann/face~2.png", "bob/face.png", "bob/face~2.png"]
    clashes = ds.describe()["key_clashes"]
    assert [(c["line"], c["derived"], c["key"]) for c in clashes] == [
        (3, "ann/face.png", "ann/face~2.png"),
        (5, "bob/face.png", "bob/face~2.png"),
    ]
    out = tmp_path / "feats"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmark.cli",
            "embed",
            "--data",
            f"csv:{tmp_path / 'list.csv'}?aligned=1",
            "--model",
            "sface",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "renamed" in res.stderr and "ann/face~2.png" in res.stderr
    from benchmark.features import FeatureSet

    arr = FeatureSet(out).load(progress=False)
    assert arr.keys.tolist() == ["ann/face.png", "ann/face~2.png", "bob/face.png", "bob/face~2.png"]
    assert arr.identities.tolist() == ["ann", "ann", "bob", "bob"]


def test_report_escapes_identity_names_keys_and_run_names(tmp_path):
    """A run whose name, data spec and method label carry HTML renders them as text, never as markup."""
    from benchmark.report.build import build_report

    run = tmp_path / "run"
    search = run / "raw" / "search"
    search.mkdir(parents=True)
    evil = "<script>alert(1)</script>"
    (search / "metrics.json").write_text(
        json.dumps(
            {
                "rank1": 0.5,
                "auc": 0.9,
                "tar_at_far": [{"far": 1e-6, "tar": 0.4, "threshold": 0.3}],
                "counts": {"probes": 2, "mates": 2, "distractors": 3},
            }
        )
    )
    (search / "cmc.csv").write_text("rank,identification_rate\n1,0.5\n4,1\n")
    (search / "roc.csv").write_text("far,tar,threshold\n1e-06,0.4,0.3\n")
    (run / "run.json").write_text(
        json.dumps(
            {
                "format": "mf2m.run.v1",
                "name": evil,
                "setting": {"data": f"csv:{evil}.csv", "white_box": evil},
                "entries": [
                    {
                        "method": evil,
                        "attack_model": None,
                        "eval_model": "sface",
                        "search": "raw/search",
                        "attack": None,
                    }
                ],
            }
        )
    )
    build_report([str(run)], tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert evil not in page and "&lt;script&gt;" in page


def test_iresnet_weights_never_run_code(tmp_path):
    torch = pytest.importorskip("torch")
    from benchmark.models.iresnet import read_state_dict

    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Evil(str(marker))}, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        read_state_dict(tmp_path / "backbone.pth")
    assert not marker.exists()


class _Evil:
    """Unpickling this runs ``open(path, "w")``: a weights file must never be able to do that."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
