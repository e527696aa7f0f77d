"""``benchmark.embed.embed`` on faces in memory gives the features ``mf2m embed`` stores for the same crops."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.data.images import read_image, write_png
from benchmark.features import FeatureSet


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Three aligned 112×112 faces: insightface's Tom Hanks crop, its mirror and a brighter copy."""
    images = Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0]) / "data" / "images"
    face = read_image(images / "Tom_Hanks_54745.png")
    assert face.shape == (112, 112, 3)
    brighter = np.clip(face.astype(int) + 40, 0, 255).astype(np.uint8)
    return np.stack([face, np.ascontiguousarray(face[:, ::-1]), brighter])


@pytest.mark.parametrize("flip", [False, True])
def test_embed_in_memory_equals_mf2m_embed(tmp_path, faces, flip):
    from benchmark.embed import embed

    rows = ["identity,path,key,aligned"]
    for i, face in enumerate(faces):
        write_png(tmp_path / "faces" / f"f{i}.png", face)
        rows.append(f"hanks,{tmp_path / 'faces' / f'f{i}.png'},f{i},1")
    (tmp_path / "faces.csv").write_text("\n".join(rows) + "\n")
    args = [
        "embed",
        "--data",
        f"csv:{tmp_path / 'faces.csv'}",
        "--model",
        "sface",
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(args + (["--flip"] if flip else [])) == 0
    stored = FeatureSet(str(tmp_path / "out")).load(progress=False)
    ours = embed(faces, "sface", device="cpu", precision="fp32", flip=flip)
    order = [list(stored.keys).index(f"f{i}") for i in range(len(faces))]
    assert ours.shape == (3, stored.features.shape[1]) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, stored.features[order], atol=1e-6)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert float(ours[0] @ ours[2]) < 0.9999  # different faces, different features


def test_embed_rejects_unaligned_input():
    from benchmark.embed import embed

    with pytest.raises(ValueError, match="aligned faces"):
        embed(np.zeros((2, 100, 100, 3), np.uint8), "sface", device="cpu")
