"""Masking and adversarial attacks: solid mask, DM, AdvNoise-DM, MF²M and the FGSM-family baselines.

Library use (torchattacks-style)::

    from attacks import create
    attack = create("mf2m", fr_module, md_module, kernel_steps=160)
    adv = attack(images, regions, reference_features_or_images)

Importing this package is cheap (torch is imported only when an attack class is first used).
"""

from __future__ import annotations

from typing import Any

#: every ``--method`` of ``mf2m attack``: name → (module, class name or None for the non-adversarial masks)
METHODS: dict[str, tuple[str, str | None]] = {
    "solid": ("attacks.masking", None),
    "dm": ("attacks.masking", None),
    "advnoise-dm": ("attacks.advnoise", "AdvNoise"),
    "mf2m": ("attacks.mf2m", "MF2M"),
    "fgsm": ("attacks.fgsm", "FGSM"),
    "i-fgsm": ("attacks.fgsm", "IFGSM"),
    "mi-fgsm": ("attacks.fgsm", "MIFGSM"),
    "ti-fgsm": ("attacks.fgsm", "TIFGSM"),
    "ti-mi-fgsm": ("attacks.fgsm", "TIMIFGSM"),
    "di2-fgsm": ("attacks.fgsm", "DI2FGSM"),
    "m-di2-fgsm": ("attacks.fgsm", "MDI2FGSM"),
}

#: which masked image each method starts from
BASE_OF = {"solid": "solid", "dm": "dm", "advnoise-dm": "dm", "mf2m": "dm",
           **{m: "solid" for m in ("fgsm", "i-fgsm", "mi-fgsm", "ti-fgsm", "ti-mi-fgsm", "di2-fgsm", "m-di2-fgsm")}}


def attack_class(method: str):
    """The attack class of an adversarial ``method`` (``None`` for ``solid`` and ``dm``)."""
    import importlib
    if method not in METHODS:
        raise ValueError(f"unknown attack method {method!r}; choose from {', '.join(METHODS)}")
    module, cls = METHODS[method]
    return getattr(importlib.import_module(module), cls) if cls else None


def check_params(method: str, params: dict[str, Any], where: str = "") -> None:
    """Reject hyper-parameters ``method``'s attack class does not take (a misspelt ``kernel_step``), naming them
    and the closest known name, before anything runs; ``seed`` is the job's, never a per-method parameter."""
    import difflib
    import inspect
    place = f"{where}: " if where else ""
    if not isinstance(params, dict):
        raise ValueError(f"{place}expected a mapping of {method} hyper-parameters, got {type(params).__name__}")
    cls = attack_class(method)
    if cls is None:
        if params:
            raise ValueError(f"{place}{method} is a plain mask: it has no hyper-parameters ({', '.join(params)})")
        return
    sig = inspect.signature(cls.__init__)
    known = sorted({n for n, p in sig.parameters.items()
                    if p.kind == p.KEYWORD_ONLY and n != "seed"} | {"eot_samples"})
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            extra = "; set the attack's seed instead" if name == "seed" else ""
            raise ValueError(f"{place}unknown {method} hyper-parameter {name!r}{hint}{extra}; "
                             f"{method} takes: {', '.join(known)}")


def create(method: str, fr: Any, md: Any = None, **params: Any):
    """An attack object for ``method`` on differentiable ``fr``/``md`` modules, paper defaults unless overridden."""
    cls = attack_class(method)
    if cls is None:
        raise ValueError(f"{method!r} is a mask, not an adversarial attack: use attacks.masking")
    from .base import set_eot
    eot = params.pop("eot_samples", 1)          # Expectation over Transformation (see Attack.eot_samples)
    return set_eot(cls(fr, md, **params), eot)


def __getattr__(name: str):
    lazy = {"Attack": "attacks.base", "AdvNoise": "attacks.advnoise", "MF2M": "attacks.mf2m",
            "FGSM": "attacks.fgsm", "IFGSM": "attacks.fgsm", "MIFGSM": "attacks.fgsm", "TIFGSM": "attacks.fgsm",
            "TIMIFGSM": "attacks.fgsm", "DI2FGSM": "attacks.fgsm", "MDI2FGSM": "attacks.fgsm"}
    if name in lazy:
        import importlib
        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(name)
