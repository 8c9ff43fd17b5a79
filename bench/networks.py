"""Cost of our networks against MONAI's, in their default configurations (1 input channel, 2 classes).

For each network and input (2D ``1×1×256²``, 3D ``1×1×64³``) it prints parameters, forward
GFLOP per million voxels (``torch.utils.flop_counter.FlopCounterMode``), the median wall time of
a training step's forward + backward, that time relative to MONAI's BasicUNet measured in the
same run, and the peak extra memory of one forward + backward (activations, gradients,
workspace). CPU memory is the rise of the resident set's high-water mark (``VmHWM``, reset
through ``/proc/self/clear_refs``) over the resident set before the step; tracemalloc does not
see torch's allocations. CUDA memory is ``torch.cuda.max_memory_allocated``.

Usage:
    PYTHONPATH=. python bench/networks.py                 # CPU, 2 threads, and CUDA if present
    PYTHONPATH=. python bench/networks.py --threads 4 --repeats 5 --dims 3
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.networks import NETWORKS, count_parameters

NAMES = ("unet", "resunet", "denseunet", "denseunet+ckpt", "monai_unet", "monai_basic_unet", "monai_dynunet")
#: rows that are a registered network with non-default arguments
VARIANTS = {"denseunet+ckpt": ("denseunet", {"checkpointing": True})}
BASELINE = "monai_basic_unet"
SIZES = {2: (256, 256), 3: (64, 64, 64)}


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _fix_malloc_threshold() -> None:
    """Make glibc return every freed block of 1 MiB or more to the OS at once.

    glibc raises its mmap threshold after large frees and then keeps freed tensors in the heap,
    so the resident set would stop tracking live tensors; fixing the threshold turns that off.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def gflop_per_mvox(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs (multiply-add = 2) per voxel of the input, in GFLOP per million voxels."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / x[0, 0].numel() / 1e3


def step(net: torch.nn.Module, x: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    out = net(x)
    out = out[0] if isinstance(out, list) else out
    out.float().mean().backward()


def time_step(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward + backward."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    step(net, x)
    sync()
    return time.perf_counter() - start


def peak_memory_mib(net: torch.nn.Module, x: torch.Tensor) -> float | None:
    """Peak extra memory of one forward + backward, MiB (``None`` if it cannot be measured)."""
    net.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(net, x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not _reset_peak_rss():
        return None
    base = _status_kib("VmRSS")
    step(net, x)
    peak = _status_kib("VmHWM")
    return None if base is None or peak is None else (peak - base) / 1024


def build(label: str, dims: int) -> torch.nn.Module:
    """The network of a table row (registered name, or a :data:`VARIANTS` label), 1 → 2 channels."""
    name, kwargs = VARIANTS.get(label, (label, {}))
    return NETWORKS.build(name, dims, 1, 2, **kwargs)


def measure(names: list[str], dims: int, device: str, repeats: int) -> dict[str, dict[str, float | None]]:
    """Parameters, FLOPs and median step time of every network on one input. Timed steps
    interleave the networks (round robin) so that load from other processes affects all alike."""
    nets, rows = {}, {}
    x = torch.randn(1, 1, *SIZES[dims], device=device)
    for name in names:
        torch.manual_seed(0)
        nets[name] = build(name, dims).to(device).train()
        rows[name] = {"params": count_parameters(nets[name]) / 1e6, "gflop": gflop_per_mvox(nets[name], x)}
        step(nets[name], x)  # warm-up: kernel selection, first-touch allocation
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, net in nets.items():
            times[name].append(time_step(net, x))
    for name in names:
        rows[name]["time"] = statistics.median(times[name])
    return rows


def measure_memory(name: str, dims: int, device: str) -> float | None:
    """Peak extra memory (MiB) of one forward + backward after a warm-up step."""
    torch.manual_seed(0)
    net = build(name, dims).to(device).train()
    x = torch.randn(1, 1, *SIZES[dims], device=device)
    step(net, x)
    return peak_memory_mib(net, x)


def memory_in_subprocess(names: list[str], runs: list[tuple[str, int]], threads: int) -> dict[str, float | None]:
    """Peak memory of every (device, dims, name), measured in a fresh process.

    A fresh process because the timing runs leave freed tensors cached in malloc's heap, which
    later allocations reuse without raising the resident set.
    """
    cmd = [sys.executable, __file__, "--memory-json", "--threads", str(threads), "--names", *names]
    cmd += ["--runs", *(f"{device}:{dims}" for device, dims in runs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_json(names: list[str], runs: list[str]) -> None:
    """Print ``{"<device> <dims> <name>": MiB}`` as one JSON line."""
    _fix_malloc_threshold()
    out = {}
    for run in runs:
        device, dims = run.split(":")
        for name in names:
            out[f"{device} {dims} {name}"] = measure_memory(name, int(dims), device)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per network; the median is shown")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--names", nargs="+", default=list(NAMES), help="registered networks (or variants) to measure")
    parser.add_argument("--memory-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", nargs="+", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_json:
        memory_json(args.names, args.runs)
        return
    if "cuda" in args.devices:
        torch.backends.cudnn.benchmark = True
    names = list(dict.fromkeys([*args.names, BASELINE]))  # the baseline is always measured

    print(f"torch {torch.__version__}, {args.threads} CPU threads, median of {args.repeats} steps, batch 1\n")
    print("| device | input | network | params (M) | fwd GFLOP/Mvox | fwd+bwd ms | time / BasicUNet | peak MiB |")
    print("| --- | --- | --- | --: | --: | --: | --: | --: |")
    runs = [(device, dims) for device in args.devices for dims in args.dims]
    results = {run: measure(names, run[1], run[0], args.repeats) for run in runs}
    memory = memory_in_subprocess(names, runs, args.threads)
    for run, rows in results.items():
        for name in names:
            rows[name]["memory"] = memory.get(f"{run[0]} {run[1]} {name}")
    for (device, dims), rows in results.items():
        base = rows[BASELINE]["time"]
        shape = "1×1×" + "×".join(map(str, SIZES[dims]))
        for name, r in rows.items():
            mem = "n/a" if r["memory"] is None else f"{r['memory']:.0f}"
            print(
                f"| {device} | {shape} | {name} | {r['params']:.2f} | {r['gflop']:.1f} | "
                f"{r['time'] * 1e3:.0f} | {r['time'] / base:.2f} | {mem} |"
            )


if __name__ == "__main__":
    main()
