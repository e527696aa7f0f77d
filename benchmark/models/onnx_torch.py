"""ONNX loading, onnxruntime sessions and a small ONNX → torch interpreter for white-box (differentiable) use.

:func:`onnx_to_torch` turns an ONNX graph into a ``torch.nn.Module``. Every node whose inputs are all
constants (e.g. int8 ``DequantizeLinear`` weights and their ``Reshape``) is evaluated once with onnx's
reference implementation and folded into float32 buffers; the remaining nodes run as torch ops, so
gradients reach the input. It covers the ops of SFace (OpenCV zoo) and of insightface's recognition
models (IResNet / MobileFaceNet exports from arcface_torch and mxnet).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelUnavailable

# --------------------------------------------------------------------------------------------------
# Loading and onnxruntime
# --------------------------------------------------------------------------------------------------


def load_onnx(path: str | os.PathLike) -> Any:
    """Read an ONNX file; a missing or unreadable file raises an error naming it."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, truncated files, …
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def prepare_for_runtime(model: Any) -> Any:
    """A copy of ``model`` with a dynamic batch dimension and without graph inputs no node reads.

    Some exports (SFace) list their original float weights as graph inputs that no node uses;
    onnxruntime would demand them as feeds. A fixed batch of 1 is made symbolic (``N``) so batches run
    in one call.
    """
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    initialisers = {i.name for i in graph.initializer}
    keep = [i for i in graph.input if i.name in used or i.name in initialisers]
    if len(keep) != len(graph.input):
        del graph.input[:]
        graph.input.extend(keep)
    for value in list(graph_data_inputs(model)) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    return model


def graph_data_inputs(model: Any) -> list:
    """Graph inputs that are real data (not initialisers)."""
    initialisers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initialisers]


def ort_session(model: Any, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session for ``model`` (CUDA provider when ``device`` is CUDA and available)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    data = prepare_for_runtime(model).SerializeToString()
    return ort.InferenceSession(data, sess_options=options, providers=providers)


# --------------------------------------------------------------------------------------------------
# ONNX → torch
# --------------------------------------------------------------------------------------------------


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _op_conv(x, w, b=None, *, pads=None, strides=None, dilations=None, group=1, auto_pad="NOTSET", **_):
    import torch.nn.functional as F

    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    nd = w.dim() - 2
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    if auto_pad not in ("NOTSET", "VALID"):
        # SAME_UPPER / SAME_LOWER: output = ceil(in / stride)
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x.shape[2 + i]
            k = (w.shape[2 + i] - 1) * dilations[i] + 1
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + k - size, 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    pads = list(pads or [0] * (2 * nd))
    begin, end = pads[:nd], pads[nd:]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    if begin == end:
        return conv(x, w, b, stride=strides, padding=begin, dilation=dilations, groups=group)
    pad = []
    for i in reversed(range(nd)):
        pad += [begin[i], end[i]]
    return conv(F.pad(x, pad), w, b, stride=strides, padding=0, dilation=dilations, groups=group)


def _op_batchnorm(x, scale, bias, mean, var, *, epsilon=1e-5, **_):
    import torch.nn.functional as F

    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def _op_prelu(x, slope, **_):
    import torch
    import torch.nn.functional as F

    # per-channel (C,1,…) or scalar slopes: the fused kernel (several times faster forward+backward
    # on CPU than the elementwise form); any other broadcast falls back to the ONNX definition
    if x.dim() >= 2 and (
        slope.numel() == 1
        or (slope.dim() == x.dim() - 1 and slope.shape[0] == x.shape[1] and slope.numel() == x.shape[1])
    ):
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x >= 0, x, x * slope)


def _op_gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, **_):
    a = a.transpose(-1, -2) if transA else a
    b = b.transpose(-1, -2) if transB else b
    out = (a @ b) * alpha if alpha != 1.0 else a @ b
    if c is not None:
        out = out + (c * beta if beta != 1.0 else c)
    return out


def _op_flatten(x, *, axis=1, **_):
    axis = axis if axis >= 0 else x.dim() + axis
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


def _op_reshape(x, shape, *, allowzero=0, **_):
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _axes(node_axes, axes_input):
    if axes_input is not None:
        return _ints(axes_input)
    return list(node_axes or [])


def _op_unsqueeze(x, axes=None, *, axes_attr=None, **_):
    out = x
    rank = x.dim() + len(_axes(axes_attr, axes))
    for a in sorted(a if a >= 0 else a + rank for a in _axes(axes_attr, axes)):
        out = out.unsqueeze(a)
    return out


def _op_squeeze(x, axes=None, *, axes_attr=None, **_):
    axes = _axes(axes_attr, axes)
    if not axes:
        return x.squeeze()
    for a in sorted((a if a >= 0 else a + x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _op_gather(data, indices, *, axis=0, **_):
    import torch

    axis = axis if axis >= 0 else data.dim() + axis
    idx = indices.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1))
    return out.reshape(tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1 :]))


