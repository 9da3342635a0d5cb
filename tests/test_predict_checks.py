"""`predict` refuses images the networks cannot use and warns (once) on images that look like 0..1 floats."""
from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from stereo_depth_ros.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def student():
    return load_model("rt_igev")  # seeded init: these checks do not depend on the weights


@pytest.mark.parametrize("height, width", [(31, 64), (64, 16), (1, 1)])
def test_predict_refuses_images_smaller_than_32_px(student, height, width):
    image = torch.full((1, 3, height, width), 128.0)
    with pytest.raises(ValueError, match=f"images of {width}x{height} are too small: the networks need at least "
                                         "32x32"):
        student.predict(image, image)


def test_predict_warns_once_when_images_look_like_0_to_1(student):
    model = student
    model._input_range_checked = False  # as loaded: nothing decided yet
    g = torch.Generator().manual_seed(0)
    unit = torch.rand(1, 3, 32, 64, generator=g)
    black = torch.zeros(1, 3, 32, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(black, black, iters=1)  # a black warm-up frame decides nothing
        model.predict(unit, unit, iters=1)
        model.predict(unit, unit, iters=1)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "expect RGB 0..255" in messages[0], messages
    assert caught[0].filename == __file__  # points at the caller's line
    model._input_range_checked = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student.predict(unit * 255, unit * 255, iters=1)  # 0..255: no warning
        student.predict(unit.to(torch.uint8), unit.to(torch.uint8), iters=1)  # integer images are not checked
