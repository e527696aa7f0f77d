"""``mf2m features``: import existing features into the mf2m feature-set format, and validate sets."""

from __future__ import annotations

import argparse
import json


def _import_npy(args: argparse.Namespace) -> int:
    from benchmark.features import import_npy

    out = import_npy(args.npy, args.keys, args.out, args.model, args.labels, args.shard_size, args.dtype)
    print(f"wrote feature set {out}")
    return 0


def _import_megaface(args: argparse.Namespace) -> int:
    from benchmark.features import import_megaface

    out, n = import_megaface(args.root, args.out, args.model, args.suffix, args.identities, args.shard_size, args.dtype)
    print(f"imported {n} .bin files into {out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from benchmark.features import FeatureSet, describe

    for path in args.paths:
        print(json.dumps(describe(FeatureSet(path, verify_checksums=not args.no_checksums))))
    return 0


def register(subparsers, formatter_class) -> None:
    """Add ``mf2m features {import-npy,import-megaface,validate}``."""
    p = subparsers.add_parser(
        "features",
        formatter_class=formatter_class,
        help="import features from other tools; validate feature sets",
        description="Feature sets (format mf2m.features.v2; v1 is read, see docs/protocol.md): one "
        "HDF5 file or a directory with manifest.json + HDF5 shards.",
    )
    sub = p.add_subparsers(dest="features_command", metavar="<action>")
    sub.required = True

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output feature-set directory (manifest.json + shards)")
    common.add_argument("--model", required=True, help="model name stored in the set (must match across roles)")
    common.add_argument("--shard-size", type=int, default=100_000, help="rows per HDF5 shard")
    common.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="storage precision of the features"
    )

    n = sub.add_parser(
        "import-npy",
        parents=[common],
        formatter_class=formatter_class,
        help="import an (n, D) .npy array plus a key list",
        description="Import an (n, D) .npy feature array (read memory-mapped) with a text "
        "file of n keys (one per line), and optionally n labels.",
    )
    n.add_argument("npy", help="the (n, D) .npy feature array")
    n.add_argument("keys", help="text file with one key (image relative path) per line, same order as rows")
    n.add_argument(
        "--labels", default=None, help="labels: .npy int array or text file with one integer per line (default: all -1)"
    )
    n.set_defaults(func=_import_npy)

    m = sub.add_parser(
        "import-megaface",
        parents=[common],
        formatter_class=formatter_class,
        help="import MegaFace devkit per-image .bin feature files",
        description="Import every per-image feature file (OpenCV-mat .bin as written for "
        "the MegaFace devkit) under ROOT. Key = path relative to ROOT minus SUFFIX.",
    )
    m.add_argument("root", help="directory tree of .bin feature files")
    m.add_argument("--suffix", default=".bin", help="file-name ending to import and strip from keys, e.g. _r100.bin")
    m.add_argument(
        "--identities",
        default=None,
        help="identity list (one name per line, line index = label), created/extended; labels "
        "come from each file's parent directory. Share it between probes and mates. "
        "Without it labels are -1 (distractors)",
    )
    m.set_defaults(func=_import_megaface)

    v = sub.add_parser(
        "validate",
        formatter_class=formatter_class,
        aliases=["info"],
        help="check feature sets fully and print a JSON summary",
        description="Read every row of each set: manifest, checksums, counts, model/dim, "
        "NaN/Inf/zero rows, duplicate keys. Exit status 1 on the first error.",
    )
    v.add_argument("paths", nargs="+", help="feature sets (HDF5 file or directory with manifest.json)")
    v.add_argument("--no-checksums", action="store_true", help="skip the shards' sha256 verification")
    v.set_defaults(func=_validate)
