import numpy as np
import pytest

from lofi.data.sampling import default_stride, segment_frame_range, snippet_frame_indices, snippet_times
from lofi.fidelity import Fidelity


@pytest.mark.parametrize("L", [25, 50, 100])
@pytest.mark.parametrize("size", [112, 158, 224])
@pytest.mark.parametrize("num_frames", [37, 800, 1800, 2701])
def test_snippets_cover_start_middle_end(L, size, num_frames):
    fid = Fidelity(L, 8, size, size)
    frames = snippet_frame_indices(num_frames, fid.L, fid.T)
    stride = default_stride(num_frames, L, 8)
    assert frames.shape == (L, 8) and frames.dtype == np.int64
    assert frames.min() >= 0 and frames.max() <= num_frames - 1
    assert np.all(np.diff(frames, axis=1) >= 0) and np.all(np.diff(frames[:, 0]) >= 0)
    # start and end: the gap before the first and after the last sampled frame is less than one snippet step
    step = num_frames / L
    assert frames[0, 0] < step and frames[-1, -1] > num_frames - 1 - step
    if num_frames < L * 8:
        assert frames[0, 0] == 0  # short video: the first snippet is clipped at the start
    # middle: the snippet around the video's centre holds frames around the centre
    mid = frames[L // 2]
    centre = (L // 2 + 0.5) * num_frames / L - 0.5
    assert abs(mid.mean() - (centre - stride / 2)) <= 1.0
    # unclipped snippets are exactly T frames `stride` apart
    inner = frames[1:-1]
    if num_frames >= L * 8:
        assert np.all(np.diff(inner, axis=1) == stride)
        # the default stride tiles the video: consecutive snippets do not overlap
        assert np.all(inner[1:, 0] > inner[:-1, -1])


def test_pinned_small_case():
    frames = snippet_frame_indices(40, L=4, T=4)  # stride floor(40/16) = 2, centres 4.5, 14.5, 24.5, 34.5
    assert default_stride(40, 4, 4) == 2
    np.testing.assert_array_equal(frames, [[1, 3, 5, 7], [11, 13, 15, 17], [21, 23, 25, 27], [31, 33, 35, 37]])
    np.testing.assert_allclose(snippet_times(frames, fps=10.0), [0.45, 1.45, 2.45, 3.45])


def test_short_video_and_stride_override():
    frames = snippet_frame_indices(10, L=100, T=8)
    assert frames.shape == (100, 8) and frames.min() == 0 and frames.max() == 9
    over = snippet_frame_indices(1800, L=25, T=8, stride=5)
    assert np.all(np.diff(over[1:-1], axis=1) == 5)


def test_segment_range_and_bad_input():
    start, end = segment_frame_range((2.0, 4.0), fps=15, num_frames=150)
    assert (start, end) == (30, 60)
    frames = snippet_frame_indices(150, L=5, T=4, start=start, end=end)
    assert frames.min() >= 30 and frames.max() <= 59
    assert segment_frame_range((9.99, 20.0), fps=15, num_frames=150) == (149, 150)
    with pytest.raises(ValueError, match=r"\[0, 200\) is not inside \[0, 150\)"):
        snippet_frame_indices(150, 5, 4, end=200)


@pytest.mark.parametrize("size", [112, 158, 224])
@pytest.mark.parametrize("height,width", [(256, 340), (340, 256), (256, 256)])
def test_spatial_policy_never_squashes(size, height, width):
    import torch

    from lofi.data.spatial import apply_crop, crop_params

    rng = np.random.default_rng(0)
    for train in (True, False):
        crop = crop_params(height, width, size, size, train, rng)
        assert min(crop.resize_h, crop.resize_w) == size  # short side resized to the fidelity's size
        assert abs(crop.resize_w / crop.resize_h - width / height) < 2 / size  # aspect kept up to rounding
        assert 0 <= crop.top <= crop.resize_h - size and 0 <= crop.left <= crop.resize_w - size
        if not train:
            assert (crop.top, crop.left, crop.flip) == ((crop.resize_h - size) // 2, (crop.resize_w - size) // 2, False)
    frames = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
    assert apply_crop(frames, crop).shape == (2, 3, size, size)
    flips = [crop_params(height, width, size, size, True, rng).flip for _ in range(200)]
    assert 60 < sum(flips) < 140
