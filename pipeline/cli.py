"""The ``medseg`` command: argument parsing only; the work is done by library functions.

Each sub-command is one ``_add_<name>`` function that declares its arguments and sets
``func`` to the library call. User errors (:class:`pipeline.errors.MedsegError`) end as one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.errors import MedsegError

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
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label images")
    p.add_argument("--label", required=True, metavar="DIR", help="folder of reference label images")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for per_case.csv and summary.json")
    p.add_argument("--fov", metavar="DIR", help="folder of field-of-view masks (e.g. DRIVE); outside = ignored")
    p.add_argument("--classes", nargs="+", type=_positive_int, metavar="C", help="classes to evaluate (default: all)")
    p.add_argument("--nsd-tolerance", type=_non_negative_float, default=1.0, metavar="MM", help="NSD tolerance (mm)")
    p.add_argument(
        "--metrics",
        nargs="+",
        choices=METRICS,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="MONAI-native medical image segmentation: train, evaluate and run UNet / ResUNet / "
        "DenseUNet with boundary-aware losses on vessel, lung and cell data.",
    )
    parser.add_argument("--version", action="version", version=f"medseg {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_networks, _add_evaluate):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except MedsegError as err:
        print(f"medseg: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
