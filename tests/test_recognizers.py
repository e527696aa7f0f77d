"""Recognizers: SFace (onnxruntime vs the ONNX→torch conversion), dlib ResNet, the ONNX converter and
insightface's normalisation rule.

Tests on real faces use LFW from ../shared (``lfw_dir`` fixture; skipped when absent): 16 people with
two photos each, found by the lead's dlib landmarker and ArcFace-aligned.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


# --------------------------------------------------------------------------------------------------
# Real aligned faces
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lfw_faces(lfw_dir):
    """32 ArcFace-aligned faces (16 people × 2 photos), their labels and dlib chips of the originals."""
    import cv2

    from benchmark.models.align import align_face
    from benchmark.models.landmarks import DlibLandmarker, dlib_chip

    people = sorted(p for p in (lfw_dir / "images").iterdir() if p.is_dir())
    marker = DlibLandmarker()
    faces, chips, labels = [], [], []
    for person in people:
        files = sorted(person.glob("*.jpg"))[:2]
        if len(files) < 2:
            continue
        got = []
        for f in files:
            img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
            try:
                lm = marker.landmarks(img)
            except Exception:
                break
            got.append((align_face(img, lm.five)[0], dlib_chip(img, lm.points)))
        if len(got) == 2:
            for face, chip in got:
                faces.append(face)
                chips.append(chip)
                labels.append(person.name)
        if len(faces) == 32:
            break
    assert len(faces) == 32, "LFW should give 16 people with two detectable faces"
    return np.stack(faces), np.stack(chips), np.array(labels)


def pair_auc(feats: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of cosine similarity for same vs different person over all pairs."""
    from sklearn.metrics import roc_auc_score

    sims = feats @ feats.T
    iu = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    return float(roc_auc_score(same, sims[iu]))


def to_tensor(faces: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def sface():
    from benchmark.models.sface import SFaceRecognizer

    return SFaceRecognizer(device="cpu")


@pytest.mark.shared
def test_sface_torch_matches_onnxruntime_on_real_faces(sface, lfw_faces):
    faces, _, labels = lfw_faces
    ref = sface.embed(faces)
    assert ref.shape == (32, 128) and ref.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    module = sface.torch_module("cpu")
    with torch.no_grad():
        out = module(to_tensor(faces)).numpy()
    assert np.abs(out - ref).max() <= 1e-4
    # the model is a real recognizer: same-person pairs score above different-person pairs
    assert pair_auc(ref, labels) > 0.95


@pytest.mark.shared
def test_sface_gradient_reaches_input(sface, lfw_faces):
    module = sface.torch_module("cpu")
    x = to_tensor(lfw_faces[0][:4]).requires_grad_(True)
    feats = module(x)
    # pull face 0 towards face 1: a typical attack objective
    loss = -(feats[0] * feats[1].detach()).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad[0].abs().sum() > 0 and x.grad[2:].abs().sum() == 0
    assert not any(p.requires_grad for p in module.parameters())


def test_sface_batch_sizes_agree(sface):
    """Batched onnxruntime (dynamic batch) equals one-by-one; a single face gets a batch axis."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    batched = sface.embed(faces)
    single = np.concatenate([sface.embed(f) for f in faces])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert sface.embed(faces[:0]).shape == (0, 128)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 112, 112, 3), np.float32), np.zeros((2, 100, 112, 3), np.uint8), np.zeros((2, 112, 112), np.uint8)],
)
def test_embed_rejects_bad_input(sface, bad):
    with pytest.raises(ValueError, match=r"\(n, 112, 112, 3\) uint8"):
        sface.embed(bad)


# --------------------------------------------------------------------------------------------------
# dlib
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_rec():
    from benchmark.models.dlib_recognizer import DlibRecognizer

    return DlibRecognizer(processes=1)


@pytest.mark.shared
def test_dlib_on_aligned_faces_and_real_chips(dlib_rec, lfw_faces):
    faces, chips, labels = lfw_faces
    from_aligned = dlib_rec.embed(faces)
    from_chips = dlib_rec.embed_chips(chips)
    assert from_aligned.shape == from_chips.shape == (32, 128)
    np.testing.assert_allclose(np.linalg.norm(from_aligned, axis=1), 1.0, atol=1e-5)
    assert pair_auc(from_chips, labels) > 0.95
    assert pair_auc(from_aligned, labels) > 0.95
    # the re-warped chip shows the same face as dlib's own chip: features of one photo agree
    agree = (from_aligned * from_chips).sum(1)
    assert np.median(agree) > 0.9


@pytest.mark.shared
def test_dlib_worker_processes_give_the_same_features(dlib_rec, lfw_faces):
    """Chips spread over 2 worker processes give exactly the in-process features, in order."""
    from benchmark.models.dlib_recognizer import DlibRecognizer

    faces, chips, _ = lfw_faces
    pooled = DlibRecognizer(processes=2)
    try:
        assert pooled.processes == 2
        got = pooled.embed_chips(chips)
        assert pooled._pool is not None  # the pool really ran
        np.testing.assert_array_equal(got, dlib_rec.embed_chips(chips))
        small = pooled.embed(faces[:3])  # too few to split: in-process
        np.testing.assert_array_equal(small, dlib_rec.embed(faces[:3]))
    finally:
        pooled.close()
    assert pooled._pool is None


@pytest.mark.shared
def test_dlib_broken_workers_fall_back_in_process(dlib_rec, lfw_faces, monkeypatch, caplog):
    """Workers that cannot start cost a warning, not the batch: features are computed in-process."""
    from benchmark.models import dlib_recognizer

    _, chips, _ = lfw_faces

    def fail(path):
        raise RuntimeError("no dlib here")

    monkeypatch.setattr(dlib_recognizer, "_pool_init", fail)
    pooled = dlib_recognizer.DlibRecognizer(processes=2)
    got = pooled.embed_chips(chips)
    np.testing.assert_array_equal(got, dlib_rec.embed_chips(chips))
    assert pooled.processes == 1 and pooled._pool is None
    assert "worker processes failed" in caplog.text


def test_dlib_chip_template_geometry():
    """The ArcFace template lands on dlib's mean-face points; the map is a similarity (no shear)."""
    from benchmark.models.align import arcface_template
    from benchmark.models.dlib_recognizer import ARCFACE_TO_CHIP, arcface_to_chip_matrix, dlib_chip_five

    five = arcface_to_chip_matrix()
    mapped = arcface_template() @ five[:, :2].T + five[:, 2]
    assert np.abs(mapped - dlib_chip_five()).max() < 3.0  # 5-point least squares, px in a 150 chip
    # the LFW-calibrated transform used by embed agrees with the pure-geometry one within ~2 px
    m = ARCFACE_TO_CHIP
    mapped_cal = arcface_template() @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped_cal - mapped).max() < 3.0
    a, b = m[0, 0], m[0, 1]
    assert np.isclose(m[1, 1], a) and np.isclose(m[1, 0], -b)
    # the chip is a window of the crop: inside it left/right/top, at most 15 px below it (the chin)
    import cv2

    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0], [150, 0], [0, 150], [150, 150]], float) @ inv[:, :2].T + inv[:, 2]
    assert corners[:, 0].min() > 0 and corners[:, 0].max() < 112 and corners[:, 1].min() > 0
    assert 112 < corners[:, 1].max() < 127


