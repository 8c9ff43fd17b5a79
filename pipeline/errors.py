"""Errors that mean "the user's input is wrong", as opposed to a bug.

The CLI turns any :class:`MedsegError` into one line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class MedsegError(Exception):
    """Base class for problems with the user's files, settings or environment."""


class ConfigError(MedsegError, ValueError):
    """A config problem: where it is (source, line, key path) and what is wrong.

    The parts are attributes, so code that handles the error never slices its message:

    Attributes:
        detail: what is wrong (``"expected int, got str 'ten'"``).
        key: the dotted key path (``"train.epochs"``), or ``None``.
        source: the config file, ``"--set KEY=VALUE"``, or ``None``.
        line: the line of ``key`` in ``source`` (1-based), when known.

    Example:
        >>> str(ConfigError("expected int, got str 'ten'", key="train.epochs", source="a.yaml", line=3))
        "a.yaml:3: train.epochs: expected int, got str 'ten'"
    """

    def __init__(self, detail: str, *, key: str | None = None, source: str | None = None, line: int | None = None):
        super().__init__(detail)
        self.detail = detail
        self.key = key
        self.source = source
        self.line = line

    def located(self, *, source: str | None = None, line: int | None = None) -> ConfigError:
        """A copy of this error with its source (and line) set, unless it has one already."""
        if self.source is not None:
            return self
        return ConfigError(self.detail, key=self.key, source=source, line=line)

    def __str__(self) -> str:
        where = self.source or ""
        if where and self.line is not None:
            where += f":{self.line}"
        parts = [p for p in (where, self.key) if p]
        return ": ".join([*parts, self.detail])


class DataError(MedsegError, ValueError):
    """A problem with a data file or dataset layout: the message names the file(s)."""


def one_line(err: BaseException) -> str:
    """The message of a user error as one line.

    PyTorch's ``DataLoader`` re-raises an error from a worker process as the same type with the
    worker's whole traceback as its message (``Caught DataError in DataLoader worker process 0.
    Original Traceback ...``); the line that matters is the last one, the original message.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        kind, sep, message = last.partition(": ")
        text = message if sep and kind.rsplit(".", 1)[-1] == type(err).__name__ else last
    return " ".join(text.split())


def list_some(names: Iterable[object], first: int = 5) -> str:
    """``"a, b, c (+12 more)"``: the first few names and how many were left out, for error messages.

    Example:
        >>> list_some(["a.png", "b.png", "c.png"], first=2)
        'a.png, b.png (+1 more)'
    """
    names = [str(n) for n in names]
    head = ", ".join(names[:first])
    return head + (f" (+{len(names) - first} more)" if len(names) > first else "")


class DiskFullError(MedsegError, OSError):
    """The disk (or the file-size limit, ``ulimit -f``) stopped a write; nothing half-written is left.

    Example:
        >>> import errno
        >>> err = DiskFullError("/runs/x/last.pt", OSError(errno.ENOSPC, "No space left on device"), 0.5)
        >>> str(err).split(";")[0]
        '/runs/x/last.pt: No space left on device (0.5 MiB free there)'
    """

    def __init__(self, path: object, cause: OSError, free_mib: float | None) -> None:
        free = f" ({free_mib:.1f} MiB free there)" if free_mib is not None else ""
        super().__init__(
            f"{path}: {cause.strerror}{free}; free some space and run the same command again (training: with --resume)"
        )
