"""``medseg demo``: the whole pipeline on a synthetic dataset, in minutes on a laptop CPU.

1. writes a synthetic look-alike dataset in its real layout (``medseg synth``);
2. trains a network with Dice + boundary loss (``medseg train -c configs/demo_<kind>.yaml``);
3. evaluates the best checkpoint on the held-out test split (``medseg evaluate --checkpoint``);
4. segments one image with flip TTA (``medseg infer``);
5. writes ``report.md`` with the metrics table, ``curves.png`` and overlays of image / truth /
   prediction, ``report.html`` (the same in one self-contained page, sortable, with a slice
   slider for volumes: :mod:`pipeline.engines.html_report`), and prints where everything is.

The demo folder is the demo's own: a second run replaces it (it carries a marker file); a folder
that holds anything else is refused.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, MedsegError
from pipeline.io import atomic_write_bytes, atomic_write_text
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
    from pipeline.engines.html_report import write_html_report
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

    if _is_instance(config_path, overrides):
        return _instance_demo(kind, summary, best, config_path, overrides, out, start, progress)
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

    _say(5, f"writing the report -> {out / 'report.md'} and {out / 'report.html'}")
    overlays = _overlays(config_path, overrides, eval_dir / "predictions", out / "overlays")
    summary_json = json.loads((eval_dir / "summary.json").read_text())
    minutes = (time.perf_counter() - start) / 60
    report = _report(kind, summary, summary_json, overlays, out, minutes, len(test_images))
    atomic_write_text(out / "report.md", report)
    write_html_report(out / "report.html", run_dir=run_dir, eval_dir=eval_dir, title=f"medseg demo: {kind}")
    dice = {c: v["dice"]["mean"] for c, v in summary_json["per_class"].items()}
    print(
        f"\ndemo finished in {minutes:.1f} min: test Dice {', '.join(f'class {c} {d:.3f}' for c, d in dice.items())}\n"
        f"  report     {out / 'report.md'}, {out / 'report.html'}\n  curves     {run_dir / 'curves.png'}\n"
        f"  overlays   {out / 'overlays'}\n  metrics    {eval_dir / 'per_case.csv'}\n"
        f"  checkpoint {best}\n  prediction {infer_dir}"
    )
    return {"out": str(out), "dice": dice, "minutes": minutes, "checkpoint": str(best), "train": summary}


def _test_items(config_path: Path, overrides: Sequence[str]) -> list[Mapping[str, Any]]:
    from pipeline.config import load_config
    from pipeline.data import load_datalist

    return load_datalist(load_config(config_path, overrides)["data"])["test"]


def _overlays(config_path: Path, overrides: Sequence[str], pred_dir: Path, out_dir: Path, limit: int = 4) -> list[Path]:
    """Image / truth / true positives, false positives and misses for up to ``limit`` test cases
    (:func:`pipeline.engines.views.overlay_figure`: three orthogonal slices for volumes)."""
    from pipeline.engines.predictor import output_name
    from pipeline.engines.views import load_case_view, overlay_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for item in _test_items(config_path, overrides)[:limit]:
        source = item["image"][0] if isinstance(item["image"], (list, tuple)) else item["image"]
        case = str(item.get("case", Path(source).name))
        view = load_case_view(case, source, item["label"], pred_dir / output_name(source), fov=item.get("fov"))
        target = out_dir / f"{Path(output_name(source)).name.split('.')[0]}.png"
        buf = io.BytesIO()
        overlay_figure(view).savefig(buf, format="png", dpi=80)
        atomic_write_bytes(target, buf.getvalue())
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


def _is_instance(config_path: Path, overrides: Sequence[str]) -> bool:
    from pipeline.config import load_config
    from pipeline.instances.schema import is_instance

    return is_instance(load_config(config_path, overrides))


def _instance_demo(
    kind: str,
    train: Mapping[str, Any],
    best: Path,
    config_path: Path,
    overrides: Sequence[str],
    out: Path,
    start: float,
    progress: bool,
) -> dict[str, Any]:
    """Steps 3-5 for an instance demo: instance metrics, objects in colours with their count."""
    from PIL import Image

    from pipeline.engines.instances import evaluate_instances_split
    from pipeline.engines.predictor import find_inputs, output_name, run_inference
    from pipeline.engines.views import picture
    from pipeline.instances.render import overlay

    eval_dir, infer_dir = out / "test", out / "infer"
    _say(3, f"evaluating {best.name} on the held-out test split (instances) -> {eval_dir}")
    evaluation = evaluate_instances_split(
        best, eval_dir, split="test", config_path=config_path, overrides=overrides, save_predictions=True,
        progress=progress,
    )  # fmt: skip
    print(evaluation.table())
    items = _test_items(config_path, overrides)
    source = items[0]["image"][0] if isinstance(items[0]["image"], (list, tuple)) else items[0]["image"]
    _say(4, f"segmenting {Path(source).name} into nuclei -> {infer_dir}")
    run_inference(best, find_inputs(source)[0], infer_dir, overwrite=True, progress=progress)

    _say(5, f"writing the report -> {out / 'report.md'}")
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    pictures = []
    for item, row in zip(items[:4], evaluation.rows, strict=False):
        src = item["image"][0] if isinstance(item["image"], (list, tuple)) else item["image"]
        ids = picture(eval_dir / "predictions" / output_name(src), label=True)
        target = out / "overlays" / f"{Path(output_name(src)).name.split('.')[0]}.png"
        Image.fromarray(overlay(picture(src), ids, mode="fill", alpha=0.6)).save(target)
        pictures.append((target, int(row["n_pred"]), int(row["n_true"])))
    m = evaluation.summary()["metrics"]
    minutes = (time.perf_counter() - start) / 60
    lines = [
        f"# medseg demo: {kind} (instances)",
        "",
        f"Trained {train['epochs']} epochs in {train['minutes']:.1f} min ({train['stop_reason']}). "
        f"Whole demo: {minutes:.1f} min.",
        "",
        f"## Test split ({evaluation.summary()['n_cases']} images, synthetic, held out)",
        "",
        "| AP@0.5 | mean AP (0.5:0.95) | F1@0.5 | AJI | PQ | mean abs. count error |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {m['mean_ap_0.50']:.3f} | {m['mean_mean_ap']:.3f} | {m['mean_f1']:.3f} | {m['mean_aji']:.3f} | "
        f"{m['mean_pq']:.3f} | {m['mean_abs_count_error']:.1%} |",
        "",
        "AP = TP / (TP + FP + FN) at each IoU threshold (DSB2018); per image: `test/per_case.csv`; truth | "
        "prediction outlines: `test/overlays/`.",
        "",
        "## Training curves",
        "",
        "![curves](run/curves.png)",
        "",
        "## Nuclei found (each in its colour)",
        "",
    ]
    for path, n_pred, n_true in pictures:
        lines += [
            f"**{path.stem}: {n_pred} nuclei found ({n_true} in the truth)**",
            "",
            f"![{path.stem}]({path.relative_to(out)})",
            "",
        ]
    outlines = sorted((eval_dir / "overlays").glob("*.png"))[:4]
    lines += ["## Outlines: truth | prediction", ""] + [f"![{p.stem}]({p.relative_to(out)})" for p in outlines]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    print(
        f"\ndemo finished in {minutes:.1f} min: test AP@0.5 {m['mean_ap_0.50']:.3f}, mean AP {m['mean_mean_ap']:.3f}\n"
        f"  report     {out / 'report.md'}\n  overlays   {out / 'overlays'}\n  metrics    {eval_dir / 'per_case.csv'}\n"
        f"  checkpoint {best}\n  prediction {infer_dir}"
    )
    return {"out": str(out), "ap50": m["mean_ap_0.50"], "minutes": minutes, "checkpoint": str(best), "train": train}
