from __future__ import annotations

import math
import weakref

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference as monai_sliding_window
from monai.networks.nets import UNet

from pipeline import runtime
from pipeline.engines import inferer
from pipeline.engines.inferer import (
    CPU_AUTO_INPUTS,
    WindowPredictor,
    auto_batch_size,
    autocast_dtype,
    balanced_batch_size,
    flip_sets,
    predict,
    prefers_channels_last,
    sliding_window_inference,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: a second thread only adds OpenMP spinning (4× slower on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        ({"sw_batch_size": 0}, r"sw_batch_size must be >= 1 or 'auto', got 0"),
    ],
)
def test_argument_errors(net2d, kwargs, pattern):
    args = {"roi_size": (8, 8), "sw_batch_size": 1, "overlap": 0.5} | kwargs
    with pytest.raises(ValueError, match=pattern):
        sliding_window_inference(torch.zeros(1, 2, 16, 16), predictor=net2d, **args)


def test_autocast_dtype_choices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(inferer, "cpu_has_bf16", lambda: False)
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("auto", cuda, inference=True) is torch.float16
    assert autocast_dtype("auto", cpu, inference=True) is None
    assert autocast_dtype("fp16", cpu) is torch.float16 and autocast_dtype("off", cuda) is None
    assert autocast_dtype("bf16", cuda, inference=True) is torch.bfloat16
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast_dtype("fp8", cpu)


@pytest.mark.parametrize(
    ("flag", "train_dtype"), [("avx512_bf16", torch.bfloat16), ("amx_bf16", torch.bfloat16), ("", None)]
)
def test_auto_amp_on_the_cpu_is_bf16_for_training_only_with_native_bf16(tmp_path, monkeypatch, flag, train_dtype):
    """``train.amp: auto`` on the CPU follows the cpuinfo flags (here a written file); inference stays fp32."""
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw {flag}\n")
    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "cpuinfo"))
    runtime.cpu_flags.cache_clear()
    try:
        cpu = torch.device("cpu")
        assert autocast_dtype("auto", cpu) is train_dtype
        assert autocast_dtype("auto", cpu, inference=True) is None
        assert autocast_dtype("off", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    finally:
        runtime.cpu_flags.cache_clear()


# ---- drop-in claims versus MONAI ----------------------------------------------------------------


@pytest.mark.parametrize("roi", [(None, 16), (0, 16), (-1, 16)])
def test_roi_entries_none_or_non_positive_mean_the_whole_axis(net2d, roi):
    x = torch.randn(1, 2, 24, 40, generator=torch.Generator().manual_seed(30))
    with torch.no_grad():
        ref = monai_sliding_window(x, roi, 2, net2d, overlap=0.5, mode="gaussian")
        ours = sliding_window_inference(x, roi, 2, net2d, overlap=0.5, mode="gaussian")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_cval_with_non_constant_padding_is_an_error(net2d):
    with pytest.raises(
        ValueError, match=r"cval applies to padding_mode='constant' only; got cval=1\.0 with 'replicate'"
    ):
        sliding_window_inference(torch.zeros(1, 2, 8, 8), (16, 16), 1, net2d, padding_mode="replicate", cval=1.0)


class _TwoHeads(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return {"seg": out, "edge": out[:, :1] * 2}


def test_dict_outputs_are_blended_per_key_like_monai(net2d):
    x = torch.randn(1, 2, 30, 37, generator=torch.Generator().manual_seed(31))
    net = _TwoHeads(net2d)
    with torch.no_grad():
        ref = monai_sliding_window(x, (16, 16), 3, net, overlap=0.5, mode="gaussian")
        ours = sliding_window_inference(x, (16, 16), 3, net, overlap=0.5, mode="gaussian", flips=[()])
    assert isinstance(ours, dict) and sorted(ours) == ["edge", "seg"]
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="returns a dict with keys"):
        predict(net, x, roi_size=(16, 16))


def test_flip_tta_never_exceeds_sw_batch_size(net3d):
    """8 flips per window in 3D at sw_batch_size=2: the flips are split over passes of 2 inputs."""
    x = torch.randn(1, 1, 20, 18, 17, generator=torch.Generator().manual_seed(32))
    rec = _Recorder(net3d)
    flips = flip_sets(3)
    with torch.no_grad():
        ours = sliding_window_inference(x, (16, 16, 16), 2, rec, overlap=0.5, mode="gaussian", flips=flips)
        ref = sliding_window_inference(x, (16, 16, 16), 16, net3d, overlap=0.5, mode="gaussian", flips=flips)
        padded = _Recorder(net3d)
        three = sliding_window_inference(
            x, (16, 16, 16), 3, padded, overlap=0.5, mode="gaussian", flips=flips, pad_batches=True
        )
    assert max(rec.sizes) == 2 and sum(rec.sizes) == 8 * 8  # 8 windows × 8 flips
    assert set(padded.sizes) == {3}  # groups of 3, 3, 2 (+1 repeat) per window
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(three, ref, atol=1e-5, rtol=1e-5)


def test_out_of_memory_splits_the_flips_of_one_window(net2d):
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(33))
    rec = _Recorder(net2d, fail_above=1)
    with torch.no_grad(), pytest.warns(UserWarning, match="retrying with 2 inputs"):
        ours = sliding_window_inference(x, (16, 16), 4, rec, flips=flip_sets(2))
        ref = sliding_window_inference(x, (16, 16), 4, net2d, flips=flip_sets(2))
    assert rec.sizes == [1, 1, 1, 1]
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


