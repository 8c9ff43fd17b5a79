"""The ``medseg`` command: argument parsing only; the work is done by library functions.

Each sub-command is one ``_add_<name>`` function that declares its arguments and sets
``func`` to the library call. User errors (:class:`pipeline.errors.MedsegError`) end as one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from pipeline import runtime
from pipeline.errors import MedsegError, one_line

EXIT_USER_ERROR = 2


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medseg")
    except Exception:  # running from a source tree that was never installed
        return "0+unknown"


def _add_networks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "networks",
        help="list registered networks with parameter counts",
        description="List every registered network with its parameter count in a default 2D and 3D "
        "configuration (1 input channel, 2 classes).",
    )
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--out-channels", type=int, default=2)

    def run(args: argparse.Namespace) -> int:
        from pipeline.networks import network_table

        print(network_table(in_channels=args.in_channels, out_channels=args.out_channels))
        return 0

    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (0 is background), got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _add_plan(sub: argparse._SubParsersAction) -> None:
    def positive(text: str) -> float:
        value = float(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    p = sub.add_parser(
        "plan",
        help="plan a training config from a dataset's fingerprint and a compute budget",
        description="Fingerprint DATA_ROOT (shapes, spacings, intensities, classes; cached as fingerprint.json "
        "beside the output), time the planned network on the device, and write a commented config that "
        "`medseg train -c` runs within the budget.",
    )
    p.add_argument("root", metavar="DATA_ROOT", help="dataset folder")
    p.add_argument("--format", default=None, help="layout (msd, nnunet, drive, dsb2018, folders); default: detected")
    p.add_argument("--budget-minutes", type=positive, default=10.0, help="wall time of the whole run (default 10)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--memory-gb",
        type=positive,
        default=None,
        help="memory the run may use (default: CPU 8 GB or half the RAM, CUDA the device's)",
    )
    p.add_argument("--network", choices=("unet", "resunet", "denseunet"), default="unet")
    p.add_argument("--output", "-o", required=True, help="the config to write (plan.yaml)")

    def run(args: argparse.Namespace) -> int:
        from pipeline.data.fingerprint import fingerprint_summary
        from pipeline.engines.planner import write_plan
        from pipeline.registry import LAYOUTS

        if args.format is not None and args.format not in LAYOUTS:
            raise MedsegError(f"--format must be one of {LAYOUTS.names()}, got {args.format!r}")
        fp, plan = write_plan(
            args.root,
            args.output,
            fmt=args.format,
            budget_minutes=args.budget_minutes,
            device=args.device,
            memory_gb=args.memory_gb,
            network=args.network,
        )
        print(fingerprint_summary(fp))
        print(f"plan: {args.output} (predicted run {plan['_meta']['predicted_minutes']:.1f} min)")
        return 0

    p.set_defaults(func=run)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from pipeline.metrics import METRICS

    p = sub.add_parser(
        "evaluate",
        help="compare predicted label images with reference labels (Dice, HD95, NSD, clDice, ...)",
        description="Pair the label images (.nii.gz .nii .png .gif .tif) of two folders by case id, compute "
        "Dice, IoU, precision, recall, HD95, ASSD, NSD and clDice per case and class (distances in mm from "
        "the label's spacing; missed or hallucinated structures score the image diagonal), and write "
        "per_case.csv and summary.json to the output folder.",
    )
    p.add_argument("--pred", metavar="DIR", help="folder of predicted label images")
    p.add_argument("--label", metavar="DIR", help="folder of reference label images")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for per_case.csv and summary.json")
    p.add_argument("-c", "--config", help="with --checkpoint: the config whose data to evaluate (default: the run's)")
    p.add_argument("--checkpoint", metavar="CKPT", help="run inference with this checkpoint first, on --split")
    p.add_argument("--split", default=None, choices=("train", "val", "test"), help="with --checkpoint (default: test)")
    p.add_argument(
        "--data",
        metavar="ROOT",
        help="with --checkpoint: score every case of this dataset root (a held-out folder, the run's layout; no split)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --checkpoint: override config")
    p.add_argument("--device", help="with --checkpoint: auto, cpu, cuda, cuda:N")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="with --checkpoint: flip TTA")
    p.add_argument("--save-predictions", action="store_true", help="with --checkpoint: write OUTPUT/predictions/")
    p.add_argument(
        "--fov",
        metavar="DIR",
        help="with --pred/--label: folder of field-of-view masks (e.g. DRIVE); outside = ignored",
    )
    p.add_argument("--classes", nargs="+", type=_positive_int, metavar="C", help="classes to evaluate (default: all)")
    p.add_argument("--nsd-tolerance", type=_non_negative_float, default=1.0, metavar="MM", help="NSD tolerance (mm)")
    p.add_argument(
        "--metrics",
        nargs="+",
        choices=list(METRICS),
        default=list(METRICS),
        metavar="M",
        help=f"metrics to compute, from {{{', '.join(METRICS)}}} (default: all)",
    )
    p.add_argument(
        "--case-regex",
        metavar="REGEX",
        help="take the case id from each file stem with this regex (group 1 if any) to pair differently named "
        r"files, e.g. '^(\d+)_' for DRIVE's 01_test.png / 01_manual1.gif / 01_test_mask.gif",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing per_case.csv / summary.json")

    def run(args: argparse.Namespace) -> int:
        if args.checkpoint:
            if args.pred or args.label:
                p.error("give either --checkpoint (inference first) or --pred and --label, not both")
            folder_only = [flag for flag, value in (("--fov", args.fov), ("--case-regex", args.case_regex)) if value]
            if folder_only:
                raise MedsegError(
                    f"{' and '.join(folder_only)}: only with --pred/--label folders; with --checkpoint the cases and "
                    "their FOV masks come from the config's data section"
                )
            if args.data and args.split:
                raise MedsegError("--data scores every case of ROOT (no split): give --data or --split, not both")
            from pipeline.engines.predictor import evaluate_split

            evaluator = evaluate_split(
                args.checkpoint,
                args.output,
                split=args.split or "test",
                data_root=args.data,
                config_path=args.config,
                overrides=args.set,
                device=args.device,
                tta=args.tta,
                save_predictions=args.save_predictions,
                overwrite=args.overwrite,
                metrics=args.metrics,
                nsd_tolerance=args.nsd_tolerance,
                classes=args.classes,
                progress=sys.stderr.isatty(),
            )
        elif args.data:
            p.error("--data needs --checkpoint (inference first)")
        elif not (args.pred and args.label):
            p.error("--pred and --label are required (or --checkpoint to run inference first)")
        else:
            from pipeline.engines.evaluator import evaluate_folder

            evaluator = evaluate_folder(
                args.pred,
                args.label,
                args.output,
                fov_dir=args.fov,
                classes=args.classes,
                nsd_tolerance=args.nsd_tolerance,
                metrics=args.metrics,
                case_regex=args.case_regex,
                overwrite=args.overwrite,
                progress=sys.stderr.isatty(),
            )
        print(evaluator.table())
        print(f"wrote {args.output}/per_case.csv and {args.output}/summary.json")
        return 0

    p.set_defaults(func=run)


def _size_arg(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or X,Y,Z, got {text!r}") from None


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from pipeline.data.synth import SYNTH_KINDS

    p = sub.add_parser(
        "synth",
        help="write a synthetic look-alike dataset in its real layout",
        description="Write N seeded synthetic cases: vessel2d (DRIVE layout), vessel3d and lung (MSD layout, "
        "NIfTI in HU), cell (DSB2018 layout).",
    )
    p.add_argument("--kind", required=True, choices=SYNTH_KINDS.names())
    p.add_argument("--out", required=True, help="dataset folder (must be empty unless --overwrite)")
    p.add_argument("--n", type=int, default=8, help="number of training cases (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_size_arg, default=None, help="N (2D, 3D cube) or X,Y,Z; default per kind")
    p.add_argument("--n-test", type=int, default=None, help="vessel2d: cases in test/ (default n // 4, at least 1)")
    p.add_argument("--no-nodules", action="store_true", help="lung: lung fields only")
    p.add_argument("--overwrite", action="store_true", help="replace this kind's files in a non-empty folder")

    def run(args: argparse.Namespace) -> int:
        from pipeline.data.synth import SYNTH_KINDS, make_dataset

        size = args.size[0] if args.size and len(args.size) == 1 else args.size
        options = {"n_test": args.n_test} if args.n_test is not None else {}
        if args.no_nodules:
            options["nodules"] = False
        try:
            out = make_dataset(args.kind, args.out, args.n, args.seed, size=size, overwrite=args.overwrite, **options)
        except ValueError as err:
            if isinstance(err, MedsegError):  # a non-empty folder: the usual one-line error, exit 2
                raise
            p.error(str(err))
        print(f"wrote {args.n} {args.kind} case(s) to {out} (data.format: {SYNTH_KINDS.get(args.kind).format})")
        return 0

    p.set_defaults(func=run)


def _add_check_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data",
        help="check every case of the configured dataset before training",
        description="Load every case the config's data section points at, as training would, and list every "
        "problem (unreadable files, shape mismatches, label values, NaN/Inf, channels). Exit 2 on problems.",
    )
    p.add_argument("-c", "--config", required=True, help="YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")

    def run(args: argparse.Namespace) -> int:
        from pipeline.data.check import run_check_data

        return run_check_data(args.config, args.set)

    p.set_defaults(func=run)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a network as a config says",
        description="Train the configured network on the configured data, validating by sliding window. "
        "Under torchrun (torchrun --nproc_per_node N -m pipeline.cli train -c CONFIG) it trains with DDP.",
    )
    p.add_argument("-c", "--config", required=True, help="YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder from checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds a run")
    p.add_argument("--epochs", type=int, help="shorthand for --set train.epochs=N")
    p.add_argument("--patience", type=int, help="shorthand for --set train.patience=N (0 = no early stopping)")
    p.add_argument("--time-budget", type=float, metavar="MIN", help="shorthand for --set train.time_budget=MIN")
    p.add_argument("--device", help="shorthand for --set train.device=DEVICE (auto, cpu, cuda, cuda:N)")
    p.add_argument("--output", help="shorthand for --set train.output=DIR")

    def run(args: argparse.Namespace) -> int:
        from pipeline.engines.run import run_training

        sets = list(args.set)
        for flag, key in (("epochs", "epochs"), ("patience", "patience"), ("time_budget", "time_budget"),
                          ("device", "device"), ("output", "output")):  # fmt: skip
            value = getattr(args, flag)
            if value is not None:
                sets.append(f"train.{key}={value}")
        summary = run_training(args.config, sets, resume=args.resume, overwrite=args.overwrite)
        if summary["rank"] == 0:
            value = summary["best_metric"]
            best = "n/a" if value is None else f"{value:.4f} (epoch {summary['best_epoch']})"
            name = "Dice" if summary["val_metric"] == "dice" else summary["val_metric"]
            print(
                f"trained {summary['epochs']} epochs in {summary['minutes']:.1f} min ({summary['stop_reason']}); "
                f"best validation {name} {best}; run folder {summary['run_dir']}"
            )
        return 0

    p.set_defaults(func=run)


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="segment images or volumes with a trained checkpoint",
        description="Segment a file or every image in a folder by sliding-window inference and write label "
        "maps in the input's format and geometry (NIfTI with the input's affine and header; PNG at the input's "
        "size). The config stored in the checkpoint is used unless -c is given.",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint (e.g. runs/x/checkpoints/best.pt)")
    p.add_argument("--input", required=True, metavar="FILE|DIR", help="an image or a folder of images")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the label maps")
    p.add_argument("-c", "--config", help="config to use instead of the checkpoint's own")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: infer.device)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation")
    p.add_argument("--probabilities", action="store_true", help="also write <case>_probabilities.npz")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="segment only the inputs whose label map is not in --output yet (after an interruption)",
    )

    def run(args: argparse.Namespace) -> int:
        from pipeline.engines.predictor import run_inference

        written = run_inference(
            args.checkpoint,
            args.input,
            args.output,
            config_path=args.config,
            overrides=args.set,
            device=args.device,
            tta=args.tta,
            save_probabilities=True if args.probabilities else None,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=sys.stderr.isatty(),
        )
        print(f"wrote {len(written)} file(s) to {args.output}")
        return 0

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from pipeline.demo import DEMOS

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on a synthetic dataset (minutes on a CPU)",
        description="Write a synthetic dataset, train a network with Dice + boundary loss, evaluate it on "
        "held-out cases, segment one image and write a report with metrics, curves and overlays.",
    )
    p.add_argument("--kind", default="vessel2d", choices=DEMOS.names(), help="dataset (default: vessel2d, DRIVE-like)")
    p.add_argument("--network", help="network name from `medseg networks` (default: the demo config's unet)")
    p.add_argument("--out", help="demo folder (default: runs/demo-KIND); a second run replaces it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny data and 2 epochs: checks the plumbing in seconds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo config value")

    def run(args: argparse.Namespace) -> int:
        from pipeline.demo import run_demo

        run_demo(args.kind, args.network, args.out, quick=args.quick, seed=args.seed, extra_overrides=args.set)
        return 0

    p.set_defaults(func=run)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint as ONNX, TorchScript or a MONAI bundle",
        description="Write the checkpoint's network as model.onnx (onnxruntime), model.ts (TorchScript) or a MONAI "
        "bundle folder (python -m monai.bundle run --config_file configs/inference.json --input_dir IN --output_dir "
        "OUT), with preprocessing.json: every setting needed to reproduce medseg infer without medseg. Each export "
        "is checked against PyTorch on an odd-sized input. ONNX needs pip install medseg[export].",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint (e.g. runs/x/checkpoints/best.pt)")
    p.add_argument("--format", required=True, metavar="FORMAT", help="onnx, torchscript or bundle")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")

    def run(args: argparse.Namespace) -> int:
        from pipeline.export import export_checkpoint

        out = export_checkpoint(args.checkpoint, args.format, args.output, overwrite=args.overwrite)
        print(f"wrote {args.format} export to {out}")
        return 0

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="MONAI-native medical image segmentation: train, evaluate and run UNet / ResUNet / "
        "DenseUNet with boundary-aware losses on vessel, lung and cell data.",
    )
    parser.add_argument("--version", action="version", version=f"medseg {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = (_add_demo, _add_networks, _add_synth, _add_check_data, _add_plan, _add_train, _add_infer)
    for add in (*commands, _add_evaluate, _add_export):
        add(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM, Kubernetes, ``timeout``), handled like Ctrl-C: the same clean-up runs (a
    fresh run that never reached a checkpoint leaves nothing behind), then exit ``128 + 15``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    runtime.tune_allocator()  # before any large tensor: glibc's defaults re-fault every activation
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    if main_thread and hasattr(signal, "SIGXFSZ"):
        # past `ulimit -f` a write fails with EFBIG (reported in one line) instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return int(args.func(args) or 0)
    except MedsegError as err:
        print(f"medseg: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as err:
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        resume = " (a run that reached a checkpoint continues with the same command and --resume)"
        print(f"medseg: {what}{resume if args.command == 'train' else ''}", file=sys.stderr)
        return 128 + err.signum if isinstance(err, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
