"""The mf2m feature-set format (``mf2m.features.v2``; ``v1`` is read too): reading and validation (``sets``),
writing (``writing``) and importers of other tools' features (``importers``).

A *feature set* is either one HDF5 file or a directory holding ``manifest.json`` plus HDF5 shards.
Every HDF5 file holds

* ``features``: (n, D) float16 or float32, one row per image (re-normalised to unit L2 on load, in float32:
  each row divided by ``float32(sqrt(Σ x_i²))``, the sum taken in float64 — see ``row_norms``);
* ``keys``: (n,) UTF-8 strings, the image's relative path or unique name;
* ``labels``: (n,) int64 identity index, -1 where unknown;
* file attributes ``model`` (string) and ``dim`` (int);
* (v2, optional) ``identities``: (n,) UTF-8 identity name of each row ("" where unknown), and ``sources``:
  (n,) UTF-8 key of the clean image an attacked probe was made from ("" where none).  ``mf2m search``
  pairs probes with mates by these names and never pairs a probe with its own source.

``manifest.json``::

    {"format": "mf2m.features.v2", "model": "...", "dim": 512, "count": 1000000,
     "shards": [{"path": "part-00000.h5", "count": 100000, "sha256": "..."}, ...]}

Shard paths are relative to the manifest's directory.

Writer API (used by the embed stage)::

    from benchmark.features import write_feature_file, write_manifest, FeatureSetWriter

    write_feature_file("probes.h5", feats, keys, labels, model="arcface-r100")   # one atomic file
    with FeatureSetWriter("gallery/", model="arcface-r100", dim=512, shard_size=100_000) as w:
        for feats, keys, labels in batches:      # any batch size; shards are cut at shard_size
            w.add(feats, keys, labels)
    # -> gallery/part-00000.h5, ..., gallery/manifest.json (written last, atomically)
    write_manifest("gallery/", model, dim, ["part-00000.h5", ...])   # (re)build a manifest

Reading: ``FeatureSet(path)`` checks the manifest (format, counts, checksums, model/dim of every
shard) and streams rows with ``iter_blocks``; ``load`` returns everything as arrays.  Every
problem raises ``FeatureFormatError`` (a ``ValueError``) naming the offending file.
"""

from .importers import import_megaface, import_npy, read_megaface_bin
from .sets import (
    FORMAT,
    MANIFEST,
    NAME_COLUMNS,
    READ_FORMATS,
    FeatureArrays,
    FeatureBlock,
    FeatureFormatError,
    FeatureSet,
    Shard,
    UnitRows,
    check_compatible,
    check_keys,
    check_unique_keys,
    describe,
    normalize_rows,
    read_lines,
    row_norms,
)
from .writing import FeatureSetWriter, write_feature_file, write_manifest

__all__ = [
    "FORMAT",
    "MANIFEST",
    "NAME_COLUMNS",
    "READ_FORMATS",
    "FeatureArrays",
    "FeatureBlock",
    "FeatureFormatError",
    "FeatureSet",
    "FeatureSetWriter",
    "Shard",
    "UnitRows",
    "check_compatible",
    "check_keys",
    "check_unique_keys",
    "describe",
    "import_megaface",
    "import_npy",
    "normalize_rows",
    "read_lines",
    "read_megaface_bin",
    "row_norms",
    "write_feature_file",
    "write_manifest",
]
