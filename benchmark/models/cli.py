"""``mf2m models``: list every model (recognizers, mask detectors, landmarkers, detectors) with whether
it can be used here, and if not why and how to get it. argparse only at import time."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub, formatter) -> None:
    """Add the ``models`` sub-command."""
    p = sub.add_parser(
        "models", formatter_class=formatter,
        help="list models: recognizers, mask detectors, landmarkers, detectors (available or missing, and why)",
        description="Every model mf2m knows, with its kind, whether it is available here and, if not, why and\n"
                    "how to get it. Nothing is downloaded. User weights come from --weights PATH on the commands\n"
                    "that build models, from $MF2M_WEIGHTS_<NAME> (e.g. MF2M_WEIGHTS_IRESNET50), or from files in\n"
                    "$MF2M_MODELS_DIR (e.g. $MF2M_MODELS_DIR/iresnet50.pth, $MF2M_MODELS_DIR/buffalo_l/w600k_r50.onnx).\n"
                    "Names ending in ':' take a path: arcface-onnx:/path/w600k_r50.onnx, iresnet:/path/backbone.pth.")
    p.add_argument("--kind", choices=("recognizer", "mask-detector", "landmarker", "detector"), default=None,
                   help="list only models of this kind")
    p.add_argument("--json", action="store_true", help="print the list as JSON (all fields)")
    p.add_argument("--check", action="store_true",
                   help="also build each available model (loads its weights; slower) to prove it works")
    p.add_argument("--models-dir", default=None,
                   help="folder of user weights (overrides $MF2M_MODELS_DIR for this command)")
    p.set_defaults(func=_run)


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
        rows.append({"name": spec.name + ("PATH" if spec.parametric else ""), "kind": spec.kind,
                     "available": ok, "reason": reason, "description": spec.description,
                     "weights": spec.weights, "preprocessing": spec.preprocessing,
                     "differentiable": spec.differentiable, "env_var": spec.env_var,
                     "files_in_models_dir": list(spec.files), "module": spec.module})
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table: name, kind, white-box flag, status and reason."""
    header = ("NAME", "KIND", "GRAD", "STATUS", "WHY / HOW TO GET")
    body = [(r["name"], r["kind"], "yes" if r["differentiable"] else "-",
             "available" if r["available"] else "missing", r["reason"]) for r in rows]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in [header, *body]]
    n_ok = sum(r["available"] for r in rows)
    lines.append(f"\n{n_ok} of {len(rows)} models available. GRAD = differentiable (usable in white-box attacks).")
    return "\n".join(lines)
