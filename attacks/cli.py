"""``mf2m attack``: put solid/faced masks on probes and run the adversarial attacks (argparse only here)."""

from __future__ import annotations

import argparse

# --option → (attack keyword, type, help). Only options given on the command line are passed on.
HYPER = {
    "eps": (float, "L∞ bound of the noise (images in [0,1]); advnoise-dm and FGSM family: 0.04"),
    "step": (float, "noise step size; advnoise-dm: 0.001; FGSM family: eps/steps"),
    "steps": (int, "noise iterations; advnoise-dm and iterative FGSM family: 40 (FGSM, TI-FGSM: 1)"),
    "alpha": (float, "weight α of the mask-detector cross-entropy in the objective: 1"),
    "random_start": (int, "PGD from a random point of the ε-ball (1) or from the masked image (0): 0"),
    "noise_eps": (float, "mf2m: ε of the PGD noise before filtering: 0.01"),
    "noise_step": (float, "mf2m: PGD step: 0.001"),
    "noise_steps": (int, "mf2m: PGD iterations: 40"),
    "kernel_size": (int, "mf2m: size K of the pixel-wise K×K kernels: 5"),
    "kernel_lr": (float, "mf2m: kernel step size: 0.1"),
    "kernel_steps": (int, "mf2m: kernel iterations: 160"),
    "beta": (float, "mf2m: weight β of the mask-detector term during filtering: 1"),
    "kernel_update": (str, "mf2m: 'raw' (K ← K + lr·∇K, the paper) or 'sign': raw"),
    "kernel_batch": (
        int,
        "mf2m: images whose mean loss the raw kernel step is taken on (each image moves by "
        "lr/kernel_batch × its own gradient, whatever --batch-size is; 1 = per-image loss): 32",
    ),
    "kernel_norm": (
        str,
        "mf2m: kernel normalisation after each step: 'none', 'sum1' (rescale to sum 1) or "
        "'simplex' (non-negative, sum 1: each pixel a convex combination of its neighbours): none",
    ),
    "kernel_bound": (
        float,
        "mf2m: clip every kernel weight's deviation from the identity kernel to ±this (0 = no bound): 0",
    ),
    "momentum": (float, "FGSM family: momentum μ (MI/TI-MI/M-DI²: 1, others 0)"),
    "ti_kernel": (int, "FGSM family: Gaussian TI kernel size (TI methods: 7, others 0 = off)"),
    "di_prob": (float, "FGSM family: input-diversity probability (DI methods: 0.5, others 0)"),
    "di_scale": (float, "FGSM family: DI canvas size relative to the image: 1.1"),
}


