"""``mf2m models``: list every model (recognizers, mask detectors, landmarkers, detectors) with whether
it can be used here, and if not why and how to get it, plus the verified SHA-256 of every model file
present; ``mf2m models fetch NAME…`` downloads the paper's models. argparse only at import time."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub, formatter) -> None:
    """Add the ``models`` sub-command."""
    p = sub.add_parser(
        "models",
        formatter_class=formatter,
        help="list models: recognizers, mask detectors, landmarkers, detectors (available or missing, and why)",
        description="Every model mf2m knows, with its kind, whether it is available here and, if not, why and\n"
        "how to get it, and the verified SHA-256 of each model file present. Nothing is downloaded\n"
        "(use `mf2m models fetch NAME` for that). User weights come from --weights PATH on the commands\n"
        "that build models, from $MF2M_WEIGHTS_<NAME> (e.g. MF2M_WEIGHTS_IRESNET50), or from files in\n"
        "$MF2M_MODELS_DIR (e.g. $MF2M_MODELS_DIR/iresnet50.pth, $MF2M_MODELS_DIR/buffalo_l/w600k_r50.onnx).\n"
        "Names ending in ':' take a path: arcface-onnx:/path/w600k_r50.onnx, iresnet:/path/backbone.pth.",
    )
    p.add_argument(
        "--kind",
        choices=("recognizer", "mask-detector", "landmarker", "detector"),
        default=None,
        help="list only models of this kind",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON (all fields)")
    p.add_argument(
        "--check",
        action="store_true",
        help="also build each available model (loads its weights; slower) to prove it works",
    )
    p.add_argument(
        "--models-dir", default=None, help="folder of user weights (overrides $MF2M_MODELS_DIR for this command)"
    )
    p.set_defaults(func=_run)
    sub_models = p.add_subparsers(dest="models_command", metavar="[fetch]")
    _register_fetch(sub_models, formatter)


def _register_fetch(sub, formatter) -> None:
    from .catalog import fetchable_names

    f = sub.add_parser(
        "fetch",
        formatter_class=formatter,
        help="download the paper's models (insightface packs, arcface_torch, RetinaNet) into the models folder",
        description="Download model files from their public URLs into $MF2M_MODELS_DIR (or --models-dir), where\n"
        "`mf2m models` and every command look for weights. Shows a progress bar, resumes a partial\n"
        "download (kept as FILE.part), and checks the SHA-256: against the published hash where one\n"
        "exists (a mismatch removes the file), otherwise against the hash recorded on the first\n"
        "download (recorded with a warning). Zip packs are unpacked into a folder of their own,\n"
        "refusing members that would land outside it. Hashes are kept in mf2m-hashes.json there.\n"
        "Models published only behind cloud-drive pages (arcface_torch IResNets, the RetinaNet\n"
        "face-mask checkpoint) print where to download them; then use --from.\n\n"
        "Names: " + ", ".join(fetchable_names()),
    )
    f.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="models or packs to fetch (e.g. w600k_r50, glintr100, 2d106, scrfd, buffalo_l)",
    )
    f.add_argument(
        "--all",
        action="store_true",
        help="fetch everything that has a public URL (with --from: from that mirror folder or base URL); "
        "the others are listed with how to get them",
    )
    f.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="URL",
        help="fetch from this mirror or air-gapped copy instead: a file (path, file:// or http(s) URL) "
        "for one NAME, or a folder / base URL ending in '/' holding the files under their "
        "original names (e.g. buffalo_l.zip); the same SHA-256 check applies",
    )
    f.add_argument(
        "--models-dir",
        dest="fetch_models_dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="folder to put the files in (when not given: $MF2M_MODELS_DIR)",
    )
    f.add_argument("--force", action="store_true", help="download again even when the files are present and verified")
    f.add_argument(
        "--retries",
        type=int,
        default=3,
        help="times a download cut mid-file is resumed before giving up (the .part file is kept)",
    )
    f.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server before failing")
    f.add_argument("--no-progress", action="store_true", help="hide progress bars")
    f.set_defaults(func=_run_fetch)


def _run_fetch(args: argparse.Namespace) -> int:
    """Fetch each name; print what was done and the hashes; exit 1 if any failed."""
    import os

    from . import catalog, registry
    from .fetch import FetchError, fetch

    folder = (
        getattr(args, "fetch_models_dir", None)
        or getattr(args, "models_dir", None)
        or os.environ.get(registry.MODELS_DIR_ENV)
    )
    if not folder:
        raise ValueError(
            f"no models folder: set ${registry.MODELS_DIR_ENV} (the folder every mf2m command looks "
            f"in for weights, e.g. export {registry.MODELS_DIR_ENV}=~/mf2m-models) or pass --models-dir"
        )
    if args.all == bool(args.names):
        raise ValueError("give model names or --all (see `mf2m models fetch --help` for the names)")
    arts = []
    for name in args.names or [a.name for a in catalog.CATALOG.values() if a.url]:
        art = catalog.resolve(name)
        if art not in arts:
            arts.append(art)
    if args.source and len(arts) > 1 and not _is_folder_source(args.source):
        raise ValueError(
            "--from with a single file fetches one NAME; for several, give a folder or a base URL ending in '/'"
        )
    failed = 0
    for art in arts:
        try:
            result = fetch(
                art,
                folder,
                source=args.source,
                progress=not args.no_progress,
                force=args.force,
                retries=args.retries,
                timeout=args.timeout,
            )
        except FetchError as exc:
            print(f"mf2m models fetch: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        check = "published SHA-256 verified" if result.pinned else "no published SHA-256: hash recorded, not verified"
        print(f"{art.name}: {result.status} in {folder} ({check})")
        for rel, digest in result.files.items():
            print(f"  {rel}  sha256 {digest}")
        if art.note and result.status == "downloaded":
            print(f"  note: {art.note}")
    if args.all:
        manual = [a for a in catalog.CATALOG.values() if not a.url]
        if manual:
            print("\nNot fetched (no public URL; download by hand, then `mf2m models fetch NAME --from FILE`):")
            for a in manual:
                print(f"  {a.name}: {a.manual.format(dir=folder)}")
    return 1 if failed else 0


def _is_folder_source(source: str) -> bool:
    from pathlib import Path

    return source.endswith("/") or Path(source).expanduser().is_dir()


def _run(args: argparse.Namespace) -> int:
    """Print the table (or JSON); exit 0."""
    import os

    from . import registry

    if args.models_dir:
        os.environ[registry.MODELS_DIR_ENV] = args.models_dir
    rows = model_rows(args.kind, check=args.check)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        hashes = format_hashes(rows)
        if hashes:
            print(hashes)
        errors = registry.provider_errors()
        for module, err in errors.items():
            print(f"warning: model module {module} failed to import: {err}", file=sys.stderr)
    return 0


def model_rows(kind: str | None = None, check: bool = False) -> list[dict]:
    """One dict per registered model: name, kind, available, reason, and the entry's details."""
    from . import registry

    rows = []
    for spec in registry.list_models(kind):
        ok, reason = registry.status(spec.name)
        if check and ok and not spec.parametric:
            try:
                registry.create(spec.name, device="cpu")
                reason += " (loaded OK)"
            except Exception as exc:  # report, never crash the listing
                ok, reason = False, f"failed to load: {type(exc).__name__}: {exc}"
        digest, state = _weights_hash(spec) if ok else (None, None)
        if not ok and not spec.parametric:
            reason += _fetch_hint(spec.name)
        rows.append(
            {
                "name": spec.name + ("PATH" if spec.parametric else ""),
                "kind": spec.kind,
                "available": ok,
                "reason": reason,
                "sha256": digest,
                "hash_check": state,
                "description": spec.description,
                "weights": spec.weights,
                "preprocessing": spec.preprocessing,
                "differentiable": spec.differentiable,
                "env_var": spec.env_var,
                "files_in_models_dir": list(spec.files),
                "module": spec.module,
            }
        )
    return rows


