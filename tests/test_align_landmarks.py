"""Alignment, landmarks, detectors and dlib chips on real LFW photos (needs ../shared/data/lfw)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.data.images import read_image
from benchmark.models.align import align_face, alignment_matrix, arcface_template, transform_points
from benchmark.models.base import ModelUnavailable
from benchmark.models.detection import Detection, YuNetDetector, create_detector, select_face
from benchmark.models.landmarks import DlibLandmarker, create_landmarker, dlib_chip, five_from_dlib68, order_contour


@pytest.fixture(scope="module")
def photo(lfw_dir):
    return read_image(lfw_dir / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")


@pytest.fixture(scope="module")
def dlib68():
    return DlibLandmarker()


def test_template_maps_onto_itself():
    tpl = arcface_template()
    m = alignment_matrix(tpl)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-4)


def test_alignment_puts_the_five_points_near_the_template(photo, dlib68):
    marks = dlib68.landmarks(photo)
    crop, m = align_face(photo, marks.five)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    err = np.linalg.norm(transform_points(marks.five, m) - arcface_template(), axis=1)
    assert err.max() < 6.0, err  # a similarity fit of a near-frontal face
    # the 68 points of the crop, found again on the crop, agree with the mapped ones
    again = dlib68.landmarks_aligned(crop)
    assert np.abs(again.five - transform_points(marks.five, m)).mean() < 3.0


def test_dlib68_parts_and_order(photo, dlib68):
    marks = dlib68.landmarks(photo)
    assert marks.points.shape == (68, 2) and marks.jaw.shape == (17, 2) and marks.nose.shape == (9, 2)
    x0, y0, x1, y1 = marks.box
    assert (x0 - 20 < marks.five[:, 0]).all() and (marks.five[:, 0] < x1 + 20).all()
    assert marks.five[0, 0] < marks.five[1, 0]  # image-left eye first (ArcFace order)
    assert marks.jaw[0, 0] < marks.jaw[8, 0] < marks.jaw[16, 0]
    np.testing.assert_allclose(marks.five, five_from_dlib68(marks.points))


def test_order_contour_recovers_a_shuffled_jaw(photo, dlib68):
    marks = dlib68.landmarks(photo)
    shuffled = marks.jaw[np.random.default_rng(0).permutation(17)]
    np.testing.assert_array_equal(order_contour(shuffled, marks.points.mean(0)), marks.jaw)


def test_yunet_five_points_agree_with_dlib(photo, dlib68):
    found = YuNetDetector().detect(photo)
    assert found, "YuNet found no face in an LFW portrait"
    det = select_face(found, photo.shape)
    assert det.five.shape == (5, 2) and det.score > 0.6
    assert det.five[0, 0] < det.five[1, 0] and det.five[3, 0] < det.five[4, 0]
    # eyes / nose / mouth of two independent models within a few pixels on a 250x250 photo
    assert np.linalg.norm(det.five - dlib68.landmarks(photo).five, axis=1).max() < 10.0


def test_one_detection_feeds_crop_and_dlib_chip(photo, dlib68):
    marks = dlib68.landmarks(photo)
    chip = dlib_chip(photo, marks.points)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8 and chip.std() > 10
    # 5-point dlib shapes work too; wrong counts are refused
    with pytest.raises(ValueError, match="68 or 5"):
        dlib_chip(photo, marks.points[:10])


def test_grey_and_rgba_arrays_are_accepted(photo, dlib68):
    grey = photo.mean(2).astype(np.uint8)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    assert dlib68.landmarks(grey).points.shape == (68, 2)
    assert dlib68.landmarks(rgba).points.shape == (68, 2)


def test_select_face_rules():
    centre = Detection(box=(100, 100, 150, 150), score=1.0)
    big_corner = Detection(box=(0, 0, 70, 70), score=1.0)
    shape = (250, 250, 3)
    assert select_face([big_corner, centre], shape, "center") is centre
    assert select_face([big_corner, centre], shape, "largest") is big_corner
    with pytest.raises(ValueError):
        select_face([centre], shape, "nearest")


def test_missing_model_files_are_reported():
    with pytest.raises(ModelUnavailable, match="detector-model"):
        create_detector("scrfd")
    with pytest.raises(ModelUnavailable, match="not found"):
        create_detector("scrfd", "/nonexistent/det_10g.onnx")
    with pytest.raises(ModelUnavailable, match="landmarker-model"):
        create_landmarker("2d106")
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("mtcnn")
    with pytest.raises(ValueError, match="unknown landmarker"):
        create_landmarker("mediapipe")
