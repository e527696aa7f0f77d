"""Masking and adversarial attacks: solid mask, DM, AdvNoise-DM, MF²M and the FGSM-family baselines.

Library use (torchattacks-style)::

    from attacks import create
    attack = create("mf2m", fr_module, md_module, kernel_steps=160)
    adv = attack(images, regions, reference_features_or_images)

Importing this package is cheap (torch is imported only when an attack class is first used).
"""

from __future__ import annotations

from typing import Any

from benchmark.plugins import Registry

__all__ = ["ATTACKS", "attack_class", "base_of", "check_params", "create", "is_adversarial", "list_attacks", "register"]

#: every ``--method`` of ``mf2m attack``: the built-ins below, then those of installed packages (entry-point
#: group ``mf2m.attacks``, each naming an :class:`attacks.base.Attack` subclass)
ATTACKS = Registry("attack method", group="mf2m.attacks")


def register(name: str, target: Any = None, *, base: str | None = None, replace: bool = False):
    """Register an attack class under ``name`` (a decorator without ``target``).

    ``base`` is the masked image the attack starts from: ``"solid"`` (a solid-colour mask) or ``"dm"``
    (a faced mask cut from a template); by default the class's ``base`` attribute.
    """
    if base is not None and base not in ("solid", "dm"):
        raise ValueError(f"attack {name!r}: base must be 'solid' or 'dm', not {base!r}")
    info = {"base": base} if base else {}
    return ATTACKS.register(name, target, replace=replace, **info)


# the plain masks, then the attacks in the order of the paper's tables
ATTACKS.register("solid", "attacks.masking:solid_mask", base="solid", mask=True)
for _name, _cls in (
    ("fgsm", "FGSM"),
    ("i-fgsm", "IFGSM"),
    ("mi-fgsm", "MIFGSM"),
    ("ti-fgsm", "TIFGSM"),
    ("ti-mi-fgsm", "TIMIFGSM"),
    ("di2-fgsm", "DI2FGSM"),
    ("m-di2-fgsm", "MDI2FGSM"),
):
    register(_name, f"attacks.fgsm:{_cls}", base="solid")
ATTACKS.register("dm", "attacks.masking:delaunay_mask", base="dm", mask=True)
register("advnoise-dm", "attacks.advnoise:AdvNoise", base="dm")
register("mf2m", "attacks.mf2m:MF2M", base="dm")
del _name, _cls


def list_attacks(builtin_only: bool = False) -> list[str]:
    """Every ``--method`` name: built-ins first, then installed plug-ins (``builtin_only``: built-ins only)."""
    return ATTACKS.names(builtin_only)


def attack_class(method: str):
    """The attack class of an adversarial ``method`` (``None`` for the plain masks ``solid`` and ``dm``)."""
    entry = ATTACKS.entry(method)
    if entry.info.get("mask"):
        return None
    cls = entry.load()
    if not isinstance(cls, type) or not callable(getattr(cls, "forward", None)):
        raise ValueError(f"attack {method!r} ({entry.origin}) is {cls!r}, not an attacks.base.Attack subclass")
    return cls


def base_of(method: str) -> str:
    """The masked image ``method`` starts from: ``"solid"`` or ``"dm"``."""
    entry = ATTACKS.entry(method)
    base = entry.info.get("base") or getattr(attack_class(method), "base", "solid")
    if base not in ("solid", "dm"):
        raise ValueError(f"attack {method!r} ({entry.origin}): base must be 'solid' or 'dm', not {base!r}")
    return base


def is_adversarial(method: str) -> bool:
    """Whether ``method`` is an attack on the models (not a plain mask)."""
    return not ATTACKS.entry(method).info.get("mask")


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
    known = sorted({n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY and n != "seed"} | {"eot_samples"})
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            extra = "; set the attack's seed instead" if name == "seed" else ""
            raise ValueError(
                f"{place}unknown {method} hyper-parameter {name!r}{hint}{extra}; {method} takes: {', '.join(known)}"
            )


def create(method: str, fr: Any, md: Any = None, **params: Any):
    """An attack object for ``method`` on differentiable ``fr``/``md`` modules, paper defaults unless overridden."""
    cls = attack_class(method)
    if cls is None:
        raise ValueError(f"{method!r} is a mask, not an adversarial attack: use attacks.masking")
    from .base import set_eot

    eot = params.pop("eot_samples", 1)  # Expectation over Transformation (see Attack.eot_samples)
    return set_eot(cls(fr, md, **params), eot)


def __getattr__(name: str):
    lazy = {
        "Attack": "attacks.base",
        "AdvNoise": "attacks.advnoise",
        "MF2M": "attacks.mf2m",
        "FGSM": "attacks.fgsm",
        "IFGSM": "attacks.fgsm",
        "MIFGSM": "attacks.fgsm",
        "TIFGSM": "attacks.fgsm",
        "TIMIFGSM": "attacks.fgsm",
        "DI2FGSM": "attacks.fgsm",
        "MDI2FGSM": "attacks.fgsm",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(name)
