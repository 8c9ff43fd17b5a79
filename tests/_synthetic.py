"""Tiny synthetic datasets and configs for the end-to-end tests (faults, resume, DDP, security).

Datasets use the ``folders`` layout (``images/<case>.<ext>``, ``labels/<case>.<ext>``) so a test
can break one file without knowing a real dataset's naming. Images are smooth random blobs with
their mask as the label, so a tiny network learns them within a few epochs.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def blob_case(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """An image (float in [0, 255]) and its 0/1 mask: two or three bright ellipsoids plus noise."""
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    mask = np.zeros(shape, bool)
    for _ in range(int(rng.integers(2, 4))):
        centre = [rng.uniform(0.2 * s, 0.8 * s) for s in shape]
        radius = [rng.uniform(0.08 * s, 0.18 * s) for s in shape]
        mask |= sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True)) <= 1.0
    image = np.where(mask, 170.0, 70.0) + rng.normal(0, 20, shape)
    return np.clip(image, 0, 255).astype(np.float32), mask.astype(np.uint8)


def write_folders(
    root: str | os.PathLike, n: int = 6, size: int = 40, dims: int = 2, seed: int = 0, suffix: str | None = None
) -> Path:
    """Write ``n`` cases ``case0..`` under ``root/images`` and ``root/labels``.

    2D: grey PNG images and 0/1 PNG labels (``suffix`` ``.png``); 3D: float32 NIfTI images and
    uint8 NIfTI labels (``.nii.gz``).
    """
    root = Path(root)
    suffix = suffix or (".png" if dims == 2 else ".nii.gz")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, label = blob_case(np.random.default_rng([seed, i]), (size,) * dims)
        write_image(root / "images" / f"case{i}{suffix}", image)
        write_image(root / "labels" / f"case{i}{suffix}", label)
    return root


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """NIfTI (any dtype, identity affine) or a 2D image file (uint8 via PIL) by suffix."""
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    else:
        Image.fromarray(np.asarray(array).astype(np.uint8)).save(path)
    return path


def tiny_config(root: str | os.PathLike, output: str | os.PathLike, dims: int = 2, **sections: Any) -> dict:
    """A config that trains in about a second per epoch on :func:`write_folders` data.

    ``sections`` update the sections shallowly (``train={"epochs": 3}`` keeps the other train keys).
    """
    patch = [32] * dims if dims == 2 else [16] * dims
    cfg: dict[str, Any] = {
        "seed": 0,
        "network": {"name": "unet", "spatial_dims": dims, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16]},
        "loss": {"name": "dice_ce", "to_onehot_y": True, "softmax": True},
        "data": {"format": "folders", "root": str(root), "val_fraction": 0.34},
        "transforms": {
            "patch_size": patch,
            "num_samples": 2,
            "label_values": [0, 1],
            "augment": {"rotate": {"prob": 0.3}, "scale": {"prob": 0.2}, "flip": {"prob": 0.5}},
        },
        "train": {
            "output": str(output),
            "epochs": 2,
            "batch_size": 2,
            "num_workers": 0,
            "threads": 1,
            "cache": "memory",
            "tensorboard": False,
            "device": "cpu",
            "grad_clip": 12.0,
        },
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0001},
        "scheduler": {"name": "constant"},
        "infer": {"overlap": 0.25, "sw_batch_size": 4, "device": "cpu"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(name), dict):
            cfg[name] = {**cfg[name], **value}
        else:
            cfg[name] = value
    return cfg


def write_config(path: str | os.PathLike, config: dict) -> str:
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return str(path)


def free_port() -> int:
    """A TCP port that was free a moment ago (for torchrun's ``--master_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(threads: int = 1) -> dict[str, str]:
    """Environment for a ``python -m pipeline.cli`` child: this checkout first, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


# --------------------------------------------------------------------------- child processes

_FORKSERVER_PRELOAD = ["pipeline.cli", "pipeline.engines.run", "pipeline.engines.predictor", "_synthetic"]


def cli_context():
    """A ``forkserver`` multiprocessing context whose server has imported torch, MONAI and medseg.

    Each child is forked from that clean, single-threaded server, so it starts in milliseconds
    instead of re-importing torch (seconds), and it is a real process that SIGKILL can stop at
    any instruction, unlike an in-process run.
    """
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_FORKSERVER_PRELOAD)
    return ctx


def run_cli(argv: list[str], fault: str | None = None, at: int = 1, stderr: str | None = None) -> None:
    """Child target: ``medseg <argv>``, exiting with its return code.

    ``fault`` kills the process with SIGKILL inside a save of ``last.pt``: ``"write"`` in the
    ``at``-th save, after half of the bytes reached the temporary file; ``"rename"`` at the
    ``at``-th time an existing ``last.pt`` became ``last.prev.pt`` (the first save has none),
    before the new file took its place. ``"SIGTERM"`` / ``"SIGUSR1"`` send that signal to the
    process at the start of the ``at``-th optimiser step (counted over the whole run).
    ``stderr``: a file that receives the child's standard error (a forkserver child writes to
    the server's, which pytest's ``capfd`` does not see).
    """
    import signal

    from pipeline.cli import main
    from pipeline.engines import checkpoint

    saves = {"n": 0}
    if stderr is not None:
        sys.stderr.flush()
        os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if fault == "write":
        import contextlib

        real_atomic = checkpoint.atomic_write

        @contextlib.contextmanager
        def atomic(path, *args, **kwargs):
            with real_atomic(path, *args, **kwargs) as fh:
                if Path(path).name == "last.pt":
                    saves["n"] += 1
                if Path(path).name != "last.pt" or saves["n"] < at:
                    yield fh
                    return

                class HalfThenDie:  # half of the bytes reach the temporary file, then SIGKILL
                    def write(self, data):
                        data = bytes(data)
                        fh.write(data[: len(data) // 2])
                        fh.flush()
                        os.fsync(fh.fileno())
                        die()

                yield HalfThenDie()

        checkpoint.atomic_write = atomic
    elif fault == "rename":
        real_replace = os.replace

        def replace(src, dst):
            real_replace(src, dst)
            if Path(dst).name == "last.prev.pt":
                saves["n"] += 1
                if saves["n"] >= at:
                    die()

        checkpoint.os.replace = replace
    elif fault in ("SIGTERM", "SIGUSR1"):  # the signal arrives during the at-th optimiser step
        from pipeline.engines.trainer import Trainer

        real_step = Trainer.train_step

        def step(self, batch):
            saves["n"] += 1
            if saves["n"] == at:
                os.kill(os.getpid(), getattr(signal, fault))
            return real_step(self, batch)

        Trainer.train_step = step
    elif fault is not None:
        raise ValueError(f"fault must be None, 'write', 'rename', 'SIGTERM' or 'SIGUSR1', got {fault!r}")
    sys.exit(main(argv))


def data_cfg(raw: dict) -> dict:
    """A resolved ``data`` section from a partial one (what ``load_config`` gives the readers)."""
    from pipeline.data.schema import data_schema

    return data_schema().validate(raw, "data")
