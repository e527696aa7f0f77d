"""``mf2m run`` and ``mf2m demo`` (argparse only at import time)."""

from __future__ import annotations

import argparse


def register(sub, formatter) -> None:
    """Add the ``run`` and ``demo`` sub-commands."""
    r = sub.add_parser(
        "run",
        formatter_class=formatter,
        help="run an experiment config: prepare → attack → embed → search → report",
        epilog="""\
the split (benchmark/data/split.py):
  probes       data.identities people with >= data.min_images images, up to data.max_images each
  templates    DM templates, one image each of data.templates other people; they take at most
               data.template_share (default 0.1) of the non-probe people, so a small folder keeps
               its gallery; data.templates_from=DIR takes them from another folder instead and the
               gallery keeps everyone
  distractors  everyone else (a probe person's leftover images never); data.distractors caps them
Requested vs obtained sizes and the reasons are logged, stored in split.json and run.json (split)
and shown in the report captions; a shortfall of more than 10 % is a terminal warning and a note on
the report page, an error with --strict (data.strict: true).""",
        description="Run every stage of a YAML experiment config (configs/table1.yaml, configs/table2.yaml, "
        "configs/demo.yaml): prepare the faces, split probes/templates/distractors, attack each "
        "method, embed, search, report. Each stage output is cached under the config's cache folder "
        "(cache:, default .cache/mf2m; $MF2M_CACHE overrides) by a hash of "
        "its settings and its inputs, so a rerun reuses everything unchanged and a killed run "
        "resumes where it stopped. With store: DIR in the config (configs/evidence.yaml), every finished "
        "attack and probe embedding is also copied to DIR without its images; commit DIR and the same "
        "command continues a long run on a fresh checkout. OUT/run.json lists what was evaluated; "
        "OUT/report/ holds the tables and the HTML page.",
    )
    r.add_argument("config", help="YAML experiment config")
    r.add_argument(
        "--data",
        default=None,
        help="dataset spec or face folder overriding the config's data.spec (e.g. lfw:/data/lfw); "
        "default: the config's, else $MF2M_DATA",
    )
    r.add_argument("--out", default=None, help="output folder (default: the config's out, else results/<name>)")
    r.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the config's, else auto)")
    r.add_argument("--methods", nargs="+", default=None, help="only these methods of the config")
    r.add_argument(
        "--set",
        nargs="+",
        default=None,
        metavar="SECTION.KEY=VALUE",
        dest="overrides",
        help="override config values (VALUE is YAML), e.g. --set data.identities=20 "
        "data.max_images=2 'attack.params={mf2m: {kernel_steps: 80}}'; unknown keys are errors",
    )
    r.add_argument(
        "--strict",
        action="store_true",
        help="stop with an error, before any attack, embedding or search (and, when the plan already "
        "falls short, before face preparation), if the split gets more than 10%% fewer probe "
        "identities, templates or distractors than the config asks for, or face preparation "
        "loses more than 10%% of a role (same as data.strict: true). Without it the run goes on, "
        "warns on the terminal and notes the shortfall on the report page",
    )
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.set_defaults(func=_run)

    d = sub.add_parser(
        "demo",
        formatter_class=formatter,
        help="the whole pipeline on a small built-in setting (offline, minutes)",
        description="Run configs/demo.yaml (shipped inside the package): a few identities, all masking methods "
        "with short attacks, SFace white-box, dlib black-box, and the report. Without --data (and "
        "without $MF2M_DATA) it uses the handful of face photos that ship inside installed packages "
        "(insightface, face_recognition_models) — enough to see every stage work, far too few for "
        "meaningful numbers. With --data it uses a real face folder such as LFW.",
    )
    d.add_argument(
        "--data",
        default=None,
        help="face folder (ROOT/<identity>/<image>) or dataset spec such as lfw:/data/lfw "
        "(default: $MF2M_DATA, else the faces shipped inside installed packages)",
    )
    d.add_argument("--out", default="results/demo", help="output folder")
    d.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    d.add_argument("--config", default=None, help="another config instead of the built-in demo config")
    d.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="run only these masking methods (e.g. none solid dm for a quick check; default: all twelve)",
    )
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_demo)


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .run import run_pipeline

    cfg = load_config(
        args.config, data=args.data, out=args.out, device=args.device, methods=args.methods, overrides=args.overrides
    )
    if args.strict:
        cfg.data.strict = True
    result = run_pipeline(cfg, progress=not args.no_progress)
    print(f"run {cfg.name}: {result['summary']} → {cfg.out}/report/index.html")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        data=args.data,
        out=args.out,
        device=args.device,
        config=args.config,
        progress=not args.no_progress,
        methods=args.methods,
    )
    return 0