# ---- no global side effects --------------------------------------------------------------------


def test_predict_leaves_cudnn_benchmark_as_set(net2d):
    before = torch.backends.cudnn.benchmark
    try:
        for flag in (False, True):
            torch.backends.cudnn.benchmark = flag
            predict(net2d, torch.zeros(1, 2, 20, 20), roi_size=(16, 16), device="cpu")
            assert torch.backends.cudnn.benchmark is flag
    finally:
        torch.backends.cudnn.benchmark = before


def test_window_plans_are_cached_by_their_owner_and_bounded(net2d):
    assert not hasattr(inferer, "_weights")  # no process-wide cache of whole-image maps
    cache = inferer.WindowCache(maxsize=2)
    x = torch.zeros(1, 2, 20, 20)
    with torch.no_grad():
        for size in (20, 24, 28, 28):
            predict(net2d, torch.zeros(1, 2, size, size), roi_size=(16, 16), cache=cache)
    assert len(cache) == 2
    first = cache.plan((28, 28), (16, 16), (0.5, 0.5), "gaussian", (0.125, 0.125), torch.device("cpu"))
    again = cache.plan((28, 28), (16, 16), (0.5, 0.5), "gaussian", (0.125, 0.125), torch.device("cpu"))
    assert first is again
    cache.clear()
    assert len(cache) == 0
    predict(net2d, x, roi_size=(16, 16))  # without a cache: nothing is kept anywhere
    with pytest.raises(ValueError, match="maxsize must be >= 0, got -1"):
        inferer.WindowCache(-1)


def test_plan_run_stitch_compose_to_sliding_window_inference(net2d):
    x = torch.randn(1, 2, 30, 30, generator=torch.Generator().manual_seed(34))
    with torch.no_grad():
        plan = inferer.plan_windows((30, 30), (16, 16), (0.5, 0.5), "gaussian")
        jobs = [(0, sl) for sl in plan.slices]
        stitcher = inferer.Stitcher((1, 30, 30), plan.importance[0], torch.device("cpu"))
        for chunk, outputs in inferer.run_windows(x, jobs, (16, 16), net2d, 4):
            stitcher.add(chunk, outputs)
        out = stitcher.finish(lambda device: plan.inv_count, [0, 0, 0, 0])
        ref = sliding_window_inference(x, (16, 16), 4, net2d, overlap=0.5, mode="gaussian")
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