def _op_pool(kind: str):
    def run(x, *, kernel_shape, strides=None, pads=None, ceil_mode=0, count_include_pad=0, **_):
        import torch.nn.functional as F

        nd = len(kernel_shape)
        pads = list(pads or [0] * (2 * nd))
        if pads[:nd] != pads[nd:]:
            raise ValueError(f"{kind} with asymmetric pads {pads} is not supported")
        strides = list(strides or [1] * nd)
        if kind == "MaxPool":
            return F.max_pool2d(x, kernel_shape, strides, pads[:nd], ceil_mode=bool(ceil_mode))
        return F.avg_pool2d(
            x, kernel_shape, strides, pads[:nd], ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad)
        )

    return run


def _op_clip(x, lo=None, hi=None, *, min=None, max=None, **_):  # noqa: A002 - ONNX attribute names
    import torch

    lo = lo if lo is not None else (None if min is None else torch.tensor(min))
    hi = hi if hi is not None else (None if max is None else torch.tensor(max))
    return torch.clamp(x, lo, hi)


def _op_cast(x, *, to, **_):
    from onnx import TensorProto

    if to in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
        return x if x.is_floating_point() else x.float()
    if to in (TensorProto.INT64, TensorProto.INT32):
        return x.long()
    if to == TensorProto.BOOL:
        return x.bool()
    raise ValueError(f"Cast to ONNX type {to} is not supported")


def _torch_ops() -> dict[str, Callable]:
    """Op type → function(inputs…, **attributes) on torch tensors."""
    import torch
    import torch.nn.functional as F

    return {
        "Conv": _op_conv,
        "BatchNormalization": _op_batchnorm,
        "PRelu": _op_prelu,
        "Relu": lambda x, **_: torch.relu(x),
        "LeakyRelu": lambda x, *, alpha=0.01, **_: F.leaky_relu(x, alpha),
        "Sigmoid": lambda x, **_: torch.sigmoid(x),
        "Tanh": lambda x, **_: torch.tanh(x),
        "Add": lambda a, b, **_: a + b,
        "Sub": lambda a, b, **_: a - b,
        "Mul": lambda a, b, **_: a * b,
        "Div": lambda a, b, **_: a / b,
        "Neg": lambda x, **_: -x,
        "Sqrt": lambda x, **_: torch.sqrt(x),
        "Pow": lambda a, b, **_: torch.pow(a, b),
        "Gemm": _op_gemm,
        "MatMul": lambda a, b, **_: torch.matmul(a, b),
        "Flatten": _op_flatten,
        "Reshape": _op_reshape,
        "Identity": lambda x, **_: x,
        "Dropout": lambda x, *rest, **_: x,
        "Shape": lambda x, **_: torch.tensor(tuple(x.shape), dtype=torch.int64, device=x.device),
        "Gather": _op_gather,
        "Unsqueeze": lambda x, axes=None, *, axes_attr=None, **_: _op_unsqueeze(x, axes, axes_attr=axes_attr),
        "Squeeze": lambda x, axes=None, *, axes_attr=None, **_: _op_squeeze(x, axes, axes_attr=axes_attr),
        "Concat": lambda *xs, axis, **_: torch.cat(xs, dim=axis),
        "Transpose": lambda x, *, perm=None, **_: x.permute(*(perm or reversed(range(x.dim())))),
        "GlobalAveragePool": lambda x, **_: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "MaxPool": _op_pool("MaxPool"),
        "AveragePool": _op_pool("AveragePool"),
        "Clip": _op_clip,
        "Cast": _op_cast,
        "Softmax": lambda x, *, axis=-1, **_: torch.softmax(x, dim=axis),
    }


SUPPORTED_OPS = (
    "Conv",
    "BatchNormalization",
    "PRelu",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Sqrt",
    "Pow",
    "Gemm",
    "MatMul",
    "Flatten",
    "Reshape",
    "Identity",
    "Dropout",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Transpose",
    "GlobalAveragePool",
    "MaxPool",
    "AveragePool",
    "Clip",
    "Cast",
    "Softmax",
)


def fold_constants(model: Any) -> tuple[dict[str, np.ndarray], list]:
    """Evaluate every node whose inputs are all constants; return ``(constants, runtime_nodes)``.

    Constants are the initialisers, ``Constant`` nodes and everything computed from them alone (int8
    ``DequantizeLinear`` → float32, weight ``Reshape``). Folding uses onnx's reference evaluator, the
    specification's own implementation of each op.
    """
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    data_inputs = {i.name for i in graph_data_inputs(model)}
    runtime = []
    for node in model.graph.node:
        inputs = [n for n in node.input if n]
        if node.op_type != "Constant" and (not inputs or any(n not in consts or n in data_inputs for n in inputs)):
            runtime.append(node)
            continue
        outputs = ReferenceEvaluator(node).run(None, {n: consts[n] for n in inputs})
        for name, value in zip(node.output, outputs):
            value = np.asarray(value)
            consts[name] = value.astype(np.float32) if value.dtype.kind == "f" else value
    return consts, runtime


