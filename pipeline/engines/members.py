"""What ``--checkpoint`` and ``--plan`` name: the checkpoints of an ensemble and its post-processing.

``--checkpoint`` takes checkpoint files and run folders, in any mix:

- a cross-validation run (``RUN/fold_0``, ``RUN/fold_1``, ...): every fold's ``checkpoints/best.pt``
  (``last.pt`` for a fold that never validated), and ``RUN/postprocessing.json`` when it is the only
  source;
- a single run folder: its ``checkpoints/best.pt`` (else ``last.pt``);
- a file: that checkpoint.

``--plan FILE`` is what ``medseg select`` writes: the members and the post-processing chosen for
them, so ``medseg infer --plan FILE`` runs the recommended ensemble as it was evaluated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import Config, load_config
from pipeline.engines.checkpoint import load_checkpoint
from pipeline.engines.postprocessing import POSTPROCESSING_JSON, check_postprocessing, load_postprocessing
from pipeline.errors import MedsegError

__all__ = [
    "FOLD_RE",
    "checkpoint_paths",
    "default_postprocessing",
    "describe",
    "fold_dirs",
    "inference_shard",
    "load_plan",
    "member_configs",
    "resolve_postprocessing",
    "run_checkpoint",
]

FOLD_RE = re.compile(r"^fold_(\d+)$")


def fold_dirs(run: str | os.PathLike) -> list[Path]:
    """``RUN/fold_<k>`` folders, by fold number."""
    run = Path(run)
    if not run.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := FOLD_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def run_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``checkpoints/best.pt`` of a run folder, else ``last.pt``, else None."""
    for name in ("best.pt", "last.pt"):
        path = Path(run_dir) / "checkpoints" / name
        if path.is_file():
            return path
    return None


def checkpoint_paths(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The checkpoint files ``sources`` name (see the module docstring), in order.

    Raises:
        MedsegError: a folder without checkpoints, a fold that has none yet, nothing given.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.is_dir():
            out.append(path)
            continue
        folds = fold_dirs(path)
        if folds:
            for fold in folds:
                ckpt = run_checkpoint(fold)
                if ckpt is None:
                    raise MedsegError(f"--checkpoint {path}: {fold.name} has no checkpoint yet; finish it (medseg cv)")
                out.append(ckpt)
            continue
        ckpt = run_checkpoint(path)
        if ckpt is None:
            raise MedsegError(f"--checkpoint {path}: a folder without fold_<k>/ or checkpoints/best.pt, last.pt")
        out.append(ckpt)
    if not out:
        raise MedsegError("--checkpoint: give at least one checkpoint or run folder")
    return out


def default_postprocessing(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> Path | None:
    """``RUN/postprocessing.json`` when ``sources`` is one cross-validation run folder that has one."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if len(sources) != 1:
        return None
    path = Path(sources[0]) / POSTPROCESSING_JSON
    return path if path.is_file() else None


def load_plan(path: str | os.PathLike) -> tuple[list[Path], dict[str, Any] | None]:
    """Members and post-processing of a ``medseg select`` recommendation (JSON).

    Member paths are taken relative to the plan file's folder when they are not absolute.

    Raises:
        MedsegError: unreadable, not a recommendation, or a member that is missing.
    """
    path = Path(path)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise MedsegError(f"--plan {path}: cannot read it ({err.strerror})") from None
    except ValueError as err:
        raise MedsegError(f"--plan {path}: not a JSON recommendation written by medseg select ({err})") from None
    members = plan.get("members") if isinstance(plan, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise MedsegError(f"--plan {path}: needs a non-empty list of 'members' (checkpoint paths)")
    paths = [p if p.is_absolute() else path.parent / p for p in map(Path, members)]
    if missing := [str(p) for p in paths if not p.is_file()]:
        raise MedsegError(f"--plan {path}: member checkpoint {missing[0]} does not exist")
    spec = plan.get("postprocessing")
    return paths, None if spec is None else check_postprocessing(spec, f"--plan {path}")


def member_configs(
    members: Sequence[Path], config_path: str | os.PathLike | None, overrides: Sequence[str]
) -> list[Config] | None:
    """Each member's config with ``-c`` / ``--set`` applied (``--set`` over each member's own
    config), or None when neither is given (every member uses its checkpoint's)."""
    if config_path is None and not overrides:
        return None
    return [
        load_config(config_path, overrides, base=None if config_path is not None else load_checkpoint(m)["config"])
        for m in members
    ]


def resolve_postprocessing(
    checkpoint: Any, postprocessing: str | os.PathLike | Mapping[str, Any] | None, enabled: bool = True
) -> dict[str, Any] | None:
    """The post-processing spec to apply: ``postprocessing`` (a spec or its file), else the
    ``postprocessing.json`` of a cross-validation run given as the only ``checkpoint``; None when
    ``enabled`` is off (``--no-postprocessing``) or there is none."""
    if not enabled:
        return None
    if isinstance(postprocessing, Mapping):
        return check_postprocessing(postprocessing, "postprocessing")
    if postprocessing is not None:
        return load_postprocessing(postprocessing)
    found = default_postprocessing(checkpoint if isinstance(checkpoint, (str, os.PathLike, list, tuple)) else [])
    return load_postprocessing(found) if found is not None else None


def inference_shard(part: int | None, parts: int | None) -> tuple[int, int]:
    """``(part, parts)`` of a sharded inference: as given (``--part k --parts n``), else
    ``(RANK, WORLD_SIZE)`` under torchrun, else ``(0, 1)``.

    Raises:
        MedsegError: only one of the two given, or ``part`` outside ``[0, parts)``.
    """
    if (part is None) != (parts is None):
        raise MedsegError("--part and --parts go together (e.g. --part 0 --parts 4)")
    if part is None:
        part, parts = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if parts < 1 or not 0 <= part < parts:
        raise MedsegError(f"--part {part} --parts {parts}: need 0 <= part < parts")
    return part, parts


def describe(
    checkpoint: Any, postprocessing: str | os.PathLike | Mapping[str, Any] | None = None, enabled: bool = True
) -> str:
    """One line for the log: how many checkpoints, and which post-processing steps will run."""
    paths = checkpoint_paths(checkpoint)
    spec = resolve_postprocessing(checkpoint, postprocessing, enabled)
    who = f"checkpoint {paths[0]}" if len(paths) == 1 else f"an ensemble of {len(paths)} checkpoints"
    steps = ", ".join(f"{s['op']} (class {s['class']})" for s in (spec or {}).get("steps", [])) or "none"
    return f"segmenting with {who}; post-processing: {steps}"
