"""Dataset specs, MegaFace testpack / face folder / CSV / LFW listing, noise lists and the probe-pool
builder. Real files: faces are insightface's shipped aligned crop (always installed) and, for the LFW
test, ../shared/data/lfw (skipped when absent)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmark.data.datasets import is_noise, load_dataset, parse_spec, read_noise_list
from benchmark.data.images import read_image, write_png
from benchmark.data.pool import build_pool, write_pool
from benchmark.data.synthetic import variants, write_testpack


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """insightface's aligned 112×112 sample face."""
    import insightface

    return read_image(Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png")


@pytest.fixture()
def testpack(tmp_path, face):
    faces = variants(face, 12, seed=1)
    probes = [
        ("Ann_A", faces[0]),
        ("Ann_A", faces[1]),
        ("Bob_B", faces[2]),
        ("Bob_B", faces[3]),
        ("Bob_B", faces[4]),
        ("Cy_C", faces[5]),
    ]
    keys = write_testpack(tmp_path / "pack", probes, faces[6:], probe_noises=["Bob_B_2.png"])
    noisy = keys["distractors"][1]
    (tmp_path / "pack" / "megaface_noises.txt").write_text(f"# header\n{noisy}\n")
    return tmp_path / "pack", keys


def test_parse_spec_kinds_and_options(tmp_path):
    assert parse_spec("folder:/a/b") == ("folder", Path("/a/b"), {})
    assert parse_spec("/a/list.csv") == ("csv", Path("/a/list.csv"), {})
    assert parse_spec("/a/dir") == ("folder", Path("/a/dir"), {})
    assert parse_spec("megaface-probes:/m?noises=drop&limit=3") == (
        "megaface-probes",
        Path("/m"),
        {"noises": "drop", "limit": "3"},
    )
    with pytest.raises(ValueError, match="unknown option"):
        parse_spec("folder:/a?colour=1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path}/nope")


def test_bare_folder_layout_is_recognised(tmp_path, face, testpack):
    """A bare LFW root is read as LFW (not as one identity called 'images'); a testpack root is refused."""
    lfw = tmp_path / "lfw"
    for name, n in (("Ann_A", 2), ("Bob_B", 1)):
        for i in range(1, n + 1):
            write_png(lfw / "images" / name / f"{name}_{i:04d}.jpg", face)
    assert parse_spec(str(lfw))[0] == "lfw"
    ds = load_dataset(str(lfw))
    assert ds.kind == "lfw" and sorted(ds.identities) == ["Ann_A", "Bob_B"] and len(ds.items) == 3
    assert parse_spec(str(lfw / "images"))[0] == "folder"
    assert sorted(load_dataset(str(lfw / "images")).identities) == ["Ann_A", "Bob_B"]
    with pytest.raises(ValueError, match="megaface-probes:"):
        parse_spec(str(testpack[0]))


def test_megaface_testpack(testpack):
    root, keys = testpack
    probes = load_dataset(f"megaface-probes:{root}")
    assert [it.key for it in probes.items] == sorted(keys["probes"])
    assert probes.identities == ["Ann_A", "Bob_B", "Cy_C"]
    assert [it.label for it in probes.items] == [0, 0, 1, 1, 1, 2]
    assert not probes.needs_alignment
    assert probes.noise_keys == {"Bob_B/Bob_B_2.png"}
    assert all(Path(it.path).is_file() for it in probes.items)

    dropped = load_dataset(f"megaface-probes:{root}?noises=drop")
    assert len(dropped.items) == 5 and dropped.dropped_noises == 1

    distractors = load_dataset(f"megaface-distractors:{root}")
    assert len(distractors.items) == 6
    assert {it.label for it in distractors.items} == {-1}
    assert all(len(it.key.split("/")) == 3 for it in distractors.items)
    assert distractors.noise_keys == {keys["distractors"][1]}


def test_megaface_list_file_rules(testpack):
    root, keys = testpack
    # without the list file the images are found by walking the folder: same items
    (root / "facescrub_lst").unlink()
    walked = load_dataset(f"megaface-probes:{root}")
    assert [it.key for it in walked.items] == sorted(keys["probes"])
    # a list naming a file that is not there keeps the item (it fails later as "missing", never silently)
    (root / "facescrub_lst").write_text("Ann_A/Ann_A_1.png\nZed_Z/Zed_Z_9.png\n")
    listed = load_dataset(f"megaface-probes:{root}")
    assert [it.key for it in listed.items] == ["Ann_A/Ann_A_1.png", "Zed_Z/Zed_Z_9.png"]
    assert not Path(listed.items[1].path).exists()
    (root / "facescrub_lst").write_text("just_a_file.png\n")
    with pytest.raises(ValueError, match="not <Name>/<image>"):
        load_dataset(f"megaface-probes:{root}")


def test_noise_list_conventions(tmp_path):
    path = tmp_path / "n.txt"
    path.write_text("# comment\nAaron_Eckhart_1.png\n\n7\t123/45/photo.jpg\n")
    noises = read_noise_list(path)
    assert noises == {"Aaron_Eckhart_1.png", "123/45/photo.jpg"}
    assert is_noise("Aaron_Eckhart/Aaron_Eckhart_1.png", noises)
    assert is_noise("123/45/photo.jpg", noises)
    assert not is_noise("Aaron_Eckhart/Aaron_Eckhart_10.png", noises)


def test_folder_and_csv(tmp_path, face):
    for name, n in (("b", 2), ("a", 3)):
        for i in range(n):
            write_png(tmp_path / "faces" / name / f"{i}.png", face)
    (tmp_path / "faces" / ".hidden.png").write_bytes(b"")
    (tmp_path / "faces" / "a" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path / 'faces'}?aligned=1")
    assert [it.key for it in ds.items] == ["a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png"]
    assert [it.label for it in ds.items] == [0, 0, 0, 1, 1]
    assert not ds.needs_alignment
    assert load_dataset(str(tmp_path / "faces")).needs_alignment  # photos by default

    rows = [["identity", "path"], ["x", "faces/a/0.png"], ["", str(tmp_path / "faces/b/1.png")], ["y", "gone.png"]]
    with open(tmp_path / "list.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    ds = load_dataset(f"csv:{tmp_path / 'list.csv'}?aligned=1")
    by_key = {it.key: it for it in ds.items}
    assert by_key["faces/a/0.png"].label == 0 and by_key["faces/a/0.png"].path == str(tmp_path / "faces/a/0.png")
    assert by_key["1.png"].label == -1  # an absolute path with no identity: the file name is the key
    assert by_key["gone.png"].label == 1 and ds.identities == ["x", "y"]
    (tmp_path / "bad.csv").write_text("onlyone\n")
    with pytest.raises(ValueError, match="bad.csv:1"):
        load_dataset(f"csv:{tmp_path / 'bad.csv'}")
    (tmp_path / "dup.csv").write_text("x,faces/a/0.png\ny,faces/a/0.png\n")
    with pytest.raises(ValueError, match="duplicate key"):
        load_dataset(f"csv:{tmp_path / 'dup.csv'}")


def test_lfw_spec(lfw_dir):
    """Needs ../shared/data/lfw."""
    ds = load_dataset(f"lfw:{lfw_dir}?limit=50")
    assert len(ds.items) == 50 and ds.needs_alignment
    first = ds.items[0]
    assert Path(first.path).is_file()
    assert first.key == f"{first.identity}/{Path(first.path).stem}"
    assert ds.identities[first.label] == first.identity


def test_pool_is_seeded_and_partitions(testpack, tmp_path):
    root, _ = testpack
    ds = load_dataset(f"megaface-probes:{root}")
    pool = build_pool(ds, n_identities=2, max_images=2, seed=3)
    again = build_pool(ds, n_identities=2, max_images=2, seed=3)
    assert [it.key for it in pool.probes] == [it.key for it in again.probes]
    assert "Cy_C" not in pool.identities  # has a single image: cannot be a probe identity
    assert len(pool.probes) == 4
    assert {it.key for it in pool.probes} | {it.key for it in pool.rest} == {it.key for it in ds.items}
    assert not {it.key for it in pool.probes} & {it.key for it in pool.rest}
    seeds = {tuple(it.key for it in build_pool(ds, 2, 2, seed=s).probes) for s in range(8)}
    assert len(seeds) > 1  # the seed matters (Bob_B has 3 images, 2 kept)
    with pytest.raises(ValueError, match="only 2 identities"):
        build_pool(ds, n_identities=3)

    write_pool(pool, tmp_path / "pool", {"seed": 3})
    back = load_dataset(f"csv:{tmp_path / 'pool' / 'probes.csv'}")
    assert [it.key for it in back.items] == [it.key for it in pool.probes]  # keys unchanged
    assert not back.needs_alignment  # aligned column kept
    assert [it.path for it in back.items] == [str(Path(it.path).resolve()) for it in pool.probes]
