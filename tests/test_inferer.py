from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference as monai_sliding_window
from monai.networks.nets import UNet

from pipeline.engines.inferer import autocast_dtype, flip_sets, predict, sliding_window_inference


@pytest.fixture(scope="module")
def net3d():
    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2)).eval()


@pytest.fixture(scope="module")
def net2d():
    torch.manual_seed(1)
    return UNet(2, 2, 2, channels=(4, 8, 16), strides=(2, 2)).eval()


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "mode", "batch"),
    [
        ((1, 1, 27, 25, 19), (16, 16, 16), 0.5, "gaussian", 4),
        ((2, 1, 20, 33, 17), (16, 16, 16), 0.25, "constant", 3),
        ((1, 1, 10, 40, 12), (16, 16, 16), 0.5, "gaussian", 1),  # smaller than the window: padded
        ((1, 1, 31, 16, 19), (16, 16, 8), (0.5, 0.0, 0.3), "gaussian", 5),
    ],
)
def test_equals_monai_3d(net3d, shape, roi, overlap, mode, batch):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = monai_sliding_window(x, roi, batch, net3d, overlap=overlap, mode=mode)
        ours = sliding_window_inference(x, roi, batch, net3d, overlap=overlap, mode=mode)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_equals_monai_2d_with_padding_modes(net2d):
    x = torch.randn(1, 2, 45, 23, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for padding in ("constant", "replicate"):
            ref = monai_sliding_window(x, (32, 32), 2, net2d, overlap=0.5, mode="gaussian", padding_mode=padding)
            ours = sliding_window_inference(x, (32, 32), 2, net2d, overlap=0.5, mode="gaussian", padding_mode=padding)
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_cpu_stitching_equals_device_path(net2d):
    x = torch.randn(1, 2, 50, 37, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = sliding_window_inference(x, (32, 32), 3, net2d, overlap=0.5, mode="gaussian", device="cpu", sw_device="cpu")
        b = sliding_window_inference(x, (32, 32), 3, net2d, overlap=0.5, mode="gaussian")
    torch.testing.assert_close(a, b, atol=0, rtol=0)


class _Ramp(torch.nn.Module):
    """A network that is not flip-equivariant: logits depend on absolute position in the window."""

    def forward(self, x):
        pos = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x[:, :1])
        return torch.cat([x[:, :1] + pos, -x[:, :1]], dim=1)


def test_tta_averages_flipped_predictions_flipped_back():
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    net = _Ramp()
    flips = flip_sets(2)
    assert flips == [(), (2,), (3,), (2, 3)]
    with torch.no_grad():
        ours = sliding_window_inference(x, (8, 8), 4, net, overlap=0.0, flips=flips)
        expected = sum(torch.flip(net(torch.flip(x, f)), f) if f else net(x) for f in flips) / 4
        plain = sliding_window_inference(x, (8, 8), 4, net, overlap=0.0)
    torch.testing.assert_close(ours, expected)
    # the ramp's mirror image averages to a constant (W - 1) / 2 along the last axis
    torch.testing.assert_close(ours[:, 0] - x[:, 0], torch.full_like(x[:, 0], 3.5))
    assert not torch.allclose(plain, ours)


def test_tta_batch_size_does_not_change_the_result(net3d):
    x = torch.randn(1, 1, 20, 18, 17, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a = sliding_window_inference(x, (16, 16, 16), 1, net3d, overlap=0.5, mode="gaussian", flips=flip_sets(3))
        b = sliding_window_inference(x, (16, 16, 16), 16, net3d, overlap=0.5, mode="gaussian", flips=flip_sets(3))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_predict_returns_probabilities(net2d):
    x = torch.randn(2, 2, 40, 36, generator=torch.Generator().manual_seed(7))
    probs = predict(net2d, x, roi_size=(32, 32), overlap=0.5, tta=True)
    assert probs.shape == (2, 2, 40, 36)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 40, 36))
    with torch.no_grad():
        ref = torch.softmax(sliding_window_inference(x, (32, 32), 4, net2d, 0.5, "gaussian", flips=flip_sets(2)), 1)
    torch.testing.assert_close(probs, ref)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"overlap": 1.0}, r"overlap must be in \[0, 1\), got 1\.0"),
        ({"roi_size": (8, 8, 8)}, r"roi_size \(8, 8, 8\) has 3 dims but inputs \(1, 2, 16, 16\) have 2"),
        ({"sw_batch_size": 0}, r"sw_batch_size must be >= 1, got 0"),
    ],
)
def test_argument_errors(net2d, kwargs, pattern):
    args = {"roi_size": (8, 8), "sw_batch_size": 1, "overlap": 0.5} | kwargs
    with pytest.raises(ValueError, match=pattern):
        sliding_window_inference(torch.zeros(1, 2, 16, 16), predictor=net2d, **args)


def test_autocast_dtype_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("fp16", cpu) is torch.float16 and autocast_dtype("off", cuda) is None
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast_dtype("fp8", cpu)