def register(sub, formatter_class) -> None:
    """Add ``mf2m attack`` to the ``mf2m`` sub-parsers."""
    p = sub.add_parser(
        "attack",
        formatter_class=formatter_class,
        help="mask probes (solid, DM) and attack them (AdvNoise-DM, MF²M, FGSM family)",
        description="Put a solid-colour medical mask or a Delaunay faced mask (DM) on every probe face and "
        "optionally attack it (AdvNoise-DM, MF²M, or an FGSM-family baseline on the solid mask) "
        "against a white-box recognizer and mask detector. Writes OUT/images/<identity>/<stem>.png, "
        "OUT/regions/…, OUT/probes.csv and OUT/manifest.json; rerun the same command to resume.\n\n"
        "Hyper-parameters default to the paper's settings; the --eps … --di-scale options override "
        "them for the methods they apply to.\n\n"
        "--eot-samples N (any adversarial method) turns on Expectation over Transformation: each "
        "objective is the mean of N forward passes, each drawing the models' randomness anew, for "
        "white-box models that are stochastic (e.g. a recognizer behind a randomized defence); "
        "against deterministic models it only costs N times more (a warning says so). In a `mf2m run` "
        "config the same setting is `eot_samples` under attack.params.<method>; `mf2m defend` "
        "sets it per stochastic defence (docs/defences.md).",
    )
    from attacks import list_attacks

    p.add_argument(
        "--method",
        required=True,
        choices=list_attacks(),
        help="solid / dm: masks only; advnoise-dm, mf2m: attacks on DM; the FGSM family: attacks on the "
        "solid mask; further methods come from installed packages (entry points mf2m.attacks)",
    )
    p.add_argument(
        "--probes",
        required=True,
        help="face folder (root/<identity>/<image>) or identity,path CSV; 112×112 images are taken "
        "as aligned, others are detected and aligned",
    )
    p.add_argument(
        "--templates",
        default=None,
        help="face folder the faced masks are cut from (needed for dm, advnoise-dm, mf2m); "
        "a probe never gets a template of its own identity",
    )
    p.add_argument("--fr", default="sface", help="white-box face recognizer (differentiable) from the model registry")
    p.add_argument(
        "--md", default="mf2m-maskdet", help="white-box mask detector (differentiable) from the model registry"
    )
    p.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="arithmetic of the FR and MD forward+backward (images, gradients, updates and projections "
        "stay float32): auto = float32 until reduced precision is shown to keep the attack's "
        "outcome (BENCHMARKS.md, 'Attack precision'); bf16 runs on any CPU (emulated and slower "
        "without AMX/AVX512-BF16 units); fp16 needs CUDA. Recorded in manifest.json",
    )
    p.add_argument("--batch-size", type=int, default=16, help="probes per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (random start, DI, random colour)")
    p.add_argument("--limit", type=int, default=None, help="only the first N probes (sorted by key)")
    p.add_argument(
        "--mask-colour",
        default="blue",
        choices=("blue", "white", "black", "green", "random"),
        help="colour of the solid medical mask (random: per probe, seeded)",
    )
    p.add_argument(
        "--seamless", action="store_true", help="DM: Poisson (seamless) cloning instead of the feathered overlay"
    )
    p.add_argument(
        "--template-max-residual",
        type=float,
        default=10.0,
        help="reject templates whose landmarks fit the ArcFace 5-point template worse than this many "
        "pixels of the 112×112 crop after a similarity fit (badly aligned or turned faces); "
        "rejected templates are counted in the manifest; 0 = keep all",
    )
    p.add_argument("--feather", type=float, default=2.0, help="width in pixels of the overlay's soft inner edge")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = p.add_argument_group("attack hyper-parameters (defaults: the paper's)")
    for name, (typ, text) in HYPER.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=text)
    group.add_argument(
        "--eot-samples",
        dest="eot_samples",
        type=int,
        default=None,
        metavar="N",
        help="any adversarial method: Expectation over Transformation, the objective averaged "
        "over N forward passes with fresh draws of the models' randomness: 1 (off); "
        "20 is AutoAttack's setting against randomized defences",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the models and run the attack job."""
    import inspect
    import json

    from benchmark.device import resolve_device

    from . import attack_class
    from .masking import RegionSpec
    from .pipeline import AttackJob, run_attack

    params = {k: getattr(args, k) for k in HYPER if getattr(args, k) is not None}
    eot = args.eot_samples
    if eot is not None and eot < 1:
        raise ValueError(f"--eot-samples must be ≥ 1 (1 = no EOT), not {eot}")
    if "random_start" in params:
        params["random_start"] = bool(params["random_start"])
    cls = attack_class(args.method)
    if params and cls is not None:
        accepted = set(inspect.signature(cls.__init__).parameters)
        wrong = sorted(k for k in params if k not in accepted)
        if wrong:
            raise ValueError(
                f"--method {args.method} does not take: {', '.join('--' + w.replace('_', '-') for w in wrong)}"
            )
    if eot is not None:
        if cls is None:
            raise ValueError(f"--method {args.method} is a plain mask: --eot-samples applies to adversarial methods")
        params["eot_samples"] = eot
    job = AttackJob(
        method=args.method,
        probes=args.probes,
        templates=args.templates,
        out=args.out,
        fr=args.fr,
        md=args.md,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        seed=args.seed,
        params=params,
        mask_colour=args.mask_colour,
        seamless=args.seamless,
        region=RegionSpec(feather=args.feather),
        limit=args.limit,
        template_max_residual=args.template_max_residual or None,
        precision=args.precision,
    )
    job.check()
    fr, md = load_models(args.fr, args.md, job.device)
    if eot is not None and eot > 1:
        warn_if_deterministic(fr, md, job.device, eot)
    summary = run_attack(job, fr, md, progress=not args.no_progress)
    print(json.dumps(summary["counts"]))
    return 0


def load_models(fr_name: str, md_name: str, device: str):
    """The white-box recognizer and mask detector by registry name (both must be differentiable)."""
    try:
        from benchmark.models import registry
    except ImportError as exc:
        raise RuntimeError(f"the model registry is not available: {exc}") from None
    fr = registry.create(fr_name)
    md = registry.create(md_name)
    for model, what in ((fr, "--fr"), (md, "--md")):
        if not getattr(model, "differentiable", False):
            raise ValueError(f"{what} {model.name} is not differentiable; the attacks need white-box models")
    return fr, md


def warn_if_deterministic(fr, md, device: str, eot: int) -> bool:
    """Log a warning when two forward passes of the white-box modules agree exactly (EOT would only repeat
    the same pass ``eot`` times); returns whether they were deterministic."""
    import logging

    import torch

    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)).to(device)
    same = True
    with torch.no_grad():
        for model in (fr, md):
            module = model.torch_module(device).eval()
            same = same and torch.equal(module(x), module(x))
    if same:
        logging.getLogger(__name__).warning(
            "--eot-samples %d: %s and %s give identical outputs on repeated passes, so EOT averages %d copies of "
            "the same objective (the same attack at %d× the cost)",
            eot,
            fr.name,
            md.name,
            eot,
            eot,
        )
    return same
