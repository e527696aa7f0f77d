"""The feature-set format: reading files written with raw h5py, the writer API, importers, and every
error case (each must name the offending file)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmark.cli import main
from benchmark.features import (
    FeatureFormatError,
    FeatureSet,
    FeatureSetWriter,
    UnitRows,
    check_compatible,
    import_megaface,
    read_megaface_bin,
    write_feature_file,
    write_manifest,
)


def raw_file(path: Path, feats, keys, labels=None, model="m", dim=None, dtype=np.float32) -> Path:
    """A feature file written straight from the format description."""
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", data=np.asarray(feats, dtype=dtype))
        fh.create_dataset("keys", data=[k.encode() for k in keys], dtype=h5py.string_dtype("utf-8"))
        fh.create_dataset("labels", data=np.asarray(labels if labels is not None else [-1] * len(keys), np.int64))
        fh.attrs["model"] = model
        fh.attrs["dim"] = int(np.asarray(feats).shape[1] if dim is None else dim)
    return path


def raw_dir(folder: Path, parts: list[tuple], model="m", dim=4) -> Path:
    folder.mkdir()
    shards = []
    for i, (feats, keys) in enumerate(parts):
        path = raw_file(folder / f"{i}.h5", feats, keys, model=model)
        shards.append({"path": path.name, "count": len(keys), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    (folder / "manifest.json").write_text(
        json.dumps(
            {
                "format": "mf2m.features.v1",
                "model": model,
                "dim": dim,
                "count": sum(s["count"] for s in shards),
                "shards": shards,
            }
        )
    )
    return folder


def test_reads_and_normalises_float16(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4)) * 7
    fs = FeatureSet(raw_file(tmp_path / "a.h5", x, [f"k{i}" for i in range(10)], list(range(10)), dtype=np.float16))
    arr = fs.load()
    assert arr.features.dtype == np.float32 and fs.model == "m" and fs.dim == 4
    np.testing.assert_allclose(np.linalg.norm(arr.features, axis=1), 1, atol=1e-6)
    x16 = x.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(arr.features, x16 / np.linalg.norm(x16, axis=1, keepdims=True), atol=1e-6)
    assert list(arr.labels) == list(range(10)) and arr.keys[3] == "k3"


@pytest.mark.parametrize("dtypes", [(np.float16, np.float16), (np.float32, np.float32), (np.float16, np.float32)])
def test_keep_storage_unit_rows_identical_to_load(tmp_path, dtypes):
    """``load(keep_storage=True)`` keeps float16 storage (half the memory) when every shard is float16, and
    ``UnitRows`` gives bit-identical float32 rows to ``load()`` for slices, index arrays and single rows."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "set"
    folder.mkdir()
    shards = []
    for i, dt in enumerate(dtypes):
        x = rng.normal(size=(300, 64)) * rng.uniform(0.1, 30, (300, 1))
        path = raw_file(folder / f"{i}.h5", x, [f"s{i}/k{j}" for j in range(300)], dtype=dt)
        shards.append({"path": path.name, "count": 300, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    (folder / "manifest.json").write_text(
        json.dumps({"format": "mf2m.features.v1", "model": "m", "dim": 64, "count": 600, "shards": shards})
    )
    fs = FeatureSet(folder)
    ref = fs.load(block_size=128).features
    raw = fs.load(block_size=77, keep_storage=True)
    assert raw.features.dtype == (np.float16 if dtypes == (np.float16, np.float16) else np.float32)
    rows = UnitRows(raw.features, folder)
    assert rows.shape == ref.shape and len(rows) == 600
    assert np.array_equal(rows[0:600], ref)
    assert np.array_equal(rows[123:457], ref[123:457])
    idx = rng.permutation(600)[:200]
    assert np.array_equal(rows[idx], ref[idx])
    assert np.array_equal(rows[5], ref[5:6])


def test_directory_streams_in_blocks(tmp_path):
    rng = np.random.default_rng(1)
    parts = [(rng.normal(size=(n, 4)), [f"s{j}/{i}" for i in range(n)]) for j, n in enumerate((5, 7, 3))]
    fs = FeatureSet(raw_dir(tmp_path / "d", parts))
    blocks = list(fs.iter_blocks(block_size=4))
    assert [len(b.keys) for b in blocks] == [4, 1, 4, 3, 3]
    assert [b.start for b in blocks] == [0, 4, 5, 9, 12]
    assert fs.count == 15 and fs.load().features.shape == (15, 4)


@pytest.mark.parametrize(
    "bad, message", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (0.0, "all-zero"), (3e38, "norm overflows")]
)
def test_bad_rows_name_file_and_row(tmp_path, bad, message):
    x = np.ones((6, 4))
    x[4] = bad
    path = raw_file(tmp_path / "bad.h5", x, [f"k{i}" for i in range(6)])
    with pytest.raises(FeatureFormatError, match=f"bad.h5: row 4 .*{message}|bad.h5: row 4 is an {message}"):
        FeatureSet(path).load()


def test_duplicate_keys_across_shards(tmp_path):
    parts = [(np.ones((2, 4)), ["a", "b"]), (np.ones((2, 4)), ["c", "a"])]
    with pytest.raises(FeatureFormatError, match=r"0\.h5 and .*1\.h5: duplicate key 'a'"):
        FeatureSet(raw_dir(tmp_path / "d", parts)).load()


def test_checksum_and_count_mismatch(tmp_path):
    folder = raw_dir(tmp_path / "d", [(np.ones((2, 4)), ["a", "b"]), (np.ones((3, 4)), ["c", "d", "e"])])
    man = json.loads((folder / "manifest.json").read_text())
    man["shards"][1]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(FeatureFormatError, match=r"1\.h5: sha256 .* does not match"):
        FeatureSet(folder)
    man["shards"][1]["count"] = 4
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(FeatureFormatError, match=r"1\.h5: holds 3 rows but .*manifest.json says 4"):
        FeatureSet(folder)


def test_manifest_format_and_missing_shard(tmp_path):
    folder = raw_dir(tmp_path / "d", [(np.ones((2, 4)), ["a", "b"])])
    man = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**man, "format": "other"}))
    with pytest.raises(FeatureFormatError, match="manifest.json: format must be"):
        FeatureSet(folder)
    (folder / "manifest.json").write_text(json.dumps({**man, "shards": [{"path": "gone.h5", "count": 1}]}))
    with pytest.raises(FileNotFoundError, match="gone.h5"):
        FeatureSet(folder)