def _weights_hash(spec) -> tuple[str | None, str | None]:
    """SHA-256 and check state of the user weights file a model resolves to (None for packaged models)."""
    from . import catalog, hashes, registry

    try:
        path, _ = registry.resolve_weights(spec)
    except Exception:
        return None, None
    if path is None:
        return None, None
    digest, state = hashes.file_hash(path, registry.models_dir())
    if state == "unrecorded" and digest in catalog.published_hashes():
        state = "published"
    return digest, state


def _fetch_hint(name: str) -> str:
    from . import catalog

    try:
        art = catalog.resolve(name)
    except ValueError:
        return ""
    return f" Or: mf2m models fetch {name}" + ("" if art.url else " --from FILE")


HASH_STATES = {
    "pinned": "matches the published hash",
    "published": "matches the published hash",
    "recorded": "matches the hash recorded on first download (none published)",
    "unrecorded": "not fetched by mf2m: nothing to compare with",
    "changed": "CHANGED since it was downloaded",
}


def format_hashes(rows: list[dict]) -> str:
    """The verified SHA-256 of every model file present (empty string when there is none)."""
    present = [r for r in rows if r.get("sha256")]
    if not present:
        return ""
    width = max(len(r["name"]) for r in present)
    lines = ["\nSHA-256 of the model files present:"]
    lines += [
        f"{r['name'].ljust(width)}  {r['sha256']}  {HASH_STATES.get(r['hash_check'], r['hash_check'])}" for r in present
    ]
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    """A plain-text table: name, kind, white-box flag, status and reason."""
    header = ("NAME", "KIND", "GRAD", "STATUS", "WHY / HOW TO GET")
    body = [
        (
            r["name"],
            r["kind"],
            "yes" if r["differentiable"] else "-",
            "available" if r["available"] else "missing",
            r["reason"],
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in [header, *body]]
    n_ok = sum(r["available"] for r in rows)
    lines.append(f"\n{n_ok} of {len(rows)} models available. GRAD = differentiable (usable in white-box attacks).")
    return "\n".join(lines)
