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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="MONAI-native medical image segmentation: train, evaluate and run UNet / ResUNet / "
        "DenseUNet with boundary-aware losses on vessel, lung and cell data.",
    )
    parser.add_argument("--version", action="version", version=f"medseg {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_networks,):
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