def test_shard_model_or_dim_differs_from_manifest(tmp_path):
    folder = raw_dir(tmp_path / "d", [(np.ones((2, 4)), ["a", "b"])], model="m")
    man = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**man, "model": "other"}))
    with pytest.raises(FeatureFormatError, match=r"0\.h5: model/dim 'm'/4 differ"):
        FeatureSet(folder)


def test_missing_attribute_and_wrong_dim(tmp_path):
    path = raw_file(tmp_path / "a.h5", np.ones((2, 4)), ["a", "b"])
    with h5py.File(path, "a") as fh:
        del fh.attrs["model"]
    with pytest.raises(FeatureFormatError, match="a.h5: missing file attribute 'model'"):
        FeatureSet(path)
    with pytest.raises(FeatureFormatError, match=r"b.h5: features have shape \(2, 4\), expected \(n, 8\)"):
        FeatureSet(raw_file(tmp_path / "b.h5", np.ones((2, 4)), ["a", "b"], dim=8))


def test_mixed_models_and_dims(tmp_path):
    a = FeatureSet(raw_file(tmp_path / "a.h5", np.ones((1, 4)), ["a"], model="x"))
    b = FeatureSet(raw_file(tmp_path / "b.h5", np.ones((1, 4)), ["a"], model="y"))
    c = FeatureSet(raw_file(tmp_path / "c.h5", np.ones((1, 8)), ["a"], model="x"))
    with pytest.raises(FeatureFormatError, match="b.h5 is model 'y'.*a.h5 is model 'x'"):
        check_compatible({"probes": a, "distractors": b})
    with pytest.raises(FeatureFormatError, match="c.h5 is model 'x' dim 8"):
        check_compatible({"probes": a, "mates": c})


