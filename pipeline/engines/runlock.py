"""An exclusive lock on a run folder, so two runs never write into one folder.

A POSIX record lock (``fcntl.lockf``) on ``<run>/.medseg.lock``: the kernel drops it when the
holder exits, however it exits (``kill -9`` and power cuts included), so a lock left by a killed
run never blocks ``--resume``; it works on local disks and on NFS with a lock manager. The file
holds the holder's PID, host and start time for the message the second run prints.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from pipeline.errors import MedsegError

__all__ = ["RunLock", "LOCK_NAME"]

LOCK_NAME = ".medseg.lock"


class RunLock:
    """Hold the run folder ``run_dir`` exclusively (created if missing).

    Raises:
        MedsegError: another process holds it (naming its PID and host), or the folder cannot be
            written.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "run"
        >>> lock = RunLock(folder)
        >>> (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        True
        >>> lock.release()
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise MedsegError(f"{self.path.parent}: cannot write the run folder ({err.strerror})") from None
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder()
            os.close(self._fd)
            raise MedsegError(
                f"{self.path.parent} is in use by another run ({holder}); wait for it to finish, or train into "
                "another folder with --output"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        os.fsync(self._fd)

    def _holder(self) -> str:
        try:
            pid, host, *started = os.pread(self._fd, 200, 0).decode(errors="replace").split()
        except ValueError:
            return "a process that has not written its PID yet"
        return f"PID {pid} on {host}, started {' '.join(started)}"

    def release(self, remove: bool = False) -> None:
        """Let the folder go (``remove``: delete the lock file too, for a run folder being removed)."""
        if self._fd < 0:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the lock
        self._fd = -1
