"""``medseg plan``: a training configuration from a dataset fingerprint and a compute budget.

Rules learned from nnU-Net v2's ``ExperimentPlanner`` (``default_experiment_planner.py``,
``network_topology.py``, ``default_normalization_schemes.py``), changed where a short CPU run
needs it:

* **Target spacing** (3D): the median; for strongly anisotropic data (worst axis > 3× the others
  in mm and < 1/3 of them in voxels) the out-of-plane axis takes the 10th percentile of its
  spacings (nnU-Net's rule). No resampling when every case is already within 1 % of it.
* **Topology** (:func:`topology`, nnU-Net's ``get_pool_and_conv_props``): an axis is pooled while
  its feature map stays >= 8 voxels and its current spacing is within 2× of the finest one;
  kernels are 1 along an axis until its spacing comes within 2× of the finest (thick slices are
  not mixed at full resolution); levels capped at :data:`MAX_LEVELS`.
* **Patch**: nnU-Net's start (256³ / 2048² voxels with the aspect of the spacing, never above the
  median image), then the axis with the largest patch / median-shape ratio shrinks until the
  *measured* step fits both the memory limit and at least :data:`MIN_ITERATIONS` steps in the
  training share of the budget. nnU-Net estimates memory statically and has no time budget.
* **Batch** >= 2 crops per step (``batch_size × num_samples``); on a GPU as many as fit 80 % of
  memory, capped where a batch covers 5 % of the dataset's voxels (nnU-Net's cap).
* **Normalisation layer**: instance norm (batch norm with <= 4 crops per step has running
  statistics far from the batch's after a short run: issue 12's lung run).
* **Intensity**: CT (``dataset.json`` or HU range): clip to the foreground 0.5 / 99.5 percentiles
  and map linearly (``mode: window``, a fixed affine map equivalent to nnU-Net's clip + global
  foreground z-score up to scale and shift); other modalities: per-case z-score.
* **Sampling**: crops centred on foreground 2 : 1 when foreground is < 1 % of voxels, else 1 : 1.
* **Augmentation** per dimensionality: 2D ±180°; 3D ±30° about every axis, or only about the
  thick axis (in-plane) for anisotropic data (nnU-Net's ``do_dummy_2D_data_aug`` rule).
* **Loss**: Dice + CE; plus the band BCE term when objects touch (instance layouts), else the
  boundary (signed distance) term for thin structures (skeleton / volume >= 0.15; blobs < 0.06).
* **Budget**: a few training steps of the planned network on the planned patch are timed on the
  target device in a fresh process (its peak memory measured too), and epochs, iterations per
  epoch and the validation interval are fitted so the whole run, validation and start-up
  included, fits ``budget_minutes``; ``train.time_budget`` is the safety net.

Every planned value is written with its reason as a YAML comment (:func:`render_plan`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from pipeline import runtime

__all__ = [
    "MAX_LEVELS",
    "MIN_ITERATIONS",
    "Measurement",
    "measure_step",
    "plan_config",
    "render_plan",
    "target_spacing",
    "topology",
]

MAX_LEVELS = 6
#: Fewest training steps a plan aims for; the patch shrinks until the budget allows them.
MIN_ITERATIONS = 300
#: CPU probe crop (voxels) for the first timing: larger crops are extrapolated, then measured.
PROBE_VOXELS = {2: 256 * 256, 3: 48 * 48 * 48}
ANISOTROPY = 3.0
MIN_FEATURE_MAP = 4
#: Share of the measured step time added for data loading and augmentation on the same cores.
DATA_OVERHEAD = 0.15
#: How many times the steps that the timing says fit the run is planned for (the budget ends it).
OVERPLAN = 3.0
NETWORKS = ("unet", "resunet", "denseunet")
#: Skeleton voxels per foreground voxel above which a structure counts as thin (about 1 / width).
THIN_SKELETON_RATIO = 0.15


@dataclass(frozen=True)
class Measurement:
    """A timed training step: seconds per step, seconds per inference window, peak memory (GB),
    and on the CPU the fastest torch thread count (``0``: not chosen) with each count's step time."""

    step_s: float
    window_s: float
    peak_gb: float
    base_gb: float = 0.0
    threads: int = 0
    by_threads: tuple[tuple[int, float], ...] = ()


