"""Training-step cost of boundary losses: DiceCE alone, + our boundary loss on cached maps,
+ ``monai.losses.BoundaryLoss`` (scipy maps every step); then the per-case distance maps.

One UNet training step (forward, loss, backward, SGD step) on 4×1×256² (2D) and 2×1×64³ (3D),
2 classes, median over repeats, the three configurations interleaved so machine noise hits
them alike. Ours is ``CompoundLoss(schedule="constant")``: DiceCE + α·``KervadecBoundaryLoss``
reading ``dist`` precomputed by ``SignedDistanceMapd`` (as the data pipeline delivers it).
On CUDA (when present) the step also runs there, and ours computes its maps on the GPU with
CuPy when installed.

Run: ``PYTHONPATH=. python bench/losses.py [--threads 1] [--repeats 7] [--skip-distance]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import BoundaryLoss, DiceCELoss
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distance import case_benchmark, synthetic_label  # noqa: E402

from pipeline.losses import CompoundLoss, KervadecBoundaryLoss  # noqa: E402
from transforms import _distance  # noqa: E402
from transforms.dictionary import SignedDistanceMapd  # noqa: E402


class MonaiCompound(torch.nn.Module):
    """DiceCE + α·monai.losses.BoundaryLoss, the stock way to add a boundary term."""

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.region = DiceCELoss(to_onehot_y=True, softmax=True)
        self.boundary = BoundaryLoss(to_onehot_y=True, softmax=True)
        self.alpha = alpha

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.region(input, target) + self.alpha * self.boundary(input, target)


def make_batch(batch: int, spatial: tuple[int, ...], device: torch.device) -> dict[str, torch.Tensor]:
    labels = [synthetic_label(spatial, seed=i) for i in range(batch)]
    to_maps = SignedDistanceMapd(keys="label", num_classes=2)
    dist = np.stack([to_maps({"label": lab[None]})["dist"] for lab in labels])  # cached: not timed
    label = torch.from_numpy(np.stack(labels)[:, None].astype(np.int64))
    image = label.float() + 0.5 * torch.randn(label.shape, generator=torch.Generator().manual_seed(0))
    return {"image": image.to(device), "label": label.to(device), "dist": torch.from_numpy(dist).to(device)}


def step_times(spatial_dims: int, batch: dict, device: torch.device, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = UNet(spatial_dims, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    ours_boundary = KervadecBoundaryLoss(to_onehot_y=True, softmax=True)
    losses = {
        "DiceCE alone": DiceCELoss(to_onehot_y=True, softmax=True),
        "DiceCE + ours (cached maps)": CompoundLoss(boundary=ours_boundary, schedule="constant", alpha=0.01),
        "DiceCE + monai BoundaryLoss": MonaiCompound(alpha=0.01),
    }
    if device.type == "cuda" and _distance.has_cupy():
        computed = KervadecBoundaryLoss(to_onehot_y=True, softmax=True, maps="compute")
        losses["DiceCE + ours (CuPy maps per step)"] = CompoundLoss(boundary=computed, schedule="constant")

    logits = torch.randn(batch["label"].shape[0], 2, *batch["label"].shape[2:], device=device)

    def step(loss: torch.nn.Module, loss_only: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pred = logits.clone().requires_grad_() if loss_only else net(batch["image"])
        extras = {k: batch[k] for k in getattr(loss, "extra_inputs", ()) if k in batch}
        loss(pred, batch["label"], **extras).backward()
        if not loss_only:
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    out = {}
    for loss_only, n in ((False, repeats), (True, 4 * repeats)):
        for loss in losses.values():  # warm-up
            step(loss, loss_only)
            step(loss, loss_only)
        times: dict[str, list[float]] = {name: [] for name in losses}
        for _ in range(n):
            for name, loss in losses.items():
                times[name].append(step(loss, loss_only))
        out[loss_only] = {name: statistics.median(ts) for name, ts in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-distance", action="store_true", help="skip the per-case distance-map timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {args.threads} CPU threads, CuPy: {_distance.has_cupy()}")
    for device in devices:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        for dims, (b, spatial) in ((2, (4, (256, 256))), (3, (2, (64, 64, 64)))):
            batch = make_batch(b, spatial, device)
            results = step_times(dims, batch, device, args.repeats)
            shape = f"{b}x1x" + "x".join(map(str, spatial))
            titles = {
                False: f"UNet training step {shape} on {name}, median of {args.repeats}",
                True: f"loss alone (forward + backward on {b}x2x{'x'.join(map(str, spatial))} logits), "
                f"median of {4 * args.repeats}",
            }
            for loss_only, medians in results.items():
                base = medians["DiceCE alone"]
                print(f"\n== {titles[loss_only]} ==")
                for label, t in medians.items():
                    print(f"  {label:36s} {t * 1e3:9.2f} ms   {t / base:6.2f}x DiceCE alone")
    if not args.skip_distance:
        case_benchmark(repeats=3)


if __name__ == "__main__":
    main()