def test_writer_roundtrip_and_atomicity(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(25, 8)).astype(np.float32)
    keys = [f"img/{i}.jpg" for i in range(25)]
    with FeatureSetWriter(tmp_path / "set", "model-a", 8, shard_size=10, dtype="float16") as w:
        w.add(x[:7], keys[:7], np.arange(7))
        w.add(x[7:], keys[7:], np.arange(7, 25))
    fs = FeatureSet(tmp_path / "set")
    assert [s.count for s in fs.shards] == [10, 10, 5] and fs.model == "model-a"
    arr = fs.load()
    assert list(arr.keys) == keys and list(arr.labels) == list(range(25))
    x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(arr.features, x16 / np.linalg.norm(x16, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSetWriter(tmp_path / "s2", "m", 8).add(x[:2], ["a", "a"])
    bad = x[:3].copy()
    bad[1] = np.nan
    with pytest.raises(FeatureFormatError, match="NaN"):
        write_feature_file(tmp_path / "f.h5", bad, ["a", "b", "c"], None, "m")
    assert not (tmp_path / "f.h5").exists() and not list(tmp_path.glob(".f.h5*"))
    # rebuilding a manifest from files
    write_manifest(tmp_path / "set", "model-a", 8, ["part-00000.h5", "part-00001.h5"])
    assert FeatureSet(tmp_path / "set").count == 20


def test_import_npy_and_cli_validate(tmp_path, capsys):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 6)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "keys.txt").write_text("\n".join(f"k{i}" for i in range(12)) + "\n")
    np.save(tmp_path / "l.npy", np.arange(12) % 3)
    rc = main(
        [
            "features",
            "import-npy",
            str(tmp_path / "f.npy"),
            str(tmp_path / "keys.txt"),
            "--out",
            str(tmp_path / "set"),
            "--model",
            "mm",
            "--labels",
            str(tmp_path / "l.npy"),
            "--shard-size",
            "5",
        ]
    )
    assert rc == 0
    arr = FeatureSet(tmp_path / "set").load()
    np.testing.assert_allclose(arr.features, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    assert list(arr.labels) == list(np.arange(12) % 3)
    capsys.readouterr()
    assert main(["features", "validate", str(tmp_path / "set")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 12 and info["identities"] == 3 and info["shards"] == 3
    (tmp_path / "keys.txt").write_text("a\nb\n")
    assert (
        main(
            [
                "features",
                "import-npy",
                str(tmp_path / "f.npy"),
                str(tmp_path / "keys.txt"),
                "--out",
                str(tmp_path / "set2"),
                "--model",
                "mm",
            ]
        )
        == 1
    )
    assert "keys.txt: 2 keys for 12 rows" in capsys.readouterr().err


def _write_bin(path: Path, vec: np.ndarray) -> None:
    """The MegaFace devkit layout (as insightface's gen_megaface.py writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("4i", len(vec), 1, 4, 5) + np.asarray(vec, "<f4").tobytes())


def test_import_megaface_bins(tmp_path):
    rng = np.random.default_rng(4)
    vecs = {}
    for person in ("Aaron_Eckhart", "Adam_Brody"):
        for i in range(3):
            v = rng.normal(size=16).astype(np.float32)
            vecs[f"{person}/{person}_{i}.png"] = v
            _write_bin(tmp_path / "fs" / person / f"{person}_{i}.png_r100.bin", v)
    out, n = import_megaface(
        tmp_path / "fs", tmp_path / "set", "r100", suffix="_r100.bin", identities=tmp_path / "ids.txt", progress=False
    )
    assert n == 6
    arr = FeatureSet(out).load()
    assert sorted(arr.keys) == sorted(vecs)
    assert (tmp_path / "ids.txt").read_text().split() == ["Aaron_Eckhart", "Adam_Brody"]
    for key, lab, feat in zip(arr.keys, arr.labels, arr.features):
        assert lab == (0 if key.startswith("Aaron") else 1)
        np.testing.assert_allclose(feat, vecs[key] / np.linalg.norm(vecs[key]), atol=1e-6)
    bad = tmp_path / "x.bin"
    bad.write_bytes(struct.pack("4i", 16, 1, 4, 5) + b"\0" * 10)
    with pytest.raises(FeatureFormatError, match="x.bin: header says 16x1"):
        read_megaface_bin(bad)
