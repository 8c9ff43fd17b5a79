"""Instances of dense touching nuclei: our watershed post-processing vs Otsu + watershed vs components.

Data: :func:`pipeline.data.synth.dense.dense_nuclei`, 2D (256², ~250 nuclei each) and 3D
(64 x 64 x 48). Each method's settings are tuned on separate validation images by mean AP, then
scored on test images (per image, averaged):

- **classical** (the issue's floor, on the image): Gaussian blur, Otsu threshold, holes filled,
  small objects removed, distance-transform watershed seeded by EDT peaks; the blur and the peak
  distance tuned on validation.
- **components**: connected components of the semantic (foreground) part of the simulated
  network output, with the same hole filling and minimum size as ours.
- **ours**: :func:`pipeline.instances.postprocess.instances_from_probabilities` on the 3-class
  output, seeds from the interior class, thresholds from
  :func:`pipeline.instances.postprocess.select_thresholds`.

The "network output" is simulated (no training on this branch): the one-hot 3-class encoding of
the true ids (:func:`pipeline.instances.targets.instance_classes`), blurred, as logits with
spatially correlated Gaussian noise, then softmax. So this measures post-processing given a
decent but imperfect network, and the value of the border class; it is not a trained model's
score. Time is post-processing only (for the classical pipeline: everything after loading),
per megapixel (megavoxel in 3D), median of 3 runs over the test set.

    PYTHONPATH=. python bench/instances.py --simulated [--n-test 6] [--noise 1.0]

**Trained** (the default): the same comparison on OUR TRAINED network's output. ``medseg synth
--kind cell --dense`` writes dense 2D nuclei fields (DSB2018 layout; 3D: ``--kind cell3d``), ``run_training`` trains an
instance run (``task.kind: instance``, a small UNet, CPU, ``--minutes`` of training, 1 thread),
which chooses its post-processing thresholds on the validation split; then the checkpoint's
:class:`~pipeline.engines.predictor.Predictor` segments the held-out test split and

- **ours**: the run's own post-processing (the thresholds saved with it);
- **components**: connected components of the same network's foreground (1 - p(background));
- **classical**: Otsu + watershed on the image, tuned on the validation split as above.

    PYTHONPATH=. python bench/instances.py [--minutes 4] [--n 30] [--size 128] [--dims 2 3]

(3D: ``medseg synth --kind cell3d``, 64 x 64 x 32 volumes of spacing 0.5 x 0.5 x 1, a 3D UNet.)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from pipeline.data.synth.dense import dense_nuclei
from pipeline.instances.metrics import instance_metrics, summarise
from pipeline.instances.postprocess import (
    fill_small_holes,
    instances_from_probabilities,
    remove_small,
    select_thresholds,
)
from pipeline.instances.targets import instance_classes

COLUMNS = (("mean_ap_0.50", "AP@0.5"), ("mean_mean_ap", "mean AP"), ("mean_aji", "AJI"), ("mean_pq", "PQ"))


def simulated_output(rng: np.random.Generator, ids: np.ndarray, noise: float) -> np.ndarray:
    """Softmax of blurred one-hot 3-class logits plus correlated noise: ``3 H W [D]`` float32."""
    onehot = np.stack([instance_classes(ids) == k for k in range(3)]).astype(np.float32)
    logits = 4.0 * ndimage.gaussian_filter(onehot, sigma=(0,) + (1.0,) * ids.ndim)
    field = ndimage.gaussian_filter(rng.standard_normal(onehot.shape), sigma=(0,) + (1.0,) * ids.ndim)
    logits += noise * field / field.std()
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def classical(image: np.ndarray, sigma: float, min_distance: int, min_size: int) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = ndimage.gaussian_filter(image, sigma)
    fg = fill_small_holes(smooth > threshold_otsu(smooth), 64)
    fg = remove_small(ndimage.label(fg)[0], min_size) > 0
    dist = ndimage.distance_transform_edt(fg)
    regions, _ = ndimage.label(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=regions, exclude_border=False)
    markers = np.zeros(fg.shape, np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg)


def components(probs: np.ndarray, max_hole_size: int, min_size: int) -> np.ndarray:
    fg = fill_small_holes((1.0 - probs[0]) > 0.5, max_hole_size)
    return remove_small(ndimage.label(fg)[0], min_size)


def score(method: Callable[[int], np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    return summarise(instance_metrics(t, method(i)) for i, t in enumerate(truths))


def timed(method: Callable[[int], np.ndarray], n: int, pixels: int) -> float:
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(n):
            method(i)
        runs.append(time.perf_counter() - t0)
    return float(np.median(runs)) / (pixels / 1e6)


def run(shape: tuple[int, ...], n_val: int, n_test: int, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cases = [dense_nuclei(rng, shape) for _ in range(n_val + n_test)]
    probs = [simulated_output(rng, ids, noise) for _, ids in cases]
    val, test = range(n_val), range(n_val, n_val + n_test)
    truths = [cases[i][1] for i in test]
    small = 16 if len(shape) == 2 else 40

    settings = select_thresholds(
        [(probs[i], cases[i][1]) for i in val], min_sizes=(0, small // 2, small, 2 * small, 4 * small)
    )
    best, best_score = None, -1.0
    for sigma in (1.0, 2.0):
        for md in (2, 3, 4, 5, 6, 8):
            s = np.mean(
                [instance_metrics(cases[i][1], classical(cases[i][0], sigma, md, small))["mean_ap"] for i in val]
            )
            if s > best_score:
                best, best_score = (sigma, md), s
    methods = {
        "classical": lambda i: classical(cases[n_val + i][0], best[0], best[1], small),
        "components": lambda i: components(probs[n_val + i], settings["max_hole_size"], settings["min_size"]),
        "ours": lambda i: instances_from_probabilities(
            probs[n_val + i], **{k: settings[k] for k in ("interior_threshold", "min_size", "max_hole_size")}
        ),
    }
    pixels = int(np.prod(shape)) * n_test
    n_true = int(np.mean([t.max() for t in truths]))
    name = "x".join(map(str, shape))
    print(
        f"\n{name}: {n_test} test images, ~{n_true} nuclei each; tuned on {n_val}: ours {_short(settings)}, "
        f"classical sigma={best[0]} min_distance={best[1]}"
    )
    _table(methods, truths, n_test, pixels)


def _short(s: dict) -> str:
    return f"interior_threshold={s['interior_threshold']} min_size={s['min_size']} (val mean AP {s['score']:.3f})"


def trained(dims: int, n: int, size: int, minutes: float, seed: int, workdir: str | None, reuse: bool = False) -> None:
    """Train an instance run on dense synthetic nuclei and compare the three methods on its test split."""
    import csv
    import tempfile
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.data import load_datalist
    from pipeline.data.synth import make_dataset
    from pipeline.engines.checkpoint import load_checkpoint
    from pipeline.engines.instances import true_instances
    from pipeline.engines.predictor import Predictor
    from pipeline.engines.run import run_training
    from pipeline.instances.output import settings_from
    from pipeline.instances.postprocess import postprocess
    from pipeline.io import read_image

    work = Path(workdir or tempfile.mkdtemp(prefix="bench-instances-")) / f"{dims}d"
    data, run_dir = work / "data", work / "run"
    shape = (size, size) if dims == 2 else (size // 2, size // 2, size // 4)
    if not (reuse and data.is_dir()):
        if dims == 2:
            make_dataset("cell", data, n, seed, size=size, dense=True, overwrite=True)
        else:
            make_dataset("cell3d", data, n, seed, size=list(shape), overwrite=True)
    small = 16 if dims == 2 else 40
    if dims == 2:
        layout = f"data: {{format: dsb2018, root: {data}, val_fraction: 0.15, test_fraction: 0.2}}\n"
        layout += "transforms: {patch_size: [96, 96], channels: [0], num_samples: 2, intensity: {mode: zscore}}\n"
        network, batch = "spatial_dims: 2, in_channels: 1, out_channels: 3, channels: [16, 32, 64, 128]", 4
    else:
        layout = f"data: {{format: folders, root: {data}, val_fraction: 0.15, test_fraction: 0.2}}\n"
        layout += "transforms: {patch_size: [32, 32, 16], num_samples: 2, intensity: {mode: zscore}}\n"
        network, batch = "spatial_dims: 3, in_channels: 1, out_channels: 3, channels: [8, 16, 32, 64]", 2
    sizes = [0, small // 4, small // 2, small, 2 * small, 4 * small]
    config = work / "instances.yaml"
    work.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "seed: 0\n"
        f"task: {{kind: instance, postprocess: {{min_sizes: {sizes}}}}}\n"
        f"network: {{name: unet, {network}}}\n"
        "loss: {name: dice_ce, to_onehot_y: true, softmax: true}\n"
        f"{layout}"
        f"train: {{epochs: 1000, batch_size: {batch}, val_every: 10, time_budget: {minutes}, threads: 1, "
        f"num_workers: 0, tensorboard: false, output: {run_dir}}}\n"
        "optimizer: {name: adamw, lr: 0.003, weight_decay: 0.0001}\n"
    )
    ckpt_path = run_dir / "checkpoints" / "best.pt"
    if reuse and ckpt_path.exists():  # the run of an earlier call with this --workdir
        with open(run_dir / "log.csv") as fh:
            log = list(csv.DictReader(fh))
        summary = {"epochs": len(log), "minutes": float(log[-1]["time_min"])}
    else:
        summary = run_training(config, overwrite=True, progress=False)
    cfg = load_config(config)
    splits = load_datalist(cfg["data"])
    predictor = Predictor(ckpt_path, device="cpu")
    chosen = load_checkpoint(ckpt_path)["postprocess"]
    settings = settings_from(predictor.config["task"], chosen)

    def field(item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = np.asarray(read_image(item["image"]), np.float32)[0]
        return image, predictor(item).probabilities.numpy(), true_instances(item, dims)

    val = [field(item) for item in splits["val"]]
    test = [field(item) for item in splits["test"]]
    best, best_score = None, -1.0
    for sigma in (1.0, 2.0):
        for md in (2, 3, 4, 5, 6, 8):
            s = np.mean([instance_metrics(t, classical(im, sigma, md, small))["mean_ap"] for im, _, t in val])
            if s > best_score:
                best, best_score = (sigma, md), s
    methods = {
        "classical": lambda i: classical(test[i][0], best[0], best[1], small),
        "components": lambda i: components(test[i][1], settings["max_hole_size"], settings["min_size"]),
        "ours": lambda i: postprocess(test[i][1], settings),
    }
    truths = [t for _, _, t in test]
    pixels = int(np.prod(truths[0].shape)) * len(test)
    print(
        f"\ntrained {dims}D: unet {summary['epochs']} epochs in {summary['minutes']:.1f} min on 1 CPU thread "
        f"(shared machine), {len(splits['train'])} train / {len(val)} val / {len(test)} test images "
        f"{'x'.join(map(str, truths[0].shape))}, "
        f"~{int(np.mean([t.max() for t in truths]))} nuclei each; ours: {_short(chosen)}, classical "
        f"sigma={best[0]} min_distance={best[1]}"
    )
    _table(methods, truths, len(test), pixels)


def _table(methods: dict[str, Callable[[int], np.ndarray]], truths: list[np.ndarray], n: int, pixels: int) -> None:
    rows = {}
    for key, method in methods.items():
        rows[key] = score(method, truths)
        rows[key]["time"] = timed(method, n, pixels)
    header = f"{'method':12s}" + "".join(f"{label:>9s}" for _, label in COLUMNS) + f"{'|count err|':>13s}{'s/MP':>8s}"
    print(header)
    for key, r in rows.items():
        cells = "".join(f"{r[c]:9.3f}" for c, _ in COLUMNS)
        print(f"{key:12s}{cells}{100 * r['mean_abs_count_error']:12.1f}%{r['time']:8.3f}")
    for base in ("classical", "components"):
        ratios = "  ".join(
            f"{label} {rows['ours'][c] / rows[base][c]:.2f}x" if rows[base][c] > 1e-3 else f"{label} - (baseline 0)"
            for c, label in COLUMNS
        )
        print(f"ours / {base}: {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulated", action="store_true", help="simulated network output instead of training")
    parser.add_argument("--n-val", type=int, default=3, help="--simulated: validation images")
    parser.add_argument("--n-test", type=int, default=6, help="--simulated: test images")
    parser.add_argument("--noise", type=float, default=1.0, help="--simulated: std of the logit noise (signal: 4)")
    parser.add_argument("--n", type=int, default=30, help="trained: synthetic images (train / val / test)")
    parser.add_argument("--size", type=int, default=128, help="trained: image size (3D: size/2 x size/2 x size/4)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3], help="trained: 2D and/or 3D")
    parser.add_argument("--minutes", type=float, default=4.0, help="trained: training time budget")
    parser.add_argument("--workdir", help="trained: folder for the data and the run (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="trained: reuse the data and run in --workdir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.simulated:
        for dims in args.dims:
            trained(dims, args.n, args.size, args.minutes, args.seed, args.workdir, args.reuse)
        return
    run((256, 256), args.n_val, args.n_test, args.noise, args.seed)
    run((64, 64, 48), args.n_val, max(2, args.n_test // 2), args.noise, args.seed)


if __name__ == "__main__":
    main()