class _Loud(torch.nn.Module):
    """Logits of 1e5: finite in fp32 and bf16, inf in fp16 (largest finite value 65504)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1e5)
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x.abs() + 1)


def test_fp16_overflow_is_redone_in_bf16():
    x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(18))
    net = _Loud().eval()
    with pytest.warns(UserWarning, match="fp16 inference overflowed"):
        probs = predict(net, x, roi_size=(8, 8), amp_dtype=torch.float16)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs, predict(net, x, roi_size=(8, 8), amp_dtype=torch.bfloat16))


class _Recorder:
    """Wraps a network; records the batch size and type of every input it is called with."""

    def __init__(self, net, fail_above: int | None = None):
        self.net, self.fail_above, self.sizes, self.types = net, fail_above, [], set()

    def __call__(self, x):
        self.types.add(type(x))
        if self.fail_above is not None and x.shape[0] > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.sizes.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize(
    ("per_input", "free", "n_inputs", "cap", "expected"),
    [
        (100, 1000, 50, 32, 8),  # 0.8 × 1000 // 100
        (100, 10**9, 50, 32, 32),  # capped
        (100, 10**9, 5, 32, 5),  # never more than there are inputs
        (10**9, 1000, 50, 32, 1),  # at least one
        (0, 1000, 50, 16, 16),  # a probe that measured nothing
    ],
)
def test_auto_batch_size(per_input, free, n_inputs, cap, expected):
    assert auto_batch_size(per_input, free, n_inputs=n_inputs, cap=cap) == expected


@pytest.mark.parametrize(("n", "limit", "expected"), [(16, 5, 4), (16, 6, 6), (147, 16, 15), (3, 8, 3), (8, 8, 8)])
def test_balanced_batch_size(n, limit, expected):
    assert balanced_batch_size(n, limit) == expected
    assert math.ceil(n / expected) == math.ceil(n / limit)


def test_balanced_batch_size_rejects_empty():
    with pytest.raises(ValueError, match="n_jobs and limit must be >= 1, got 0 and 4"):
        balanced_batch_size(0, 4)


def test_batches_are_balanced_and_padding_keeps_the_result(net2d):
    x = torch.randn(1, 2, 40, 40, generator=torch.Generator().manual_seed(8))  # 4 × 4 windows of 16²
    with torch.no_grad():
        ref = monai_sliding_window(x, (16, 16), 6, net2d, overlap=0.5, mode="gaussian")
        plain, padded = _Recorder(net2d), _Recorder(net2d)
        a = sliding_window_inference(x, (16, 16), 6, plain, overlap=0.5, mode="gaussian")
        b = sliding_window_inference(x, (16, 16), 6, padded, overlap=0.5, mode="gaussian", pad_batches=True)
    assert plain.sizes == [6, 6, 4] and padded.sizes == [6, 6, 6]
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, ref, atol=1e-5, rtol=1e-5)


def test_auto_batch_uses_free_memory(monkeypatch, net3d):
    """The CUDA branch of ``sw_batch_size="auto"`` with fake memory figures: 5 inputs fit."""
    monkeypatch.setattr(inferer, "_measures_memory", lambda device: True)
    monkeypatch.setattr(inferer, "_probe", lambda fn, device, n: (fn(), 1000))
    monkeypatch.setattr(inferer, "_free_bytes", lambda device: 6250)  # 0.8 × 6250 = 5 × 1000
    x = torch.randn(1, 1, 40, 24, 24, generator=torch.Generator().manual_seed(9))  # 4 × 2 × 2 windows
    rec = _Recorder(net3d)
    with torch.no_grad():
        ours = sliding_window_inference(x, (16, 16, 16), "auto", rec, overlap=0.5, mode="gaussian")
        ref = monai_sliding_window(x, (16, 16, 16), 4, net3d, overlap=0.5, mode="gaussian")
    # one probe window (kept), then the other 15 in batches of at most 5
    assert rec.sizes == [1, 5, 5, 5]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_auto_batch_counts_flips_as_inputs(monkeypatch, net3d):
    monkeypatch.setattr(inferer, "_measures_memory", lambda device: True)
    monkeypatch.setattr(inferer, "_probe", lambda fn, device, n: (fn(), 1000))
    monkeypatch.setattr(inferer, "_free_bytes", lambda device: 20000)  # 16 inputs = 2 windows × 8 flips
    x = torch.randn(1, 1, 24, 24, 16, generator=torch.Generator().manual_seed(10))  # 2 × 2 × 1 windows
    rec = _Recorder(net3d)
    with torch.no_grad():
        ours = sliding_window_inference(x, 16, "auto", rec, overlap=0.5, mode="gaussian", flips=flip_sets(3))
        ref = sliding_window_inference(x, 16, 8, net3d, overlap=0.5, mode="gaussian", flips=flip_sets(3))
    assert rec.sizes == [8, 16, 8]  # the probe window's 8 flips, then 3 windows: 2 + 1
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_auto_batch_on_cpu_is_fixed(net2d):
    x = torch.randn(1, 2, 40, 40, generator=torch.Generator().manual_seed(11))
    rec = _Recorder(net2d)
    with torch.no_grad():
        sliding_window_inference(x, (16, 16), "auto", rec, overlap=0.5)
    assert max(rec.sizes) == CPU_AUTO_INPUTS and sum(rec.sizes) == 16


def test_out_of_memory_halves_the_batch(net2d):
    x = torch.randn(1, 2, 40, 40, generator=torch.Generator().manual_seed(12))
    rec = _Recorder(net2d, fail_above=2)
    with torch.no_grad(), pytest.warns(UserWarning, match="ran out of memory") as record:
        ours = sliding_window_inference(x, (16, 16), 16, rec, overlap=0.5, mode="gaussian")
    with torch.no_grad():
        ref = monai_sliding_window(x, (16, 16), 16, net2d, overlap=0.5, mode="gaussian")
    assert [str(w.message).rsplit(" ", 2)[-2] for w in record] == ["8", "4", "2"]
    assert max(rec.sizes) == 2 and sum(rec.sizes) == 16
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_out_of_memory_with_one_window_is_raised(net2d):
    rec = _Recorder(net2d, fail_above=0)
    with torch.no_grad(), pytest.raises(torch.OutOfMemoryError, match="simulated"):
        sliding_window_inference(torch.zeros(1, 2, 20, 20), (16, 16), 1, rec)


def test_metatensor_input_reaches_the_network_as_a_plain_tensor(net2d):
    x = MetaTensor(torch.randn(1, 2, 24, 24, generator=torch.Generator().manual_seed(13)))
    rec = _Recorder(net2d)
    with torch.no_grad():
        out = sliding_window_inference(x, (16, 16), 4, rec, overlap=0.5)
        ref = monai_sliding_window(x.as_tensor(), (16, 16), 4, net2d, overlap=0.5)
    assert rec.types == {torch.Tensor} and type(out) is torch.Tensor
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_window_predictor_chooses_channels_last_by_norm_and_device():
    instance = UNet(3, 1, 2, channels=(4, 8), strides=(2,), norm="instance")
    batch = UNet(3, 1, 2, channels=(4, 8), strides=(2,), norm="batch")
    cpu, cuda_ = torch.device("cpu"), torch.device("cuda")
    assert prefers_channels_last(batch, cuda_) and not prefers_channels_last(instance, cuda_)
    assert not prefers_channels_last(batch, cpu)
    assert WindowPredictor(batch, cuda_).memory_format is torch.channels_last_3d
    assert WindowPredictor(instance, cuda_).memory_format is None
    assert WindowPredictor(batch, cpu).memory_format is None
    assert WindowPredictor(instance, cpu, channels_last=True).memory_format is torch.channels_last_3d
    assert WindowPredictor(batch, cuda_, channels_last=False).memory_format is None
    assert WindowPredictor(UNet(2, 1, 2, channels=(4, 8), strides=(2,)), cpu, channels_last=True).memory_format is (
        torch.channels_last
    )


def test_channels_last_layout_is_restored_and_equal():
    torch.manual_seed(14)
    net = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), norm="batch").eval()
    weight = [p for p in net.parameters() if p.ndim == 5][1]  # 4 input channels: layouts differ
    predictor = WindowPredictor(net, torch.device("cpu"), channels_last=True)
    with predictor.layout():
        assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
    assert weight.is_contiguous()
    x = torch.randn(1, 1, 20, 18, 17, generator=torch.Generator().manual_seed(15))
    cl = predict(net, x, roi_size=(16, 16, 16), channels_last=True)
    assert weight.is_contiguous()  # converted for the call, converted back after
    plain = predict(net, x, roi_size=(16, 16, 16), channels_last=False)
    torch.testing.assert_close(cl, plain, atol=1e-5, rtol=1e-5)


def test_compile_runs_one_static_shape(monkeypatch, net2d):
    compiled = []

    class Compiled(_Recorder):
        def __len__(self):  # like torch.compile's wrapper of a module without len()
            raise TypeError("UNet does not support len()")

    def fake_compile(module, dynamic=None):
        assert dynamic is False
        rec = Compiled(module)
        compiled.append(rec)
        return rec

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(inferer, "_COMPILED", weakref.WeakKeyDictionary())
    x = torch.randn(1, 2, 40, 40, generator=torch.Generator().manual_seed(16))
    probs = predict(net2d, x, roi_size=(16, 16), sw_batch_size=6, compile=True)
    assert len(compiled) == 1 and compiled[0].sizes == [6, 6, 6]
    predict(net2d, x, roi_size=(16, 16), sw_batch_size=6, compile=True)
    assert len(compiled) == 1  # cached per network
    torch.testing.assert_close(probs, predict(net2d, x, roi_size=(16, 16), sw_batch_size=6), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- CUDA (skipped without it)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def no_tf32():
    """fp32 comparisons on the GPU: TF32 convolutions would differ by ~1e-3 between algorithms."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _ct(shape, device="cuda"):
    """A smooth random field plus noise (random-weight logits then vary like organs, not like noise)."""
    g = torch.Generator().manual_seed(17)
    coarse = torch.randn(1, 1, *(s // 16 for s in shape), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)
    return (smooth + 0.2 * torch.randn(1, 1, *shape, generator=g)).to(device)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("name", ["unet", "resunet", "denseunet", "monai_dynunet", "monai_unet"])
def test_cuda_default_inference_dtype_keeps_the_fp32_argmax(name):
    """The inference default (``auto`` → fp16 on CUDA, see ``autocast_dtype``) keeps ≥ 99.5 % of
    voxels' fp32 argmax; bf16's share is printed (on the CPU it was 98.8 % for DynUNet)."""
    import pipeline.networks  # noqa: F401  (registers)
    from pipeline.registry import NETWORKS

    torch.manual_seed(0)
    net = NETWORKS.build(name, 3, 1, 3).cuda().eval()
    x = _ct((128, 128, 96))
    cuda_ = torch.device("cuda")
    with torch.no_grad():
        torch.backends.cudnn.benchmark = False
        ref = monai_sliding_window(x, (64, 64, 64), 4, net, overlap=0.5, mode="gaussian").argmax(1)
        agree = {}
        for dtype in (autocast_dtype("auto", cuda_, inference=True), torch.bfloat16):
            predictor = WindowPredictor(net, cuda_, amp_dtype=dtype)
            with predictor.layout():
                ours = sliding_window_inference(x, (64, 64, 64), "auto", predictor, 0.5, "gaussian")
            agree[dtype] = (ours.argmax(1) == ref).float().mean().item()
    print(f"{name}: argmax equal to fp32 on " + ", ".join(f"{100 * v:.3f} % ({k})" for k, v in agree.items()))
    assert agree[torch.float16] >= 0.995, f"{name}: fp16 argmax equals fp32 on {100 * agree[torch.float16]:.2f} %"


@pytest.mark.gpu
@cuda
def test_cuda_host_stitching_equals_device_stitching(no_tf32):
    net = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2)).cuda().eval()
    x = _ct((80, 72, 48))
    with torch.no_grad():
        on_gpu = sliding_window_inference(x, 32, 3, net, 0.5, "gaussian")
        on_cpu = sliding_window_inference(x, 32, 3, net, 0.5, "gaussian", device="cpu")
        from_cpu = sliding_window_inference(x.cpu(), 32, 3, net, 0.5, "gaussian", sw_device="cuda")
    assert on_cpu.device.type == "cpu" and from_cpu.device.type == "cpu"
    torch.testing.assert_close(on_cpu, on_gpu.cpu(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_cpu, on_gpu.cpu(), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@cuda
def test_cuda_auto_batch_equals_monai(no_tf32):
    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2)).cuda().eval()
    x = _ct((96, 80, 64))
    with torch.no_grad():
        _, per_input = inferer._probe(lambda: net(torch.zeros(2, 1, 32, 32, 32, device="cuda")), x.device, 2)
        ref = monai_sliding_window(x, 32, 4, net, overlap=0.5, mode="gaussian")
        ours = sliding_window_inference(x, 32, "auto", net, overlap=0.5, mode="gaussian")
    assert per_input >= 3 * 32**3 * 4  # at least one window's fp32 output
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_cuda_channels_last_matches_eager(norm, no_tf32):
    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), norm=norm).cuda().eval()
    x = _ct((64, 64, 48))
    eager = predict(net, x, roi_size=(32, 32, 32), channels_last=False)
    cl = predict(net, x, roi_size=(32, 32, 32), channels_last=True)
    torch.testing.assert_close(cl, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@cuda
def test_cuda_compile_matches_eager(no_tf32):
    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2)).cuda().eval()
    x = _ct((64, 64, 48))
    eager = predict(net, x, roi_size=(32, 32, 32), sw_batch_size=8)
    compiled = predict(net, x, roi_size=(32, 32, 32), sw_batch_size=8, compile=True)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_tta_mirrors_only_the_given_axes():
    """infer.tta mirrors the axes training flips (transforms.augment.flip.axes): flip_sets and predict."""
    from pipeline.engines.inferer import flip_sets, predict

    assert flip_sets(3) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert flip_sets(3, [1, 0]) == [(), (2,), (3,), (2, 3)]
    assert flip_sets(2, []) == [()]
    with pytest.raises(ValueError, match="flip axes must be in 0..1"):
        flip_sets(2, [2])
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()  # not mirror-symmetric
    x = torch.randn(1, 1, 12, 10)
    got = predict(net, x, roi_size=(12, 10), tta=True, tta_axes=[1], mode="constant")
    with torch.no_grad():
        logits = (net(x) + torch.flip(net(torch.flip(x, (3,))), (3,))) / 2
    torch.testing.assert_close(got, torch.softmax(logits, 1), atol=1e-5, rtol=1e-5)
    every = predict(net, x, roi_size=(12, 10), tta=True, mode="constant")
    assert not torch.allclose(got, every, atol=1e-4)
