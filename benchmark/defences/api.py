"""The defence plug-in API: the four kinds of defence, the ``Defence`` record, loading and wrapping.

Kinds (subclass one and return an instance from a factory callable):

* :class:`InputTransform` — changes aligned faces before recognition and/or mask detection
  (JPEG, blur, bit-depth reduction, …). ``apply`` is the real defence on ``uint8`` batches;
  ``surrogate`` is a differentiable torch version (exact, or an approximation such as the identity
  for BPDA). :meth:`InputTransform.torch_module` combines both: its *forward value* is the real
  defence, its *gradient* that of the surrogate (straight-through), so adaptive attacks optimise
  against exactly what is evaluated.
* :class:`RecognitionPolicy` — an input transform that only the recognizer sees and that changes
  what part of the face is used (e.g. the upper face only).
* :class:`ReplacementRecognizer` / :class:`ReplacementMaskDetector` — build another model in place
  of the benchmark's default one.

A defence is named on the command line as ``module:callable[:key=value,…]`` or by its name in the registry
``benchmark.defences.DEFENCES`` (the built-ins, then entry points of the ``mf2m.defences`` group), optionally
followed by ``:key=value,…``. The callable is called with the parsed keyword arguments (int, float, bool or
str) and returns a defence object.

:func:`defend` applies a :class:`Defence` to a recognizer and a mask detector and returns new
``Recognizer``/``MaskDetector`` objects whose name and ``weights_hash`` include the defence and its
parameters, so feature sets made with and without a defence never pass as the same model.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import json
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.base import MaskDetector, Recognizer
from ..plugins import Entry
from . import DEFENCES

TARGETS = ("both", "recognition", "detection")
KINDS = ("input-transform", "recognition-policy", "replacement-recognizer", "replacement-mask-detector")


# --------------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------------


def check_faces(faces: np.ndarray) -> np.ndarray:
    """Validate aligned faces ``(n, H, W, 3)`` uint8 (a single face gets a batch axis)."""
    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[3] != 3:
        raise ValueError(f"a defence takes aligned faces (n, H, W, 3) uint8 RGB, got {faces.shape} {faces.dtype}")
    return faces


class InputTransform:
    """A transform of aligned faces applied before recognition and/or detection.

    Subclasses set ``name`` and implement :meth:`apply_one` (or :meth:`apply` for whole batches) and,
    when they can, :meth:`surrogate`. ``gradient`` says how good the surrogate's gradient is:
    ``"exact"`` (the surrogate *is* the transform, up to 8-bit rounding), ``"approximate"`` (a smooth
    stand-in) or ``"bpda-identity"`` (backward pass through the identity, Athalye et al. 2018).
    ``apply_to`` is one of ``both``, ``recognition``, ``detection``.

    A transform with randomness sets ``stochastic = True``; adaptive attacks then use Expectation over
    Transformation (the objective averaged over fresh draws). If its ``apply`` is deterministic per face
    (seeded by the face, like :class:`~benchmark.defences.reference.RandomResizePad`), it overrides
    :meth:`sample` to return one fresh draw of its randomness.
    """

    name: str = "transform"
    kind: str = "input-transform"
    gradient: str = "bpda-identity"
    stochastic: bool = False

    def __init__(self, apply_to: str = "both"):
        if apply_to not in TARGETS:
            raise ValueError(f"apply_to must be one of {', '.join(TARGETS)}, not {apply_to!r}")
        self.apply_to = apply_to

    def params(self) -> dict[str, Any]:
        """The parameters that define this transform (recorded in manifests and model names)."""
        return {"apply_to": self.apply_to}

    def apply_one(self, face: np.ndarray) -> np.ndarray:
        """The defence on one ``(H, W, 3)`` uint8 face (subclasses override this or :meth:`apply`)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither apply_one nor apply")

    def apply(self, faces: np.ndarray) -> np.ndarray:
        """The defence on a batch ``(n, H, W, 3)`` uint8 → same shape, uint8."""
        faces = check_faces(faces)
        out = np.empty_like(faces)
        for i, face in enumerate(faces):
            out[i] = self.apply_one(face)
        return out

    def surrogate(self, x: Any) -> Any:
        """Differentiable version on ``(n, 3, H, W)`` float RGB in [0, 1] (default: the identity, BPDA)."""
        return x

    def sample(self, rng: np.random.Generator) -> InputTransform:
        """One draw of this transform's randomness, as a transform whose ``apply``/``surrogate`` use it.

        The default returns ``self``: right for deterministic transforms, and for stochastic ones whose
        ``apply`` draws anew on every call. Transforms whose randomness is seeded (per face or by a
        parameter) return a copy with the seed taken from ``rng``.
        """
        return self

    def torch_module(self) -> Any:
        """A ``torch.nn.Module``: forward value = :meth:`apply` (on the 8-bit rounded input), gradient = :meth:`surrogate`'s."""
        return _straight_through_class()(self)

    @property
    def affects_recognition(self) -> bool:
        """Whether the recognizer sees the transformed faces."""
        return self.apply_to in ("both", "recognition")

    @property
    def affects_detection(self) -> bool:
        """Whether the mask detector sees the transformed faces."""
        return self.apply_to in ("both", "detection")


