"""``medseg demo``: the whole pipeline on a synthetic dataset, in minutes on a laptop CPU.

1. writes a synthetic look-alike dataset in its real layout (``medseg synth``);
2. trains a network with Dice + boundary loss (``medseg train -c configs/demo_<kind>.yaml``);
3. evaluates the best checkpoint on the held-out test split (``medseg evaluate --checkpoint``);
4. segments one image with flip TTA (``medseg infer``);
5. writes ``report.md`` with the metrics table, ``curves.png`` and overlays of image / truth /
   prediction, and prints where everything is.

The demo folder is the demo's own: a second run replaces it (it carries a marker file); a folder
that holds anything else is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, MedsegError
from pipeline.io import atomic_write_text, read_label
from pipeline.registry import DEMOS

__all__ = ["run_demo", "DEMOS", "config_dir"]

MARKER = ".medseg-demo"


@dataclass(frozen=True)
class Demo:
    """One demo: its config file, how many cases, and what ``--quick`` shrinks it to (tests).

    Attributes:
        config: the config file in ``configs/``.
        n: synthetic training cases.
        quick_n / quick_size / quick_overrides: the ``--quick`` version.
    """

    config: str
    n: int
    quick_n: int
    quick_size: int | tuple[int, ...]
    quick_overrides: tuple[str, ...]


def _register(kind: str, demo: Demo) -> None:
    DEMOS.register(kind, demo)


_register(
    "vessel2d",
    Demo("demo_vessel2d.yaml", 16, 5, 64, ("transforms.patch_size=[32, 32]", "infer.roi_size=[32, 32]")),
)
_register("cell", Demo("demo_cell.yaml", 24, 7, 64, ("transforms.patch_size=[32, 32]", "infer.roi_size=[32, 32]")))
_register(
    "lung",
    Demo("demo_lung.yaml", 10, 5, (32, 32, 16), ("transforms.patch_size=[32, 32, 16]", "infer.roi_size=[32, 32, 16]")),
)
QUICK_COMMON = [
    "train.epochs=2",
    "scheduler.warmup=0",
    "train.val_every=1",
    "network.channels=[4, 8, 16]",
    "transforms.num_samples=1",
]


def config_dir() -> Path:
    """The ``configs/`` folder of the source tree medseg runs from."""
    here = Path(__file__).resolve().parents[1] / "configs"
    if not here.is_dir():
        raise MedsegError(
            f"{here}: the configs folder is missing; medseg demo runs from a source checkout (pip install -e .)"
        )
    return here


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise MedsegError(f"{out} exists and was not made by medseg demo; choose another --out")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("made by medseg demo; a new demo run replaces this folder\n")
    except OSError as err:
        raise MedsegError(f"{out}: cannot write the demo folder ({err.strerror})") from None


def _say(step: int, text: str) -> None:
    print(f"[{step}/5] {text}", flush=True)


def run_demo(
    kind: str = "vessel2d",
    network: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    extra_overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns paths and figures (test Dice per class, minutes).

    Raises:
        ConfigError: unknown kind or network.
        MedsegError: the output folder is not the demo's own or not writable.
    """
    from pipeline.data.synth import make_dataset
    from pipeline.engines.predictor import evaluate_split, find_inputs, run_inference
    from pipeline.engines.run import run_training

    try:
        spec = DEMOS.get(kind)
    except ValueError as err:
        raise ConfigError(str(err), source="--kind") from None
    out = Path(out) if out is not None else Path("runs") / f"demo-{kind}"
    config_path = config_dir() / spec.config
    start = time.perf_counter()
    _prepare(out)

    data_dir, run_dir, eval_dir, infer_dir = out / "data", out / "run", out / "test", out / "infer"
    n = spec.quick_n if quick else spec.n
    size = spec.quick_size if quick else None
    _say(1, f"writing {n} synthetic {kind} cases to {data_dir}")
    make_dataset(kind, data_dir, n, seed, size=size)

    overrides = [f"data.root={data_dir}", f"train.output={run_dir}", f"seed={seed}"]
    if network is not None:
        overrides.append(f"network.name={network}")
    if quick:
        overrides += QUICK_COMMON + list(spec.quick_overrides)
    overrides += list(extra_overrides)
    _say(2, f"training ({spec.config}{', network ' + network if network else ''}) -> {run_dir}")
    summary = run_training(config_path, overrides, overwrite=True, progress=progress)
    best = Path(run_dir) / "checkpoints" / "best.pt"
    if not best.exists():
        best = Path(run_dir) / "checkpoints" / "last.pt"

    _say(3, f"evaluating {best.name} on the held-out test split -> {eval_dir}")
    evaluator = evaluate_split(
        best, eval_dir, split="test", config_path=config_path, overrides=overrides, save_predictions=True,
        progress=progress,
    )  # fmt: skip
    print(evaluator.table())

    test_images = sorted((eval_dir / "predictions").iterdir())
    first = _test_items(config_path, overrides)[0]
    source = first["image"][0] if isinstance(first["image"], (list, tuple)) else first["image"]
    _say(4, f"segmenting {Path(source).name} with flip TTA -> {infer_dir}")
    run_inference(best, find_inputs(source)[0], infer_dir, tta=True, overwrite=True, progress=progress)

    _say(5, f"writing the report -> {out / 'report.md'}")
    overlays = _overlays(config_path, overrides, eval_dir / "predictions", out / "overlays")
    summary_json = json.loads((eval_dir / "summary.json").read_text())
    minutes = (time.perf_counter() - start) / 60
    report = _report(kind, summary, summary_json, overlays, out, minutes, len(test_images))
    atomic_write_text(out / "report.md", report)
    dice = {c: v["dice"]["mean"] for c, v in summary_json["per_class"].items()}
    print(
        f"\ndemo finished in {minutes:.1f} min: test Dice {', '.join(f'class {c} {d:.3f}' for c, d in dice.items())}\n"
        f"  report     {out / 'report.md'}\n  curves     {run_dir / 'curves.png'}\n"
        f"  overlays   {out / 'overlays'}\n  metrics    {eval_dir / 'per_case.csv'}\n"
        f"  checkpoint {best}\n  prediction {infer_dir}"
    )
    return {"out": str(out), "dice": dice, "minutes": minutes, "checkpoint": str(best), "train": summary}


