import cv2
import numpy as np

from edge_agent.imaging import interpolation_for, resize


def test_area_filter_from_a_factor_of_two_bilinear_below_and_for_enlarging():
    assert interpolation_for((1920, 1080), (960, 540)) == cv2.INTER_AREA
    assert interpolation_for((1920, 1080), (224, 224)) == cv2.INTER_AREA
    assert interpolation_for((480, 270), (256, 144)) == cv2.INTER_LINEAR
    assert interpolation_for((64, 64), (224, 224)) == cv2.INTER_LINEAR


def test_resize_keeps_flat_regions_flat_and_returns_the_size_asked_for():
    image = np.full((270, 480, 3), (10, 120, 240), np.uint8)
    for width, height in [(256, 144), (120, 68), (640, 360)]:
        out = resize(image, width, height)
        assert out.shape == (height, width, 3)
        assert (out == (10, 120, 240)).all()


def test_resize_to_the_same_size_is_the_image_itself():
    image = np.zeros((144, 256, 3), np.uint8)
    assert resize(image, 256, 144) is image