class RecognitionPolicy(InputTransform):
    """A change of what the recognizer looks at (e.g. the upper face only); the mask detector is untouched."""

    kind = "recognition-policy"

    def __init__(self):
        super().__init__(apply_to="recognition")

    def params(self) -> dict[str, Any]:
        """Parameters of the policy (no ``apply_to``: a policy always targets recognition)."""
        return {}


class ReplacementRecognizer(abc.ABC):
    """A defence that swaps the recognizer for another (e.g. an adversarially trained one)."""

    name: str = "replacement-recognizer"
    kind: str = "replacement-recognizer"
    stochastic: bool = False  # True: the model's torch module draws its randomness anew on each call

    @abc.abstractmethod
    def create(self, device: str = "auto") -> Recognizer:
        """Build the replacement recognizer."""

    def params(self) -> dict[str, Any]:
        """Parameters recorded in manifests."""
        return {}


class ReplacementMaskDetector(abc.ABC):
    """A defence that swaps the mask detector for another (e.g. one trained on faced masks)."""

    name: str = "replacement-mask-detector"
    kind: str = "replacement-mask-detector"
    stochastic: bool = False  # True: the model's torch module draws its randomness anew on each call

    @abc.abstractmethod
    def create(self, device: str = "auto") -> MaskDetector:
        """Build the replacement mask detector."""

    def params(self) -> dict[str, Any]:
        """Parameters recorded in manifests."""
        return {}