def _test_items(config_path: Path, overrides: Sequence[str]) -> list[Mapping[str, Any]]:
    from pipeline.config import load_config
    from pipeline.data import load_datalist

    return load_datalist(load_config(config_path, overrides)["data"])["test"]


def _display_slice(path: str | os.PathLike) -> np.ndarray:
    """A 2D view of an image file: the image itself, or the middle axial slice of a volume."""
    if str(path).lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        return np.rot90(vol[..., vol.shape[2] // 2])
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "I", "F", "I;16") else img, dtype=np.float32)


def _label_slice(path: str | os.PathLike) -> np.ndarray:
    arr = np.asarray(read_label(path).array)
    return np.rot90(arr[..., arr.shape[2] // 2]) if arr.ndim == 3 else arr.T  # pipeline.io's W H -> the picture


def _overlays(config_path: Path, overrides: Sequence[str], pred_dir: Path, out_dir: Path, limit: int = 4) -> list[Path]:
    """Image / truth / prediction side by side for up to ``limit`` test cases."""
    # matplotlib's object API, not pyplot: the caller's backend (a notebook's) stays as it is
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pipeline.engines.predictor import output_name

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for item in _test_items(config_path, overrides)[:limit]:
        source = item["image"][0] if isinstance(item["image"], (list, tuple)) else item["image"]
        pred_path = pred_dir / output_name(source)
        label = item["label"]
        if isinstance(label, (list, tuple)):  # DSB2018: one mask per nucleus
            label_arr = np.any([_label_slice(p) > 0 for p in label], axis=0).astype(np.uint8) if label else None
        else:
            label_arr = _label_slice(label)
        image = _display_slice(source)
        pred = _label_slice(pred_path) if pred_path.exists() else None
        fig = Figure(figsize=(11, 4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3)
        lo, hi = np.percentile(image, [1, 99])
        shown = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
        for ax, (title, mask) in zip(axes, (("image", None), ("truth", label_arr), ("prediction", pred)), strict=True):
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
            if mask is not None:
                ax.imshow(np.ma.masked_where(mask == 0, mask), cmap="autumn", alpha=0.55, interpolation="nearest")
            ax.set_title(f"{item.get('case', '')}: {title}")
            ax.axis("off")
        fig.tight_layout()
        target = out_dir / f"{Path(output_name(source)).name.split('.')[0]}.png"
        fig.savefig(target, dpi=80)
        written.append(target)
    return written


def _report(
    kind: str,
    train: Mapping[str, Any],
    summary: Mapping[str, Any],
    overlays: Sequence[Path],
    out: Path,
    minutes: float,
    n_test: int,
) -> str:
    metrics = summary["metrics"]
    lines = [
        f"# medseg demo: {kind}",
        "",
        f"Trained {train['epochs']} epochs in {train['minutes']:.1f} min ({train['stop_reason']}); best validation "
        f"Dice {train['best_dice'] if train['best_dice'] is None else round(train['best_dice'], 4)}. "
        f"Whole demo: {minutes:.1f} min.",
        "",
        f"## Test split ({n_test} cases, synthetic, held out)",
        "",
        "| class | " + " | ".join(metrics) + " |",
        "| --- | " + " | ".join("---:" for _ in metrics) + " |",
    ]
    for cls, stats in summary["per_class"].items():
        cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" for m in metrics]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    lines += ["", "Distances (hd95, assd) in mm; per case: `test/per_case.csv`.", "", "## Training curves", ""]
    lines += ["![curves](run/curves.png)", "", "## Image / truth / prediction", ""]
    lines += [f"![{p.stem}]({p.relative_to(out)})" for p in overlays]
    return "\n".join(lines) + "\n"
