"""Putting masks on aligned faces: the faced-mask region, the solid-colour medical mask and DM.

DM (the paper's Delaunay-based masking, Eq. 1–3): landmarks of the probe and of the template
(``f_L``) → one Delaunay triangulation over the probe's landmarks, reused index-for-index on the
template (``f_T``) → a per-triangle affine warp of the template onto the probe (``f_R``) → the
faced-mask region bounded by the lower-face contour and a nose landmark (``f_C``) → overlay on the
probe with a narrow feathered edge (``f_2``), optionally Poisson (seamless) cloning.

The warp is done in one vectorised pass: the probe's triangles are rasterised into a label map,
every covered pixel gets the inverse affine map of its triangle, and ``cv2.remap`` samples the
template once. Every function returns the binary region too: all adversarial perturbations are
confined to it, and every pixel outside it equals the clean input exactly.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

MASK_COLOURS = ("blue", "white", "black", "green")


@dataclass(frozen=True)
class RegionSpec:
    """Which landmarks bound the faced-mask region (dlib 68-point scheme, indices into ``jaw``/``nose``).

    The polygon runs along the lower-face contour from ``jaw[jaw_first]`` to ``jaw[jaw_last]`` and
    closes through ``nose[nose_index]`` (1 = point 28, the upper nose bridge, where a mask's top
    edge sits). ``feather`` is the width in pixels of the soft inner edge of the overlay.
    """

    jaw_first: int = 1
    jaw_last: int = 15
    nose_index: int = 1
    feather: float = 2.0


def region_polygon(jaw: np.ndarray, nose: np.ndarray, spec: RegionSpec = RegionSpec()) -> np.ndarray:
    """The faced-mask polygon ``(k, 2)`` float32: lower-face contour, then the nose landmark."""
    jaw = np.asarray(jaw, dtype=np.float32)
    nose = np.asarray(nose, dtype=np.float32)
    if not (0 <= spec.jaw_first < spec.jaw_last < len(jaw)) or not 0 <= spec.nose_index < len(nose):
        raise ValueError(f"region spec {spec} does not fit {len(jaw)} jaw / {len(nose)} nose landmarks")
    return np.concatenate([jaw[spec.jaw_first : spec.jaw_last + 1], nose[spec.nose_index : spec.nose_index + 1]])


def polygon_mask(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Binary ``(H, W)`` uint8 mask (0/1) of a polygon rasterised with sub-pixel precision."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    pts = np.round(np.asarray(polygon, np.float64) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def delaunay_triangles(points: np.ndarray) -> np.ndarray:
    """Delaunay triangulation ``(t, 3)`` int of ``points``; degenerate (zero-area) triangles are dropped."""
    from scipy.spatial import Delaunay

    points = np.asarray(points, np.float64)
    tri = Delaunay(points, qhull_options="QJ").simplices
    return tri[_triangle_areas(points, tri) > 1e-6]


def _triangle_areas(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a, b, c = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    return 0.5 * np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def piecewise_affine(
    src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, triangles: np.ndarray, out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``src`` so each triangle ``src_pts[tri]`` lands on ``dst_pts[tri]`` (``f_R``).

    Returns ``(warped, covered)``: the ``out_shape`` image and a 0/1 map of the pixels some triangle
    covers (uncovered pixels are black). One ``cv2.remap`` for all triangles.
    """
    import cv2

    src_pts = np.asarray(src_pts, np.float64)
    dst_pts = np.asarray(dst_pts, np.float64)
    h, w = out_shape
    # Only the destination triangle must be non-degenerate: the inverse map dst → src is still a valid
    # affine map when the source triangle is flat (it then samples a line of the source). Dropping
    # such triangles left holes in the region (e.g. the solid mask's nose bridge–tip–mouth centre line).
    triangles = triangles[_triangle_areas(dst_pts, triangles) > 1e-6]
    label = np.full((h, w), -1, np.int32)
    for t, tri in enumerate(triangles):
        cv2.fillConvexPoly(label, np.round(dst_pts[tri] * 16).astype(np.int32), int(t), shift=4)
    # Inverse maps (probe → template) for every triangle, as (t, 2, 3).
    inv = (
        np.stack(
            [
                cv2.getAffineTransform(dst_pts[tri].astype(np.float32), src_pts[tri].astype(np.float32))
                for tri in triangles
            ]
        )
        if len(triangles)
        else np.zeros((0, 2, 3))
    )
    ys, xs = np.nonzero(label >= 0)
    m = inv[label[ys, xs]]
    map_x = np.full((h, w), -1.0, np.float32)
    map_y = np.full((h, w), -1.0, np.float32)
    map_x[ys, xs] = m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2]
    map_y[ys, xs] = m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2]
    warped = cv2.remap(src, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    covered = (label >= 0).astype(np.uint8)
    warped[covered == 0] = 0
    return warped, covered


def feather_alpha(region: np.ndarray, feather: float) -> np.ndarray:
    """Blend weights in [0, 1]: 0 outside ``region``, rising to 1 over ``feather`` pixels inside it."""
    import cv2

    region = (np.asarray(region) > 0).astype(np.uint8)
    if feather <= 0:
        return region.astype(np.float32)
    padded = np.pad(region, 1)  # the image border is not a mask edge unless the region touches it
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    return np.clip(dist / float(feather), 0.0, 1.0).astype(np.float32) * region


def overlay(
    face: np.ndarray, mask_image: np.ndarray, region: np.ndarray, feather: float = 2.0, seamless: bool = False
) -> np.ndarray:
    """``f_2``: put ``mask_image`` on ``face`` inside ``region`` (feathered; optionally seamless cloning).

    Pixels outside ``region`` are returned unchanged, bit for bit.
    """
    import cv2

    face = np.asarray(face, np.uint8)
    region = (np.asarray(region) > 0).astype(np.uint8)
    source = np.asarray(mask_image, np.uint8)
    if seamless and region.any():
        ys, xs = np.nonzero(region)
        center = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
        try:
            source = cv2.seamlessClone(source, face, region * 255, center, cv2.NORMAL_CLONE)
        except cv2.error:  # region touching the border: fall back to the plain overlay
            pass
    alpha = feather_alpha(region, feather)[:, :, None]
    blended = np.rint(alpha * source.astype(np.float32) + (1.0 - alpha) * face.astype(np.float32))
    out = np.where(region[:, :, None] > 0, np.clip(blended, 0, 255).astype(np.uint8), face)
    return out


def delaunay_mask(
    face: np.ndarray,
    face_points: np.ndarray,
    template: np.ndarray,
    template_points: np.ndarray,
    jaw_index: np.ndarray | None = None,
    nose_index: np.ndarray | None = None,
    spec: RegionSpec = RegionSpec(),
    seamless: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """DM (Eq. 1–3): the probe ``face`` wearing a faced mask cut from ``template``.

    ``face_points``/``template_points`` are corresponding landmarks (dlib 68 by default; ``jaw_index``
    and ``nose_index`` say which rows are the contour and the nose). Returns ``(image, region)``:
    the masked face (uint8, same shape as ``face``) and the 0/1 region it changed.
    """
    from benchmark.models.landmarks import DLIB68_JAW, DLIB68_NOSE

    jaw_index = DLIB68_JAW if jaw_index is None else jaw_index
    nose_index = DLIB68_NOSE if nose_index is None else nose_index
    face_points = _check_points(face_points, "probe")
    template_points = _check_points(template_points, "template")
    if face_points.shape != template_points.shape:
        raise ValueError(
            f"probe and template landmarks differ in shape: {face_points.shape} vs {template_points.shape}"
        )
    triangles = delaunay_triangles(face_points)  # f_T, shared
    warped, covered = piecewise_affine(template, template_points, face_points, triangles, face.shape[:2])  # f_R
    region = (
        polygon_mask(region_polygon(face_points[jaw_index], face_points[nose_index], spec), face.shape[:2]) & covered
    )  # f_C
    return overlay(face, warped, region, spec.feather, seamless), region  # f_2


def solid_mask(
    face: np.ndarray,
    face_points: np.ndarray,
    colour: str = "blue",
    jaw_index: np.ndarray | None = None,
    nose_index: np.ndarray | None = None,
    spec: RegionSpec = RegionSpec(),
) -> tuple[np.ndarray, np.ndarray]:
    """A solid-colour medical mask (insightface's shipped mask texture) over the same region as DM.

    The rectangular texture is mapped onto the region piecewise-affinely: its top edge follows the
    line jaw → nose bridge → jaw, its sides and bottom follow the lower-face contour, and its centre
    line passes the nose tip and the mouth, so the pleats bend with the face. Returns ``(image, region)``.
    """
    from benchmark.models.landmarks import DLIB68_JAW, DLIB68_NOSE

    jaw_index = DLIB68_JAW if jaw_index is None else jaw_index
    nose_index = DLIB68_NOSE if nose_index is None else nose_index
    face_points = _check_points(face_points, "probe")
    texture = mask_texture(colour)
    th, tw = texture.shape[:2]
    jaw = face_points[jaw_index][spec.jaw_first : spec.jaw_last + 1].astype(np.float64)
    nose = face_points[nose_index].astype(np.float64)
    # Texture coordinates of the jaw chain by arc length along left side, bottom, right side.
    seg = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(jaw, axis=0), axis=1))]
    s = seg / max(seg[-1], 1e-6)
    side = th / (2.0 * th + tw)
    u = np.where(s < side, 0.0, np.where(s > 1 - side, 1.0, (s - side) / max(1 - 2 * side, 1e-6)))
    v = np.where(s < side, s / side, np.where(s > 1 - side, (1 - s) / side, 1.0))
    tex_pts = np.c_[u * (tw - 1), v * (th - 1)]
    tip = nose[min(3, len(nose) - 1)]
    mouth = face_points[48:68].mean(0) if len(face_points) >= 68 else (tip + jaw[len(jaw) // 2]) / 2
    dst = np.vstack([jaw, nose[spec.nose_index], tip, mouth])
    src = np.vstack([tex_pts, [(tw - 1) / 2, 0.0], [(tw - 1) / 2, 0.3 * (th - 1)], [(tw - 1) / 2, 0.62 * (th - 1)]])
    warped, covered = piecewise_affine(texture, src, dst, delaunay_triangles(dst), face.shape[:2])
    region = polygon_mask(region_polygon(face_points[jaw_index], nose, spec), face.shape[:2]) & covered
    return overlay(face, warped, region, spec.feather), region


def _check_points(points: np.ndarray, what: str) -> np.ndarray:
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise ValueError(f"{what} landmarks must be a finite (k, 2) array, got shape {points.shape}")
    return points


@lru_cache(maxsize=8)
def mask_texture(colour: str) -> np.ndarray:
    """The medical-mask texture of ``colour`` (RGB uint8) shipped with insightface."""
    from benchmark.data.images import read_image

    if colour not in MASK_COLOURS:
        raise ValueError(f"mask colour must be one of {', '.join(MASK_COLOURS)}, not {colour!r}")
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package 'insightface' (which ships the mask textures) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / f"mask_{colour}.jpg"
    if not path.is_file():
        raise FileNotFoundError(f"mask texture missing: {path}")
    texture = read_image(path)
    texture.setflags(write=False)
    return texture