def _straight_through_class():
    import torch
    from torch import nn

    class StraightThrough(nn.Module):
        """Forward: the real (numpy) defence on the 8-bit rounded input. Backward: the surrogate's gradient.

        For a stochastic transform every forward pass that needs a gradient uses a fresh draw
        (``transform.sample``), the same for the forward value and the surrogate; passes without a
        gradient (evaluation) use the transform as deployed.
        """

        def __init__(self, transform: InputTransform):
            super().__init__()
            self.transform = transform
            seed = zlib.crc32(json.dumps([transform.name, transform.params()], sort_keys=True, default=str).encode())
            self.rng = np.random.default_rng(seed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(
                    f"defence {self.transform.name} expects (n, 3, H, W) RGB in [0, 1], got {tuple(x.shape)}"
                )
            transform = self.transform
            if transform.stochastic and x.requires_grad:
                transform = transform.sample(self.rng)
            with torch.no_grad():
                faces = torch.round(x.detach().float().clamp(0, 1) * 255).to(torch.uint8)
                faces = faces.permute(0, 2, 3, 1).cpu().numpy()
                real = transform.apply(faces)
                exact = torch.from_numpy(np.ascontiguousarray(real)).to(x.device).permute(0, 3, 1, 2)
                exact = exact.to(x.dtype) / 255.0
            if not x.requires_grad:
                return exact
            soft = transform.surrogate(x)
            return soft + (exact - soft).detach()

    return StraightThrough


# --------------------------------------------------------------------------------------------------
# The Defence record and loading
# --------------------------------------------------------------------------------------------------


@dataclass
class Defence:
    """A loaded defence: its name, kind, parameters, where it came from and the object itself."""

    name: str
    kind: str
    params: dict[str, Any]
    impl: Any = field(repr=False, default=None)
    source: str = ""  # "builtin:NAME", "entry-point:NAME", "spec:module:callable" or "object"

    @property
    def tag(self) -> str:
        """``name`` or ``name[k=v,…]`` (sorted keys): the suffix of defended model names."""
        if not self.params:
            return self.name
        return f"{self.name}[{','.join(f'{k}={_fmt(v)}' for k, v in sorted(self.params.items()))}]"

    def record(self) -> dict[str, Any]:
        """JSON-able description for manifests."""
        return {
            "name": self.name,
            "kind": self.kind,
            "params": dict(self.params),
            "source": self.source,
            "stochastic": self.stochastic,
            **({"gradient": self.impl.gradient} if isinstance(self.impl, InputTransform) else {}),
        }

    @property
    def stochastic(self) -> bool:
        """Whether the defence declares randomness (adaptive attacks then use EOT)."""
        return bool(getattr(self.impl, "stochastic", False))

    @property
    def gradient(self) -> str:
        """How adaptive attacks differentiate through it: ``exact``, ``approximate`` or ``bpda-identity``."""
        return self.impl.gradient if isinstance(self.impl, InputTransform) else "exact"

    def digest(self) -> str:
        """SHA-256 of the defence's name, kind and parameters."""
        text = json.dumps({"name": self.name, "kind": self.kind, "params": self.params}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_value(text: str) -> Any:
    """A parameter value from text: int, then float, then bool (true/false/yes/no), else the string."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    return text


def parse_params(text: str, spec: str = "") -> dict[str, Any]:
    """``key=value,key=value`` → dict (values through :func:`parse_value`)."""
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"defence spec {spec!r}: expected key=value, got {part!r}")
        if key in params:
            raise ValueError(f"defence spec {spec!r}: parameter {key!r} given twice")
        params[key] = parse_value(value)
    return params


def split_spec(spec: str) -> tuple[str | None, str | None, str, dict[str, Any]]:
    """``(module, callable, entry-point name, params)`` of a spec; module is None for entry-point names.

    ``pkg.mod:factory:k=v`` → module spec; ``jpeg`` or ``jpeg:quality=30`` → entry point ``jpeg``.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("empty defence spec")
    parts = spec.split(":", 2)
    if len(parts) >= 2 and "=" not in parts[1]:
        module, func = parts[0].strip(), parts[1].strip()
        if not module or not func:
            raise ValueError(f"defence spec {spec!r}: expected module:callable[:key=value,…]")
        return module, func, "", parse_params(parts[2] if len(parts) == 3 else "", spec)
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise ValueError(f"defence spec {spec!r}: missing the defence name before ':'")
    return None, None, name.strip(), parse_params(rest, spec)


def _target_text(entry: Entry) -> str:
    """Where a registered defence comes from, as ``module:attribute`` (without importing it)."""
    target = entry.target
    if isinstance(target, str):
        return target
    if hasattr(target, "value") and hasattr(target, "group"):  # an EntryPoint
        return str(target.value)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(target).__name__)}"


def list_defences() -> list[tuple[str, str, str]]:
    """``(name, module:attribute, origin)`` of every registered defence: built-ins, then installed plug-ins.

    Entry points are looked up afresh, so a package installed in this interpreter is listed.
    """
    DEFENCES.rescan()
    return [(name, _target_text(DEFENCES.entry(name)), DEFENCES.entry(name).origin) for name in DEFENCES.names()]