def test_dlib_rejects_bad_chips(dlib_rec):
    with pytest.raises(ValueError, match="150, 150, 3"):
        dlib_rec.embed_chips(np.zeros((1, 112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="chip must be one of"):
        type(dlib_rec)(chip="nope")


# --------------------------------------------------------------------------------------------------
# ONNX → torch converter on graphs built here, checked against onnxruntime
# --------------------------------------------------------------------------------------------------


def _tensor(name, array):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array), name)


def build_test_graph(path, *, mxnet_names: bool, seed: int = 0, out_dim: int = 16):
    """A small recognizer-like graph using the ops of SFace / insightface exports.

    Sub/Mul normalisation, int8 block-quantised conv weights (DequantizeLinear + Reshape), Conv with
    asymmetric pads and stride, BatchNormalization, PRelu, a residual Add, Shape/Gather/Unsqueeze/Concat
    feeding a Reshape, Flatten, Gemm, MatMul, and a final BatchNormalization on (N, D).
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    c = 8
    inits = [
        _tensor("mean", np.array([127.5], np.float32)),
        _tensor("scale", np.array([1 / 128], np.float32)),
        _tensor("w1_q", rng.integers(-127, 127, (c, 27)).astype(np.int8)),
        _tensor("w1_s", (rng.random((c, 1)) * 0.02 + 0.01).astype(np.float32)),
        _tensor("w1_z", np.zeros((c, 1), np.int8)),
        _tensor("w1_shape", np.array([c, 3, 3, 3], np.int64)),
        _tensor("bn_g", rng.random(c).astype(np.float32) + 0.5),
        _tensor("bn_b", rng.normal(size=c).astype(np.float32)),
        _tensor("bn_m", rng.normal(size=c).astype(np.float32)),
        _tensor("bn_v", rng.random(c).astype(np.float32) + 0.5),
        _tensor("slope", (rng.random((c, 1, 1)) * 0.3).astype(np.float32)),
        _tensor("w2", (rng.normal(size=(c, 1, 3, 3)) * 0.2).astype(np.float32)),
        _tensor("b2", rng.normal(size=c).astype(np.float32)),
        _tensor("idx0", np.array(0, np.int64)),
        _tensor("minus1", np.array([-1], np.int64)),
        _tensor("fc_w", (rng.normal(size=(out_dim * 2, c * 28 * 28)) * 0.01).astype(np.float32)),
        _tensor("fc_b", rng.normal(size=out_dim * 2).astype(np.float32)),
        _tensor("mm", (rng.normal(size=(out_dim * 2, out_dim)) * 0.2).astype(np.float32)),
        _tensor("f_g", rng.random(out_dim).astype(np.float32) + 0.5),
        _tensor("f_b", np.zeros(out_dim, np.float32)),
        _tensor("f_m", rng.normal(size=out_dim).astype(np.float32) * 0.1),
        _tensor("f_v", rng.random(out_dim).astype(np.float32) + 0.5),
    ]
    nodes = []
    first = "data"
    if mxnet_names:
        nodes += [
            helper.make_node("Sub", ["data", "mean"], ["norm0"], name="_minusscalar0"),
            helper.make_node("Mul", ["norm0", "scale"], ["norm1"], name="_mulscalar0"),
        ]
        first = "norm1"
    nodes += [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1_f"], axis=1, block_size=27, name="dq"),
        helper.make_node("Reshape", ["w1_f", "w1_shape"], ["w1"], name="w1_reshape"),
        helper.make_node(
            "Conv", [first, "w1"], ["c1"], pads=[0, 0, 1, 1], strides=[2, 2], kernel_shape=[3, 3], name="conv1"
        ),
        helper.make_node("BatchNormalization", ["c1", "bn_g", "bn_b", "bn_m", "bn_v"], ["b1"], epsilon=1e-3),
        helper.make_node("PRelu", ["b1", "slope"], ["p1"]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=c, kernel_shape=[3, 3]),
        helper.make_node("Add", ["c2", "p1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["mp"], ["shp"]),
        helper.make_node("Gather", ["shp", "idx0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "idx0_1d"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["mp", "flat_shape"], ["flat"]),
        helper.make_node("Flatten", ["flat"], ["flat2"], axis=1),
        helper.make_node("Gemm", ["flat2", "fc_w", "fc_b"], ["fc"], transB=1),
        helper.make_node("Relu", ["fc"], ["fcr"]),
        helper.make_node("MatMul", ["fcr", "mm"], ["emb"]),
        helper.make_node("BatchNormalization", ["emb", "f_g", "f_b", "f_m", "f_v"], ["out"], epsilon=2e-5),
    ]
    inits.append(_tensor("idx0_1d", np.array([0], np.int64)))
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("mxnet_names", [False, True])
def test_converter_matches_onnxruntime_and_insightface_rule(tmp_path, mxnet_names):
    from benchmark.models.onnx_recognizer import InsightfaceOnnxRecognizer, insightface_normalisation
    from benchmark.models.onnx_torch import load_onnx

    path = build_test_graph(tmp_path / "rec.onnx", mxnet_names=mxnet_names)
    assert insightface_normalisation(load_onnx(path)) == ((0.0, 1.0) if mxnet_names else (127.5, 127.5))
    rec = InsightfaceOnnxRecognizer(path, device="cpu", batch_size=3)
    assert rec.dim == 16 and rec.preprocessing.color == "RGB"
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)
    ref = rec.embed(faces)
    # independent reference: onnxruntime on the raw file, one face at a time, normalised by hand
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = faces.transpose(0, 3, 1, 2).astype(np.float32)
    if not mxnet_names:
        x = (x - 127.5) / 127.5
    raw = np.concatenate([sess.run(None, {"data": x[i : i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(ref, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    module = rec.torch_module("cpu")
    graph = next(m for m in module.modules() if hasattr(m, "_nodes"))
    # conv1 → BN is folded into one conv; the BN after MatMul is kept (not a conv)
    assert [n.op for n in graph._nodes].count("BatchNormalization") == 1
    xt = to_tensor(faces).requires_grad_(True)
    out = module(xt)
    assert np.abs(out.detach().numpy() - ref).max() <= 1e-4
    out[:, 0].sum().backward()
    assert torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0


def test_converter_rejects_unknown_ops_and_bad_files(tmp_path):
    from onnx import TensorProto, helper

    from benchmark.models.base import ModelUnavailable
    from benchmark.models.onnx_torch import load_onnx, onnx_to_torch

    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match=r"odd\.onnx: ONNX ops Hardmax are not supported"):
        onnx_to_torch(path)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a model at all" * 10)
    with pytest.raises(ValueError, match="corrupt.onnx: not a readable ONNX model"):
        load_onnx(corrupt)
    with pytest.raises(ModelUnavailable, match="not found"):
        load_onnx(tmp_path / "absent.onnx")