class _Reasoned:
    """A planned value and why (rendered as ``key: value  # reason``)."""

    def __init__(self, value: Any, reason: str = "") -> None:
        self.value, self.reason = value, reason


def _r(value: Any, reason: str = "") -> _Reasoned:
    return _Reasoned(value, reason)


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    return " × ".join(f"{v:.{digits}g}" for v in values)


# --- rules -------------------------------------------------------------------------------------


def target_spacing(fp: Mapping[str, Any]) -> tuple[list[float], str]:
    """The target spacing of 3D data and its reason (nnU-Net's median / 10th-percentile rule)."""
    spacings = np.asarray(fp["spacings"], float)
    shapes = np.asarray(fp["shapes"], float)
    target = np.median(spacings, 0)
    size = np.median(shapes, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > ANISOTROPY * max(target[others])
    aniso_voxels = size[worst] * ANISOTROPY < min(size[others])
    reason = f"median spacing {_fmt(target)}"
    if aniso_spacing and aniso_voxels:
        p10 = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(p10, max(target[others]) + 1e-5)
        reason += f"; axis {worst} strongly anisotropic: its 10th percentile {target[worst]:.3g} (nnU-Net)"
    return [round(float(t), 5) for t in target], reason


def _under_twice(spacing: float, finest: float) -> bool:
    """``spacing < 2 × finest``, nnU-Net's test, with a relative tolerance of 1e-4: spacings
    stored as float32 (NIfTI pixdim) put an exact 2:1 (0.5 / 1.0 mm, 3.54 / 7.08 mm) on either
    side of 2 by rounding alone, and nnU-Net, reading the same header, sees 2.0."""
    return spacing < 2 * finest * (1 - 1e-4)


def topology(
    spacing: Sequence[float], patch: Sequence[int], max_levels: int = MAX_LEVELS
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Per-level strides and kernels for ``patch`` at ``spacing`` (nnU-Net's topology rule).

    Returns:
        ``(strides, kernel_sizes, divisor)``: ``levels - 1`` stride lists, ``levels`` kernel
        lists and the per-axis total stride.

    Example:
        >>> topology([0.8, 0.8, 2.5], [160, 160, 40])[0]
        [[2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    """
    dims = len(spacing)
    cur_spacing, cur_size = list(map(float, spacing)), list(map(float, patch))
    kernel = [1] * dims
    strides: list[list[int]] = []
    kernels: list[list[int]] = []
    while len(strides) < max_levels - 1:
        valid = [i for i in range(dims) if cur_size[i] >= 2 * MIN_FEATURE_MAP]
        if not valid:
            break
        finest = min(cur_spacing[i] for i in valid)
        valid = [i for i in valid if _under_twice(cur_spacing[i], finest)]
        if len(valid) == 1 and cur_size[valid[0]] < 3 * MIN_FEATURE_MAP:
            break
        for d in range(dims):
            if _under_twice(cur_spacing[d], min(cur_spacing)):
                kernel[d] = 3
        step = [2 if i in valid else 1 for i in range(dims)]
        for i in valid:
            cur_spacing[i] *= 2
            cur_size[i] = math.ceil(cur_size[i] / 2)
        strides.append(step)
        kernels.append(list(kernel))
    kernels.append([3] * dims)
    divisor = [math.prod(s[a] for s in strides) for a in range(dims)]
    return strides, kernels, divisor


def _initial_patch(spacing: Sequence[float], shape: Sequence[float]) -> list[int]:
    inv = 1 / np.asarray(spacing, float)
    volume = 256**3 if len(spacing) == 3 else 2048**2
    patch = inv * (volume / np.prod(inv)) ** (1 / len(spacing))
    return [int(min(round(p), s)) for p, s in zip(patch, shape, strict=True)]


def _fit_patch(patch: Sequence[int], spacing: Sequence[float]) -> tuple[list[int], Any]:
    """``patch`` rounded down to the network's multiple, with its topology."""
    strides, kernels, divisor = topology(spacing, patch)
    fitted = [max(d, (p // d) * d) for p, d in zip(patch, divisor, strict=True)]
    return fitted, (strides, kernels, divisor)


def _shrink(patch: list[int], shape: Sequence[float], spacing: Sequence[float]) -> list[int]:
    """nnU-Net's reduction: the axis with the largest patch / median-shape ratio loses one multiple."""
    _, _, divisor = topology(spacing, patch)
    axis = int(np.argmax([p / s for p, s in zip(patch, shape, strict=True)]))
    out = list(patch)
    out[axis] = max(divisor[axis], out[axis] - divisor[axis])
    if out == list(patch):  # at the multiple already: halve the largest axis instead
        axis = int(np.argmax(out))
        out[axis] = max(8, out[axis] // 2)
    return out


def _widths(levels: int, base: int, dims: int) -> list[int]:
    cap = 320 if dims == 3 else 512
    return [min(cap, base * 2**i) for i in range(levels)]


# --- measurement ---------------------------------------------------------------------------------


def _measure_child(
    network: dict[str, Any], patch: list[int], batch: int, device: str, iters: int, roi: list[int]
) -> Measurement:
    import resource

    import torch
    from monai.losses import DiceCELoss

    from pipeline.config import load_config
    from pipeline.engines.factory import build_network

    torch.manual_seed(0)
    dev = torch.device(device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    net = build_network(load_config(base={"network": dict(network)})).to(dev)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(batch, network["in_channels"], *patch, device=dev)
    y = torch.randint(0, network["out_channels"], (batch, 1, *patch), device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = net(x)
        out = out[0] if isinstance(out, list) else out
        loss(out, y).backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def median_time(fn: Callable[[], None], least: int, seconds: float, most: int) -> float:
        # the median of single calls, repeated for at least ``seconds``: robust to the stalls a
        # shared CPU adds to a few of them
        times: list[float] = []
        while len(times) < least or (sum(times) < seconds and len(times) < most):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    net.train()
    step()
    sync()
    by_threads: list[tuple[int, float]] = []
    if dev.type == "cpu":
        # on a shared CPU fewer threads can be much faster (OpenMP threads wait for each other
        # when the cores are oversubscribed): time 1 thread and all cores, keep the faster
        cores = os.cpu_count() or 1
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            step()
            by_threads.append((threads, median_time(step, iters, 3.0, 30)))
        threads, step_s = min(by_threads, key=lambda t: t[1])
        torch.set_num_threads(threads)
    else:
        threads, step_s = 0, median_time(step, iters, 3.0, 30)
    net.eval()
    window = torch.randn(1, network["in_channels"], *roi, device=dev)
    with torch.no_grad():
        net(window)
        sync()
        window_s = median_time(lambda: net(window), 2, 1.0, 10)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**30
        return Measurement(step_s, window_s, peak, 0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return Measurement(step_s, window_s, peak, base, threads, tuple(by_threads))


def measure_step(
    network: Mapping[str, Any],
    patch: Sequence[int],
    batch: int,
    device: str = "cpu",
    roi: Sequence[int] | None = None,
    iters: int = 3,
) -> Measurement:
    """Time ``iters`` training steps (Dice-CE, AdamW) of ``network`` on a random batch and an
    inference forward pass of one ``roi`` window (default: the patch), in a fresh process so its
    peak memory is the run's own (CPU: peak resident set; CUDA: peak allocated).

    Args:
        network: the ``network`` section (``name`` and arguments).
        patch: spatial size of the crops.
        batch: crops per step.
        device: ``"cpu"`` or ``"cuda"``.
        roi: inference window.
        iters: fewest timed steps after one warm-up step (more, up to 30, while under 3 s); the
            median step is reported.
    """
    ctx = multiprocessing.get_context("spawn")
    roi = list(roi or patch)
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_measure_child, dict(network), list(patch), int(batch), device, int(iters), roi).result()


# --- the plan ------------------------------------------------------------------------------------


def _windows(shape: Sequence[float], roi: Sequence[int], overlap: float) -> int:
    n = 1
    for s, r in zip(shape, roi, strict=True):
        step = max(1, int(r * (1 - overlap)))
        n *= 1 if s <= r else math.ceil((s - r) / step) + 1
    return n


def _system_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def plan_config(
    fp: Mapping[str, Any],
    *,
    budget_minutes: float = 10.0,
    device: str = "cpu",
    memory_gb: float | None = None,
    network: str = "unet",
    measure: Callable[..., Measurement] | None = None,
    import_s: float | None = None,
) -> dict[str, Any]:
    """Plan a config for the fingerprinted dataset.

    Args:
        fp: :func:`pipeline.data.fingerprint.compute_fingerprint`'s result.
        budget_minutes: wall time of the whole run (start-up, training, validation).
        device: ``"cpu"`` or ``"cuda"``.
        memory_gb: memory the run may use; default: CPU ``min(8, half the RAM)``, CUDA the device's.
        network: ``unet``, ``resunet`` or ``denseunet``.
        measure: ``(network, patch, batch, device, roi) -> Measurement``; default
            :func:`measure_step` (tests pass a fixed one).
        import_s: the seconds this machine took to start ``medseg`` and import its libraries
            (measured by ``medseg plan``); part of the predicted start-up, 15 s when None.

    Returns:
        The plan: nested sections whose leaves carry their reasons; :func:`render_plan` writes it.

    Raises:
        ValueError: an unknown network or device, or a non-positive budget.
    """
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {list(NETWORKS)}, got {network!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if not budget_minutes > 0:
        raise ValueError(f"budget_minutes must be > 0, got {budget_minutes!r}")
    measure = measure or measure_step
    if memory_gb is None:
        memory_gb = _default_memory(device)
    dims = fp["spatial_dims"]
    n_cases = fp["num_cases"]
    plan: dict[str, Any] = {"seed": _r(0)}

    # geometry
    if dims == 3:
        spacing, spacing_reason = target_spacing(fp)
        native = np.asarray(fp["spacings"], float)
        resample = not np.allclose(native, np.asarray(spacing)[None], rtol=0.01)
        shape = list(np.median(np.asarray(fp["shapes"], float) * native / np.asarray(spacing)[None], 0))
    else:
        spacing, spacing_reason, resample = [1.0, 1.0], "2D: pixels", False
        shape = list(map(float, fp["median_shape"]))

    # channels, classes, modality
    keep = [c for c, st in enumerate(fp["intensity"]) if st["image_max"] > st["image_min"]]
    dropped = sorted(set(range(fp["channels"])) - set(keep))
    values = fp["label_values"]
    classes = len(values)
    modality = [fp["intensity"][c]["modality"] for c in keep]

    # crops per step and widths
    widths = [32] if device == "cuda" else [16, 8]
    crops = 2

    def network_spec(patch: Sequence[int], base: int) -> tuple[dict[str, Any], Any]:
        strides, kernels, _ = topology(spacing, patch)
        spec = {
            "name": network,
            "spatial_dims": dims,
            "in_channels": len(keep),
            "out_channels": classes,
            "channels": _widths(len(kernels), base, dims),
            "norm": "instance",
            "strides": strides,
            "kernel_sizes": kernels,
        }
        return spec, (strides, kernels)

    def roi_for(patch: Sequence[int]) -> list[int]:
        # inference keeps no activations for backward: windows up to twice the patch per axis and
        # as large as the median image cut the overlap's repeated work
        _, _, div = topology(spacing, patch)
        return [int(max(p, min(2 * p, math.ceil(s / d) * d))) for p, s, d in zip(patch, shape, div, strict=True)]

    budget_s = budget_minutes * 60.0
    val_cases = max(1, round(n_cases * 0.2))
    overlap = 0.5 if device == "cuda" else 0.25
    # start-up: interpreter, first loads and caching every case once (a data-volume model, not
    # the fingerprint's timing, so a plan depends on the measured step only)
    base_s = 15.0 if import_s is None else min(15.0, max(3.0, 1.5 * import_s))  # + building the network, loaders
    startup_s = base_s + n_cases * (0.2 + 2e-7 * fp["channels"] * math.prod(fp["median_shape"]))
    train_share = 0.75

    patch, _ = _fit_patch(_initial_patch(spacing, shape), spacing)
    first = list(patch)
    # below half the start per axis the crop loses the context it is for: first a narrower
    # network, then fewer steps than MIN_ITERATIONS
    floor_voxels = math.prod(first) / 8
    trials: list[tuple[list[int], int, Measurement]] = []
    base = widths[0]

    def run(p: Sequence[int], width: int) -> Measurement:
        result = measure(network_spec(p, width)[0], list(p), crops, device, roi_for(p))
        trials.append((list(p), width, result))
        return result

    # probe at a moderate crop (a CPU step on nnU-Net's 256³ start would take minutes), then
    # extrapolate linearly in voxels and measure the chosen crop itself
    probe = list(first)
    while math.prod(probe) > PROBE_VOXELS[dims] and any(p > 16 for p in probe):
        probe, _ = _fit_patch(_shrink(probe, shape, spacing), spacing)
    ref_patch, ref = probe, run(probe, base)

    def fits(p: Sequence[int]) -> bool:
        f = math.prod(p) / math.prod(ref_patch)
        step_s, mem = ref.step_s * f, ref.base_gb + (ref.peak_gb - ref.base_gb) * f
        return budget_s * train_share / (step_s * (1 + DATA_OVERHEAD)) >= MIN_ITERATIONS and mem <= memory_gb

    for attempt in range(3):
        for _ in range(64):
            if fits(patch):
                break
            smaller, _ = _fit_patch(_shrink(patch, shape, spacing), spacing)
            if math.prod(smaller) < floor_voxels or smaller == patch:
                if base != widths[-1]:
                    base = widths[widths.index(base) + 1]
                    ref_patch, ref = list(patch), run(patch, base)
                    continue
                break
            patch = smaller
        if trials[-1][:2] == (list(patch), base):
            break
        ref_patch, ref = list(patch), run(patch, base)
        if fits(patch) or attempt == 2:
            break
    m = trials[-1][2]
    net_spec, (strides, kernels) = network_spec(patch, base)
    roi = roi_for(patch)
    base_width = base

    # on a GPU: as many crops per step as fit, capped at 5 % of the dataset's voxels
    batch_reason = "2 crops per step: the fewest that keep a gradient average (nnU-Net's minimum)"
    if device == "cuda":
        per_crop = max(1e-3, m.peak_gb / crops)
        coverage = max(2, int(0.05 * n_cases * math.prod(shape) / math.prod(patch)))
        crops = int(max(2, min(coverage, 0.8 * memory_gb // per_crop, 64)))
        if crops > 2:
            m = measure(net_spec, patch, crops, device, roi)
            trials.append((list(patch), base, m))
        batch_reason = f"{crops} crops per step fill 80 % of {memory_gb:g} GB (capped at 5 % of the dataset's voxels)"
    batch_size = max(1, crops // 2)
    crops = 2 * batch_size

    # budget fit
    step_s = m.step_s * (1 + DATA_OVERHEAD)
    windows = _windows(shape, roi, overlap) * val_cases
    val_s = windows * m.window_s * 1.3 + 1.0 * val_cases  # +30 % blending, ~1 s per case of I/O
    train_s = budget_s - startup_s
    validations = int(max(1, min(10, 0.2 * train_s // max(val_s, 1e-6))))
    total_iters = max(10, int((train_s - validations * val_s) // step_s))
    # the run is planned OVERPLAN times longer than the timing says fits, and train.time_budget
    # ends it: the trainer fits the schedule (and val_every) to the steps that really fit, measured
    # over its own first steps, so a timing taken on a loaded machine neither wastes the budget nor
    # overruns it (here plan-time steps were 1.6-2x slower than the same steps in training; at 2x a
    # vessel2d plan timed beside another job ran out of steps at 0.86 of its budget)
    planned_iters = int(total_iters * OVERPLAN)
    epochs = int(min(50, max(5, planned_iters // 20)))
    epochs = max(validations, epochs - epochs % validations) if validations > 1 else epochs
    ipe = max(1, planned_iters // epochs)
    val_every = max(1, epochs // validations)
    n_val = epochs // val_every + (1 if epochs % val_every else 0)
    predicted_s = startup_s + min(epochs * ipe * step_s + n_val * val_s, train_s)
    warmup = 0.05 if epochs * ipe >= 100 else 0.0  # a linear warm-up over 5 % of the run

    plan["network"] = {
        "name": _r(network, "--network"),
        "spatial_dims": _r(dims, f"{dims}D images"),
        "in_channels": _r(
            len(keep), "image channels" + (f" (constant channel(s) {dropped} dropped)" if dropped else "")
        ),
        "out_channels": _r(classes, f"label values {values}"),
        "channels": _r(
            net_spec["channels"],
            f"{base_width} at full resolution doubling per level ({device}"
            + (", halved to fit the budget)" if base_width != widths[0] else ")"),
        ),
        "norm": _r("instance", "instance norm: batch norm's running statistics are unreliable at 2-4 crops per step"),
        "strides": _r(
            strides,
            f"pool an axis while its map is >= {2 * MIN_FEATURE_MAP} and its spacing within 2x of the finest "
            f"(nnU-Net); total stride {topology(spacing, patch)[2]}",
        ),
        "kernel_sizes": _r(kernels, "kernel 1 along an axis until its spacing is within 2x of the finest"),
    }
    if network == "resunet":
        plan["network"]["dilations"] = _r(1, "no dilation: the planned depth already covers the patch")

    # loss
    touching = fp.get("touching_fraction_median", 0.0)
    thin = fp["skeleton_ratio_median"]
    region = {"name": "dice_ce", "to_onehot_y": True, "softmax": True}
    if touching >= 0.02:
        plan["loss"] = {
            "name": _r("compound", f"{touching:.1%} of object boundary touches another object: band term"),
            "region": _r(region),
            "boundary": _r(
                {"name": "band_bce", "to_onehot_y": True, "softmax": True, "include_background": False},
                "BCE weighted to the band between objects separates touching ones",
            ),
            "schedule": _r("constant"),
            "alpha": _r(0.5, "as configs/cell_dsb.yaml"),
        }
    elif thin >= THIN_SKELETON_RATIO:
        plan["loss"] = {
            "name": _r(
                "compound", f"thin structures (skeleton / volume {thin:.2f} >= {THIN_SKELETON_RATIO}): boundary term"
            ),
            "region": _r(region),
            "boundary": _r({"name": "boundary", "to_onehot_y": True, "softmax": True, "include_background": False}),
            "schedule": _r("constant", "a constant weight: short runs end before a ramp would"),
            "alpha": _r(0.1, "boundary term at a tenth of the region term"),
        }
    else:
        plan["loss"] = {
            "name": _r("dice_ce", f"compact objects (skeleton / volume {thin:.2f}): Dice + CE (nnU-Net)"),
            "to_onehot_y": _r(True),
            "softmax": _r(True),
        }

    fmt = fp["format"]
    plan["data"] = {
        "format": _r(fmt, "detected layout" if fp.get("format_detected", True) else "--format"),
        "root": _r(fp["root"]),
        "val_fraction": _r(0.2, f"{val_cases} of {n_cases} cases validate (best checkpoint)"),
        "test_fraction": _r(0.0, "evaluate a held-out folder, or set a fraction here"),
    }

    # transforms
    t: dict[str, Any] = {
        "patch_size": _r(
            patch,
            f"median image {_fmt(shape, 4)} voxels; largest crop that fits {memory_gb:g} GB and "
            f">= {MIN_ITERATIONS} steps in the budget (started from {first})",
        )
    }
    if dims == 3:
        t["spacing"] = _r(
            spacing if resample else None, spacing_reason + ("" if resample else "; all cases at it: no resampling")
        )
        t["orientation"] = _r("RAS", f"cases are {', '.join(fp['axcodes'])}; shapes above are in RAS order")
    if dropped or len(keep) != fp["channels"]:
        t["channels"] = _r(keep, f"channel(s) {dropped} constant")
    ct = modality and all(mo == "CT" for mo in modality)
    if ct:
        st = fp["intensity"][keep[0]]
        lo, hi = round(st["p00_5"], 1), round(st["p99_5"], 1)
        t["intensity"] = {
            "mode": _r("ct", "CT: clip to the foreground 0.5-99.5 %, z-score with the foreground statistics (nnU-Net)"),
            "window": _r([lo, hi], "foreground HU percentiles 0.5 / 99.5 over the dataset"),
            "mean": _r(round(st["mean"], 2), "foreground HU mean over the dataset"),
            "std": _r(round(max(st["std"], 1e-3), 2), "foreground HU std over the dataset"),
        }
    else:
        t["intensity"] = {"mode": _r("zscore", f"{', '.join(sorted(set(modality)))}: per-case z-score (nnU-Net)")}
    if values != list(range(classes)):
        t["label_values"] = _r(values, "raw label values, one per class")
    fg = 1.0 - fp["class_frequency"][str(values[0])]
    t["num_samples"] = _r(2, "crops per image")
    t["pos_neg_ratio"] = _r(
        2.0 if fg < 0.01 else 1.0, f"foreground is {fg:.2%} of voxels" + (": oversample it" if fg < 0.01 else "")
    )
    if classes > 2:
        shares = ", ".join(f"{fp['class_frequency'][str(v)]:.2%}" for v in values[1:])
        t["class_balanced"] = _r(
            True, f"{classes - 1} foreground classes ({shares} of voxels): crops shared evenly by class (nnU-Net)"
        )
    aniso = dims == 3 and max(spacing) > ANISOTROPY * min(spacing)
    if dims == 2:
        rotate = _r([180.0], "2D: any in-plane angle")
    elif aniso:
        thick = int(np.argmax(spacing))
        rotate = _r(
            [30.0 if i == thick else 0.0 for i in range(3)], f"anisotropic: rotate in-plane only (about axis {thick})"
        )
    else:
        rotate = _r([30.0, 30.0, 30.0], "3D: about every axis (nnU-Net)")
    t["augment"] = {
        "rotate": {"prob": _r(0.2), "degrees": rotate},
        "scale": {"prob": _r(0.2), "range": _r([0.7, 1.4], "nnU-Net's zoom range")},
        "flip": {
            "prob": _r(0.5),
            "axes": _r(None, "every axis, thick-slice ones included (nnU-Net); flip TTA mirrors the same axes"),
        },
        "elastic": {"prob": _r(0.0, "off: costly on CPU and marginal (nnU-Net turned it off)")},
    }
    plan["transforms"] = t

    small = total_iters < 2000
    plan["optimizer"] = {
        "name": _r("adamw"),
        "lr": _r(
            3e-3 if small else 1e-3, f"{total_iters} steps: " + ("short run, higher rate" if small else "default")
        ),
        "weight_decay": _r(1e-4),
    }
    plan["scheduler"] = {
        "name": _r("cosine", "decays to the run's last step, also when --time-budget shortens the run"),
        "warmup": _r(warmup, f"fraction of the run: {round(warmup * epochs * ipe)} of {epochs * ipe} steps"),
    }
    measured = f"measured {m.step_s:.3f} s/step at {crops} crops of {patch}, peak {m.peak_gb:.2f} GB ({device})"
    plan["train"] = {
        "epochs": _r(
            epochs,
            f"{total_iters} steps fit: {measured}; planned {OVERPLAN:g}x as many, train.time_budget ends the run "
            "and the schedule is fitted to the steps that do",
        ),
        "iterations_per_epoch": _r(ipe, f"+{DATA_OVERHEAD:.0%} for data loading"),
        "batch_size": _r(batch_size, batch_reason),
        "val_every": _r(val_every, f"{n_val} validations of ~{val_s:.0f} s ({windows} windows at overlap {overlap})"),
        "time_budget": _r(
            round(max(0.05, (budget_s - min(val_s, 0.1 * train_s)) / 60), 2),
            f"the {budget_minutes:g} min budget, from the command's start (loading and caching included), less the "
            f"last validation; predicted run {predicted_s / 60:.1f} min ({startup_s:.0f} s of it start-up)",
        ),
        "device": _r(device, "the device the steps were timed on"),
    }
    if m.threads:
        timed = ", ".join(f"{n}: {t:.3f} s" for n, t in m.by_threads)
        plan["train"]["threads"] = _r(m.threads, f"fastest measured torch thread count (s/step by threads {timed})")
    plan["infer"] = {
        "roi_size": _r(roi, "windows up to 2x the patch and the median image: less repeated work than the patch"),
        "overlap": _r(overlap, "windows overlap"),
        "tta": _r(dims == 2 or device == "cuda", "flip TTA" if dims == 2 or device == "cuda" else "off: 8x on a CPU"),
    }
    plan["_meta"] = {
        "predicted_minutes": predicted_s / 60,
        "measurements": [
            {"patch": p, "width": w, "step_s": x.step_s, "peak_gb": x.peak_gb, "window_s": x.window_s}
            for p, w, x in trials
        ],
        "total_iterations": epochs * ipe,
    }
    return plan


def _default_memory(device: str) -> float:
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 2**30
        return 24.0
    return float(min(8.0, _system_memory_gb() / 2))


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _emit(node: Mapping[str, Any], indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for key, value in node.items():
        if isinstance(value, _Reasoned):
            text = f"{pad}{key}: {_flow(value.value)}"
            lines.append(f"{text:<40}  # {value.reason}" if value.reason else text)
        else:
            lines.append(f"{pad}{key}:")
            _emit(value, indent + 1, lines)


def render_plan(plan: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """The plan as a commented YAML config (``medseg train -c`` reads it as it is)."""
    lines = [f"# {h}" for h in header]
    _emit({k: v for k, v in plan.items() if not k.startswith("_")}, 0, lines)
    return "\n".join(lines) + "\n"


def plan_values(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The plan without its reasons: the raw config mapping."""
    out = {}
    for key, value in plan.items():
        if key.startswith("_"):
            continue
        out[key] = value.value if isinstance(value, _Reasoned) else plan_values(value)
    return out


TASKS = ("semantic", "instance", "auto")


def plan_task(plan: dict[str, Any], fp: Mapping[str, Any], task: str) -> None:
    """Make ``plan`` an instance task (``task.kind: instance``, 3 output classes: background,
    interior, border) for ``task="instance"``, or for ``"auto"`` when the dataset has instance
    masks whose objects touch (``touching_fraction_median`` >= 2 %); ``"semantic"`` keeps it."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    touching = fp.get("touching_fraction_median")
    if task == "semantic" or (task == "auto" and (touching is None or touching < 0.02)):
        return
    why = "--task instance" if task == "instance" else f"instance masks, {touching:.1%} of object boundary touching"
    if touching is None:
        why += " (the dataset's labels are read as instance id maps)"
    plan["task"] = {
        "kind": _r("instance", why),
        "target": _r("classes", "background / interior / border; thresholds chosen on validation after training"),
    }
    plan["network"]["out_channels"] = _r(3, "background, interior, border")


def write_plan(
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    fmt: str | None = None,
    budget_minutes: float = 10.0,
    device: str = "cpu",
    memory_gb: float | None = None,
    network: str = "unet",
    progress: bool = True,
    measure: Callable[..., Measurement] | None = None,
    task: str = "semantic",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fingerprint ``root`` (cached as ``fingerprint.json`` beside ``output``), plan, and write
    the commented YAML to ``output`` (atomically). ``task``: see :func:`plan_task`.

    Returns:
        ``(fingerprint, plan)``.

    Raises:
        DataError: the dataset cannot be read; ConfigError: ``device`` is ``cuda`` without CUDA.
    """
    from pathlib import Path

    from pipeline.data.fingerprint import compute_fingerprint, fingerprint_summary
    from pipeline.errors import ConfigError

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available on this machine")
    output = Path(output)
    started = runtime.command_start()  # this command's imports so far: what `medseg train` pays again
    import_s = time.perf_counter() - started if started is not None and measure is None else None
    fp = compute_fingerprint(root, fmt, output_dir=output.parent, progress=progress)
    fp = {**fp, "format_detected": fmt is None}
    plan = plan_config(
        fp,
        budget_minutes=budget_minutes,
        device=device,
        memory_gb=memory_gb,
        network=network,
        measure=measure,
        import_s=import_s,
    )
    plan_task(plan, fp, task)
    header = [
        f"medseg plan {root}: {budget_minutes:g} min on {device}, network {network}",
        f"predicted run {plan['_meta']['predicted_minutes']:.1f} min; every value says why it was chosen",
        *fingerprint_summary(fp).splitlines(),
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(render_plan(plan, header))
    os.replace(tmp, output)
    return fp, plan
