import numpy as np
import pytest

from benchmarks.contact_sheet import hue_turned_share
from llie.method.hue_guard import VISIBLE_SATURATION, VISIBLE_VALUE, hold_visible_hues
from llie.method.mapping import HUE_RAMP, LUMA, hue_angle, hue_turn


def test_turns_back_what_turned_and_leaves_the_rest():
    rng = np.random.default_rng(0)
    source = np.zeros((40, 60, 3), np.float32)
    source[:20] = [0.30, 0.12, 0.05]  # a visible orange
    source[20:] = [0.05, 0.05, 0.06]  # dark, nearly grey: no hue to keep
    source += rng.normal(0, 0.004, source.shape).astype(np.float32)
    out = np.clip(source * 2.5, 0, 1)
    out[:10] = [0.40, 0.45, 0.70]  # half of the orange turned blue-violet
    held = hold_visible_hues(source, out, start=30.0)
    assert hue_turned_share(source, out) > 0.4
    assert hue_turned_share(source, held) == 0.0
    assert np.abs(held[:10] @ LUMA - out[:10] @ LUMA).max() < 0.02  # brightness kept
    assert np.array_equal(held[10:], out[10:])  # hues that did not turn, and pixels without one: untouched
    assert hue_turn(source[:10], held[:10]).max() < 10


def test_is_free_where_nothing_shows():
    grey = np.full((8, 8, 3), 0.3, np.float32)
    out = np.full((8, 8, 3), [0.5, 0.3, 0.3], np.float32)
    assert hold_visible_hues(grey, out, start=30.0) is out


def _plain_guard(source, out, start, mask):
    """The rule written out pixel by pixel: angles, a 3x3 mean of the marked pixels, edges repeated."""
    top, bottom = source.max(axis=-1), source.min(axis=-1)
    shown = np.clip(((top - bottom) / np.maximum(top, 1e-6) - VISIBLE_SATURATION) / 0.05 + 1, 0, 1)
    shown *= np.clip((top - VISIBLE_VALUE) / 0.02 + 1, 0, 1)
    weight = shown * np.clip((hue_turn(source, out) - start) / HUE_RAMP, 0, 1)
    result = out.copy()
    h, w = weight.shape
    for y, x in zip(*np.nonzero(weight)):
        ys = np.clip([y - 1, y, y + 1], 0, h - 1)
        xs = np.clip([x - 1, x, x + 1], 0, w - 1)
        marked = [(i, j) for i in ys for j in xs if mask[i, j]]
        around = np.mean([source[i, j] for i, j in marked], axis=0)
        angle = np.radians(hue_angle(around))
        luma = out[y, x] @ LUMA
        x_axis, y_axis = 2 * out[y, x, 0] - out[y, x, 1] - out[y, x, 2], np.sqrt(3) * (out[y, x, 1] - out[y, x, 2])
        chroma = np.hypot(x_axis, y_axis)
        opponent = np.array([luma, chroma * np.cos(angle), chroma * np.sin(angle)])
        matrix = np.array([LUMA, [2, -1, -1], [0, np.sqrt(3), -np.sqrt(3)]])
        turned = np.clip(np.linalg.solve(matrix, opponent), 0, 1)
        result[y, x] += weight[y, x] * (turned - out[y, x])
    return result


@pytest.mark.parametrize("masked", [False, True])
def test_matches_the_rule_written_out(masked):
    rng = np.random.default_rng(3)
    source = rng.random((24, 30, 3), dtype=np.float32) * [0.5, 0.3, 0.2]
    source = (source + np.float32(0.05)).astype(np.float32)
    out = np.clip(source[..., [1, 2, 0]] * 2.0 + rng.normal(0, 0.05, source.shape), 0, 1).astype(np.float32)
    mask = rng.random((24, 30)) > 0.3 if masked else np.ones((24, 30), bool)
    mask[1:4, 1:4] = True  # no pixel without a marked neighbour (the plain rule would divide by zero)
    held = hold_visible_hues(source, out, start=30.0, mask=mask if masked else None)
    assert np.abs(held - out).max() > 0.1  # the case turns many hues
    np.testing.assert_allclose(held, _plain_guard(source, out, 30.0, mask), atol=2e-5)


def test_a_pixel_with_no_marked_pixel_around_keeps_its_own_hue():
    source = np.full((5, 5, 3), [0.2, 0.6, 0.1], np.float32)  # green
    out = np.full((5, 5, 3), [0.1, 0.3, 0.6], np.float32)  # turned blue
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = True  # the centre's 3x3 holds no marked pixel
    held = hold_visible_hues(source, out, start=30.0, mask=mask)
    assert hue_turn(source[2:3, 2:3], held[2:3, 2:3]).max() < 10  # green again (but for the clip to [0, 1]), not red
