"""The ``medseg`` command: argument parsing only; the work is done by library functions.

Each sub-command is one ``_add_<name>`` function that declares its arguments and sets
``func`` to the library call. User errors (:class:`pipeline.errors.MedsegError`) end as one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from pipeline import runtime
from pipeline.engines import preemption
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
    p.add_argument(
        "--task",
        choices=("semantic", "instance", "auto"),
        default="semantic",
        help="instance: objects with their own ids (3-class target, instance metrics); auto: instance when the "
        "dataset has instance masks whose objects touch (default: semantic)",
    )

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
            task=args.task,
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
        description="Pair the label images (.nii.gz .nrrd .mha .png .gif .tif ...) of two folders by case id, compute "
        "Dice, IoU, precision, recall, HD95, ASSD, NSD and clDice per case and class (distances in mm from "
        "the label's spacing; missed or hallucinated structures score the image diagonal), and write "
        "per_case.csv and summary.json to the output folder.",
    )
    p.add_argument("--pred", metavar="DIR", help="folder of predicted label images")
    p.add_argument("--label", metavar="DIR", help="folder of reference label images")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for per_case.csv and summary.json")
    p.add_argument("-c", "--config", help="with --checkpoint: the config whose data to evaluate (default: the run's)")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="CKPT",
        help="run inference with this checkpoint first, on --split (several or a run folder: an ensemble)",
    )
    p.add_argument("--plan", metavar="FILE", help="with inference: the recommendation of medseg select")
    _add_ensemble_options(p)
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
    p.add_argument(
        "--instances",
        action="store_true",
        help="object instances (AP@0.5:0.95, AJI, PQ, count error); automatic for an instance run's --checkpoint",
    )

    def run(args: argparse.Namespace) -> int:
        if args.instances or (args.checkpoint and not (args.pred or args.label)):
            from pipeline.engines.instances import run_instance_evaluation

            evaluation = run_instance_evaluation(args, progress=sys.stderr.isatty())
            if evaluation is not None:
                print(evaluation.table())
                print(f"wrote {args.output}/per_case.csv, {args.output}/summary.json and {args.output}/overlays/")
                return 0
        if args.checkpoint or args.plan:
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

            members, spec = _members(args, p)
            evaluator = evaluate_split(
                members,
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
                postprocessing=spec,
                use_postprocessing=args.postprocessing_on,
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
        print(f"wrote {args.output}/per_case.csv, {args.output}/summary.json and {args.output}/report.html")
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
        "NIfTI in HU), cell (DSB2018 layout, one mask PNG per nucleus), cell3d (folders layout, NIfTI instance id "
        "maps of dense touching nuclei).",
    )
    p.add_argument("--kind", required=True, choices=SYNTH_KINDS.names())
    p.add_argument("--out", required=True, help="dataset folder (must be empty unless --overwrite)")
    p.add_argument("--n", type=int, default=8, help="number of training cases (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_size_arg, default=None, help="N (2D, 3D cube) or X,Y,Z; default per kind")
    p.add_argument("--n-test", type=int, default=None, help="vessel2d: cases in test/ (default n // 4, at least 1)")
    p.add_argument("--no-nodules", action="store_true", help="lung: lung fields only")
    p.add_argument("--dense", action="store_true", help="cell: dense clumps of touching / overlapping nuclei")
    p.add_argument("--overwrite", action="store_true", help="replace this kind's files in a non-empty folder")

    def run(args: argparse.Namespace) -> int:
        from pipeline.data.synth import SYNTH_KINDS, make_dataset

        size = args.size[0] if args.size and len(args.size) == 1 else args.size
        options = {"n_test": args.n_test} if args.n_test is not None else {}
        if args.no_nodules:
            options["nodules"] = False
        if args.dense:
            options["dense"] = True
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
    p.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="train cross-validation fold K (of data.num_folds) into RUN/fold_K, then predict its validation cases",
    )
    p.add_argument(
        "--probabilities", action="store_true", help="with --fold: also save the validation probabilities (.npz)"
    )

    def run(args: argparse.Namespace) -> int:
        from pipeline.engines.run import run_training

        sets = list(args.set)
        for flag, key in (("epochs", "epochs"), ("patience", "patience"), ("time_budget", "time_budget"),
                          ("device", "device"), ("output", "output")):  # fmt: skip
            value = getattr(args, flag)
            if value is not None:
                sets.append(f"train.{key}={value}")
        if args.fold is not None:
            from pipeline.engines.crossval import train_fold

            summary = train_fold(
                args.config, sets, args.fold, resume=args.resume, overwrite=args.overwrite,
                probabilities=args.probabilities,
            )  # fmt: skip
        elif args.probabilities:
            raise MedsegError("--probabilities: only with --fold (the validation cases of a fold)")
        else:
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
        "maps in the input's format and geometry (NIfTI with the input's affine and header, NRRD/MHA likewise, "
        "a DICOM series folder as NIfTI; PNG at the input's size), or in --format. The config stored in the "
        "checkpoint is used unless -c is given.",
    )
    p.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="CKPT",
        help="checkpoint(s) or run folder(s) (e.g. runs/x/checkpoints/best.pt; several or a cross-validation run "
        "folder: an ensemble averaging their probabilities)",
    )
    p.add_argument("--plan", metavar="FILE", help="the recommendation of medseg select (members and post-processing)")
    p.add_argument("--input", required=True, metavar="FILE|DIR", help="an image or a folder of images")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the label maps")
    p.add_argument("-c", "--config", help="config to use instead of the checkpoint's own")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: infer.device)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation")
    p.add_argument("--probabilities", action="store_true", help="also write <case>_probabilities.npz")
    p.add_argument(
        "--format",
        dest="fmt",
        metavar="FMT",
        help="output format: nii.gz, nii, nrrd, mha, mhd, png or tif, with the input's shape and geometry "
        "(default: the input's own; NIfTI for a DICOM series); dcmseg: a DICOM Segmentation of a DICOM input",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="segment only the inputs whose label map is not in --output yet (after an interruption)",
    )
    _add_ensemble_options(p)
    p.add_argument("--part", type=int, metavar="K", help="segment only part K (0-based) of --parts N of the inputs")
    p.add_argument("--parts", type=int, metavar="N", help="number of parts (default under torchrun: WORLD_SIZE)")

    def run(args: argparse.Namespace) -> int:
        from pipeline.engines.predictor import run_inference

        members, spec = _members(args, p)
        written = run_inference(
            members,
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
            fmt=args.fmt,
            postprocessing=spec,
            use_postprocessing=args.postprocessing_on,
            part=args.part,
            parts=args.parts,
        )
        print(f"wrote {len(written)} file(s) to {args.output}")
        return 0

    p.set_defaults(func=run)


def _add_ensemble_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--postprocessing",
        metavar="JSON",
        help="post-processing to apply (default: postprocessing.json of a cross-validation run folder, or the plan's)",
    )
    p.add_argument(
        "--no-postprocessing",
        dest="postprocessing_on",
        action="store_false",
        help="apply no post-processing, even where the run or plan has one",
    )


def _members(args: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[list[str], object]:
    """``--checkpoint`` or ``--plan``: the ensemble members and the post-processing to apply."""
    if bool(args.checkpoint) == bool(args.plan):
        p.error("give --checkpoint CKPT [CKPT ...] or --plan FILE (one of them)")
    from pipeline.engines.members import describe, load_plan

    members, spec = args.checkpoint, args.postprocessing
    if args.plan:
        paths, planned = load_plan(args.plan)
        members, spec = [str(m) for m in paths], args.postprocessing or planned
    print(describe(members, spec, args.postprocessing_on), flush=True)
    return members, spec


def _add_cv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation: train every fold, or summarize a run",
        description="medseg cv -c CONFIG trains folds 0..data.num_folds-1 into RUN/fold_K one after another (one per "
        "GPU when several are visible), skipping finished folds and resuming interrupted ones; each fold predicts "
        "its validation cases (out-of-fold). Then, like medseg cv summarize RUN, it reports per-fold and pooled "
        "metrics (RUN/cv_summary.json, .csv) and chooses post-processing on them (RUN/postprocessing.json).",
    )
    p.add_argument("-c", "--config", help="YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--epochs", type=int, help="shorthand for --set train.epochs=N")
    p.add_argument("--device", help="shorthand for --set train.device=DEVICE")
    p.add_argument("--output", help="shorthand for --set train.output=RUN")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also save the out-of-fold probabilities (float16 .npz), which medseg select needs for ensembles",
    )
    cv_sub = p.add_subparsers(dest="cv_command", metavar="summarize")
    s = cv_sub.add_parser("summarize", help="per-fold and pooled out-of-fold metrics of a run, without training")
    s.add_argument("run", metavar="RUN", help="cross-validation run folder (holding fold_K/)")
    s.add_argument("--no-postprocessing", dest="postprocessing_on", action="store_false",
                   help="do not choose post-processing")  # fmt: skip

    def run(args: argparse.Namespace) -> int:
        from pipeline.engines.crossval import run_cv, summarize_cv

        if args.cv_command == "summarize":
            summarize_cv(args.run, postprocessing=args.postprocessing_on)
            return 0
        if not args.config:
            p.error("-c CONFIG is required (or: medseg cv summarize RUN)")
        sets = list(args.set)
        for flag in ("epochs", "device", "output"):
            if getattr(args, flag) is not None:
                sets.append(f"train.{flag}={getattr(args, flag)}")
        run_cv(args.config, sets, probabilities=args.probabilities)
        return 0

    p.set_defaults(func=run)


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="compare cross-validated configurations and their ensembles; recommend one",
        description="Compare the out-of-fold Dice of each cross-validation run and of every two-run ensemble "
        "(same folds required; ensembles need the runs' out-of-fold probabilities: medseg cv --probabilities), "
        "print the table, choose post-processing for the best, and write the recommendation that "
        "medseg infer --plan FILE runs.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="cross-validation run folders")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="recommendation to write (JSON)")

    def run(args: argparse.Namespace) -> int:
        from pipeline.engines.selection import select_runs

        select_runs(args.runs, args.output)
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


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="(re)build report.html for a training run or evaluation folder",
        description="Write DIR/report.html: one self-contained page (no network) with the metrics table sortable "
        "per case and class, the training curves, and image / truth / prediction of each case with a slice slider "
        "for volumes. DIR is a training run folder (log.csv, checkpoints/), an evaluation folder (per_case.csv, "
        "summary.json; pictures when medseg evaluate recorded cases.json) or a demo folder.",
    )
    p.add_argument("folder", metavar="DIR", help="run, evaluation or demo folder")

    def run(args: argparse.Namespace) -> int:
        from pipeline.engines.html_report import build_report

        print(f"wrote {build_report(args.folder)}")
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
    for add in (*commands, _add_cv, _add_select, _add_evaluate, _add_export, _add_report):
        add(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM, Kubernetes, ``timeout``) or SIGUSR1 (SLURM's ``--signal``), handled like
    Ctrl-C: the same clean-up runs (a fresh run that never reached a checkpoint leaves nothing
    behind), then exit ``128 + signal`` (143, 138). A training run that holds a checkpoint is not
    stopped here but preempted (:mod:`pipeline.engines.preemption`): it saves at its next step."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_handler_pid = {"pid": os.getpid()}


def _terminate(signum: int, frame: object) -> None:
    if os.getpid() != _handler_pid["pid"]:
        return  # a forked data-loader worker: the main process decides, and stops its workers
    if preemption.request(signum):
        return  # a training run with a checkpoint: it saves and stops after the current step
    raise Terminated(signum)


def _preempted_line(err: preemption.Preempted, args: argparse.Namespace) -> str:
    where = f"epoch {err.epoch}, step {err.step}" if err.step else f"the end of epoch {err.epoch - 1}"
    run_dir = os.path.dirname(os.path.dirname(err.checkpoint))
    config = args.config if args.command == "train" else os.path.join(run_dir, "config.yaml")  # demo: the run's own
    return (
        f"medseg: preempted ({preemption.signal_name(err.signum)}): saved {err.checkpoint} at {where}; "
        f"continue with: medseg train -c {config} --output {run_dir} --resume"
    )


def main(argv: Sequence[str] | None = None) -> int:
    runtime.tune_allocator()  # before any large tensor: glibc's defaults re-fault every activation
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    main_thread = threading.current_thread() is threading.main_thread()
    _handler_pid["pid"] = os.getpid()
    previous = {s: signal.signal(s, _terminate) for s in STOP_SIGNALS} if main_thread else {}
    if main_thread and hasattr(signal, "SIGXFSZ"):
        # past `ulimit -f` a write fails with EFBIG (reported in one line) instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with runtime.command_clock(from_process_start=argv is None):  # a command line: since the process began
            return int(args.func(args) or 0)
    except MedsegError as err:
        print(f"medseg: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except preemption.Preempted as err:
        print(_preempted_line(err, args), file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt as err:
        what = f"terminated ({preemption.signal_name(err.signum)})" if isinstance(err, Terminated) else "interrupted"
        resume = " (a run that reached a checkpoint continues with the same command and --resume)"
        print(f"medseg: {what}{resume if args.command == 'train' else ''}", file=sys.stderr)
        return 128 + err.signum if isinstance(err, Terminated) else 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
