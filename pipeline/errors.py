"""Errors that mean "the user's input is wrong", as opposed to a bug.

The CLI turns any :class:`MedsegError` into one line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class MedsegError(Exception):
    """Base class for problems with the user's files, settings or environment."""


class ConfigError(MedsegError, ValueError):
    """A config problem: the message names the source, the key path and what is wrong."""


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
