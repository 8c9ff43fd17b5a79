"""CPU latency of our exported networks: PyTorch eager vs TorchScript vs onnxruntime.

For each network (default widths, 1 input channel, 2 classes, random weights) and input (2D
``1×1×512²``, 3D ``1×1×96³``) it exports the network as ``medseg export`` does
(:func:`pipeline.export.export_network`: TorchScript trace and ONNX opset 17), then times one
forward pass of each runtime on the same input: the median of ``--repeats`` after one warm-up,
with torch and onnxruntime both limited to ``--threads`` intra-op threads. It prints each
runtime's median, its ratio against eager (below 1 = faster), the max abs difference of its logits
from eager and the share of voxels whose argmax agrees with eager.

Usage:
    PYTHONPATH=. python bench/export.py                        # 1 thread, median of 5
    PYTHONPATH=. python bench/export.py --repeats 3 --threads 2 --dims 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.export import export_network, onnx_runner, require_onnx
from pipeline.networks import NETWORKS

NAMES = ("unet", "resunet", "denseunet")
SIZES = {2: (512, 512), 3: (96, 96, 96)}


def median_seconds(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up, and its output."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench_one(name: str, dims: int, repeats: int, threads: int, workdir: Path) -> dict:
    """Times and agreement of eager, TorchScript and onnxruntime for one network and input size."""
    torch.manual_seed(0)
    net = NETWORKS.build(name, dims, 1, 2).eval()
    x = torch.randn(1, 1, *SIZES[dims], generator=torch.Generator().manual_seed(1))
    ts_path, onnx_path = workdir / f"{name}{dims}d.ts", workdir / f"{name}{dims}d.onnx"
    export_network(net, "torchscript", ts_path, check=False)
    export_network(net, "onnx", onnx_path, check=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(ts_path))
    ort = onnx_runner(onnx_path, threads=threads)
    row = {"network": name, "input": "×".join(map(str, x.shape[2:]))}
    with torch.inference_mode():
        row["eager"], ref = median_seconds(lambda: net(x), repeats)
        runs = {"torchscript": lambda: scripted(x), "onnxruntime": lambda: ort(x)}
        for runtime, fn in runs.items():
            seconds, out = median_seconds(fn, repeats)
            row[runtime] = seconds
            row[f"{runtime}_diff"] = float((out - ref).abs().max())
            row[f"{runtime}_agree"] = float((out.argmax(1) == ref.argmax(1)).float().mean())
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| network | input | eager ms | TorchScript ms (× eager) | onnxruntime ms (× eager) "
        "| max abs diff TS / ORT | argmax agreement TS / ORT |",
        "| --- | --- | --: | --: | --: | --: | --: |",
    ]
    for r in rows:
        e = r["eager"]
        lines.append(
            f"| {r['network']} | {r['input']} | {e * 1e3:.0f} "
            f"| {r['torchscript'] * 1e3:.0f} ({r['torchscript'] / e:.2f}) "
            f"| {r['onnxruntime'] * 1e3:.0f} ({r['onnxruntime'] / e:.2f}) "
            f"| {r['torchscript_diff']:.1e} / {r['onnxruntime_diff']:.1e} "
            f"| {100 * r['torchscript_agree']:.3f} % / {100 * r['onnxruntime_agree']:.3f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and onnxruntime")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per runtime (median)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=(2, 3))
    parser.add_argument("--networks", nargs="+", default=list(NAMES), choices=NAMES)
    args = parser.parse_args(argv)
    require_onnx()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dims in args.dims:
            for name in args.networks:
                rows.append(bench_one(name, dims, args.repeats, args.threads, Path(tmp)))
                print(f"done {name} {dims}D", file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