def _registered(name: str, spec: str) -> Entry:
    """The registry entry of ``name`` (entry points looked up again before an unknown name is an error)."""
    if name not in DEFENCES:
        DEFENCES.rescan()
    try:
        return DEFENCES.entry(name)
    except ValueError as exc:
        raise ValueError(
            f"defence spec {spec!r}: {exc} (plug-ins: entry-point group {DEFENCES.group!r}); "
            "or name a factory as module:callable[:key=value,…]"
        ) from None


def load_defence(spec: str) -> Defence:
    """Load a defence from ``module:callable[:k=v,…]`` or a registered name ``NAME[:k=v,…]``."""
    module, func, name, params = split_spec(spec)
    if module is not None:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(
                f"defence spec {spec!r}: cannot import module {module!r} ({exc}); "
                f"is it on PYTHONPATH? (sys.path[0]={sys.path[0]!r})"
            ) from None
        factory = mod
        for attr in func.split("."):
            factory = getattr(factory, attr, None)
            if factory is None:
                raise ValueError(f"defence spec {spec!r}: module {module!r} has no {func!r}")
        return build_defence(factory, params, source=f"spec:{module}:{func}", name=None)
    entry = _registered(name, spec)
    where = _target_text(entry)
    try:
        factory = entry.load()
    except Exception as exc:  # a plug-in's import can fail in any way
        raise ValueError(f"defence {name!r} ({where}, {entry.origin}) failed to load: {exc}") from None
    source = f"builtin:{name}" if entry.origin == "built-in" else f"entry-point:{name}"
    return build_defence(factory, params, source=source, name=name)


def build_defence(
    factory: Callable[..., Any] | Any, params: dict[str, Any], source: str = "object", name: str | None = None
) -> Defence:
    """Call ``factory(**params)`` (or take an instance as is) and wrap the result in a :class:`Defence`."""
    if isinstance(factory, (InputTransform, ReplacementRecognizer, ReplacementMaskDetector)):
        if params:
            raise ValueError(f"{source}: parameters {sorted(params)} given to a ready-made defence object")
        impl = factory
    else:
        if not callable(factory):
            raise ValueError(f"{source}: {factory!r} is not callable")
        try:
            impl = factory(**params)
        except TypeError as exc:
            raise ValueError(f"{source}: bad parameters {params}: {exc}") from None
    if isinstance(impl, Defence):
        return impl
    if not isinstance(impl, (InputTransform, ReplacementRecognizer, ReplacementMaskDetector)):
        raise ValueError(
            f"{source} returned {type(impl).__name__}, not a defence (InputTransform, "
            "RecognitionPolicy, ReplacementRecognizer or ReplacementMaskDetector)"
        )
    return Defence(name=name or impl.name, kind=impl.kind, params=dict(impl.params()), impl=impl, source=source)


# --------------------------------------------------------------------------------------------------
# Attack variants (what an adaptive cell ran)
# --------------------------------------------------------------------------------------------------

#: how each declared gradient is reached by an adaptive attack
GRADIENT_VARIANTS = {"exact": "exact", "approximate": "BPDA (surrogate)", "bpda-identity": "BPDA (identity)"}


def attack_variant(defence: Defence, eot_samples: int) -> str:
    """The adaptive attack's variant against ``defence``: gradient (exact / BPDA) and EOT samples, e.g.
    ``exact + EOT×20`` or ``BPDA (identity)``."""
    grad = GRADIENT_VARIANTS.get(defence.gradient, defence.gradient)
    return f"{grad} + EOT×{eot_samples}" if defence.stochastic and eot_samples > 1 else grad


def looks_random(transform: InputTransform, faces: np.ndarray) -> bool:
    """Whether ``transform.apply`` gives different results on two calls with the same faces (undeclared randomness)."""
    return not np.array_equal(transform.apply(faces), transform.apply(faces))