def fold_batchnorm(consts: dict[str, np.ndarray], runtime: list, outputs: set[str]) -> list:
    """Fold every ``BatchNormalization`` that directly follows a ``Conv`` with constant weights into it.

    Inference BN is affine per channel, ``γ·(y − μ)/√(σ² + ε) + β``, so ``conv → BN`` equals one conv
    with weights ``W·s`` and bias ``(b − μ)·s + β`` (``s = γ/√(σ² + ε)``): the BN pass and its backward
    disappear (≈ 15 % of SFace's forward+backward). Only applied when the conv's output feeds nothing
    but the BN; new constants are added to ``consts``. Returns the new runtime node list.
    """
    import onnx

    consumers: dict[str, int] = {}
    for node in runtime:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producer = {node.output[0]: node for node in runtime if node.op_type == "Conv"}
    drop, replace = set(), {}
    for node in runtime:
        if node.op_type != "BatchNormalization" or len(node.input) < 5:
            continue
        conv = producer.get(node.input[0])
        if conv is None or consumers.get(node.input[0]) != 1 or node.input[0] in outputs or id(conv) in replace:
            continue
        names = list(node.input[1:5]) + list(conv.input[1:])
        if any(n not in consts for n in names if n):
            continue
        gamma, beta, mean, var = (consts[n].astype(np.float64) for n in node.input[1:5])
        eps = float(_attrs(node).get("epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        w = consts[conv.input[1]].astype(np.float64)
        b = consts[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
        tag = f"{node.output[0]}__folded"
        consts[f"{tag}_w"] = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        consts[f"{tag}_b"] = ((b - mean) * scale + beta).astype(np.float32)
        fused = onnx.helper.make_node(
            "Conv", [conv.input[0], f"{tag}_w", f"{tag}_b"], [node.output[0]], name=f"{conv.name}+{node.name}"
        )
        fused.attribute.extend(conv.attribute)
        replace[id(conv)] = fused
        drop.add(id(node))
    return [replace.get(id(n), n) for n in runtime if id(n) not in drop]


class _Node:
    __slots__ = ("op", "fn", "inputs", "outputs", "attrs")

    def __init__(self, op, fn, inputs, outputs, attrs):
        self.op, self.fn, self.inputs, self.outputs, self.attrs = op, fn, inputs, outputs, attrs


def _graph_module_class():
    import torch
    from torch import nn

    class OnnxGraphModule(nn.Module):
        """An ONNX graph run as torch ops; folded constants are buffers (moved by ``.to``/``.half``)."""

        def __init__(self, model: Any, source: str = "<onnx>"):
            super().__init__()
            consts, runtime = fold_constants(model)
            runtime = fold_batchnorm(consts, runtime, {o.name for o in model.graph.output})
            ops = _torch_ops()
            unsupported = sorted({n.op_type for n in runtime if n.op_type not in ops})
            if unsupported:
                raise ValueError(
                    f"{source}: ONNX ops {', '.join(unsupported)} are not supported by mf2m's "
                    f"ONNX→torch converter (supported: {', '.join(SUPPORTED_OPS)})"
                )
            data_inputs = graph_data_inputs(model)
            used = {n for node in runtime for n in node.input}
            self.input_names = [i.name for i in data_inputs if i.name in used]
            if len(self.input_names) != 1:
                raise ValueError(f"{source}: expected one data input, found {self.input_names}")
            self.output_names = [o.name for o in model.graph.output]
            self._const_attr: dict[str, str] = {}
            for name in sorted(used & set(consts)):
                attr = f"const_{len(self._const_attr)}"
                self.register_buffer(attr, torch.from_numpy(np.array(consts[name], copy=True)))  # keeps 0-d
                self._const_attr[name] = attr
            self._nodes = []
            for node in runtime:
                attrs = _attrs(node)
                if node.op_type in ("Unsqueeze", "Squeeze") and "axes" in attrs:
                    attrs["axes_attr"] = attrs.pop("axes")
                self._nodes.append(_Node(node.op_type, ops[node.op_type], list(node.input), list(node.output), attrs))
            self.source = source

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            values: dict[str, Any] = {self.input_names[0]: x}
            for name, attr in self._const_attr.items():
                values[name] = getattr(self, attr)
            for node in self._nodes:
                args = [values[n] if n else None for n in node.inputs]
                if node.op not in ("Shape", "Reshape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast"):
                    # elementwise ops follow the activation dtype (fp16 modules, int constants)
                    args = [
                        a.to(x.dtype) if a is not None and a.is_floating_point() and a.dtype != x.dtype else a
                        for a in args
                    ]
                out = node.fn(*args, **node.attrs)
                values[node.outputs[0]] = out
            return values[self.output_names[0]]

    return OnnxGraphModule


def onnx_to_torch(model: Any | str | os.PathLike) -> Any:
    """Convert an ONNX model (or file) into a torch module (eval mode, weights frozen)."""
    source = "<onnx>"
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        model = load_onnx(model)
    return onnx_to_torch_from_proto(model, source)


def onnx_to_torch_from_proto(model: Any, source: str):
    """Convert an already-loaded ``ModelProto`` (``source`` names it in errors)."""
    return _graph_module_class()(model, source).eval()
