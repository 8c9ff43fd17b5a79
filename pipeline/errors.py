"""Errors that mean "the user's input is wrong", as opposed to a bug.

The CLI turns any :class:`MedsegError` into one line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class MedsegError(Exception):
    """Base class for problems with the user's files, settings or environment."""


class ConfigError(MedsegError, ValueError):
    """A config problem: the message names the source, the key path and what is wrong."""


class DataError(MedsegError, ValueError):
    """A problem with a data file or dataset layout: the message names the file(s)."""
