"""Process-wide runtime settings applied once at start-up (:func:`tune_allocator`) and facts about
the machine read once (:func:`cpu_has_bf16`).

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap
threshold (dynamic, at most 32 MiB on 64-bit) with a fresh ``mmap`` and returns it with
``munmap`` on free, so the large activations of a training step are mapped, zero-filled by the
kernel page by page and unmapped again on every step. Measured on this project's 2-core CPU
machine (``medseg train -c configs/cell_dsb.yaml``, 2 minutes): 107 s of 261 s CPU time in the
kernel and 62 M minor page faults. Telling glibc to keep the freed blocks on its heap removes
that: the same run spent 10 s in the kernel with 1.7 M faults and made 1.5x the steps.

``mallopt`` sets the same knobs as the ``MALLOC_*_`` environment variables, but from inside the
process, so ``medseg`` gets them without the user setting anything, under ``torchrun`` (which
starts ``python -m pipeline.cli``) too, and DataLoader workers inherit them (fork copies the
allocator's state). ``bench/throughput.py --allocator on|off`` measures them in training.

Alternatives: jemalloc or tcmalloc would need ``LD_PRELOAD`` before the process starts (a wrapper
script, which torchrun and ``python -m`` bypass); transparent huge pages for torch's buffers
(``THP_MEM_ALLOC_ENABLE``) cut the fault count but the kernel still zero-fills every block.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import time
from collections.abc import Iterator

__all__ = [
    "tune_allocator",
    "TRIM_THRESHOLD",
    "cpu_has_bf16",
    "cpu_flags",
    "BF16_FLAGS",
    "command_clock",
    "command_start",
    "process_age",
]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

TRIM_THRESHOLD = 2**31 - 1
"""Free memory glibc may keep at the top of its heap before it returns it to the kernel (bytes):
the largest value ``mallopt`` takes (an ``int``).

It bounds the fix's memory growth: the heap holds at most this much free memory at its top
beyond what is live, plus its fragmentation. Measured on ``cell_dsb.yaml``'s network and batch
(DenseUNet 32..512, 8 x 3 x 256², AdamW; ``bench/throughput.py``, 2 threads), per step in the
steady state:

=====================  ============  ==========  ==============  ========
glibc settings         minor faults  system CPU  user CPU        peak RSS
=====================  ============  ==========  ==============  ========
defaults               3.8 M         8-10 s      10-13 s         4.7 GB
trim 1 GiB             0.29 M        0.6 s       9.7 s           6.3 GB
trim 2 GiB (chosen)    ~0            0.02 s      10-11 s         6.7 GB
=====================  ============  ==========  ==============  ========

A 1 GiB threshold still returns (and re-faults) the ~1.2 GiB that backward frees at the top of
the heap on every step. The first 3-4 steps fault while the heap grows (glibc 2.36's
``posix_memalign`` asks for 96 bytes more than a freed block of the same size until its split-off
pieces coalesce)."""

_applied: bool | None = None


def tune_allocator(trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Keep large freed blocks on glibc's heap instead of unmapping them (Linux/glibc only).

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, whose pages stay mapped and
    faulted in once) and ``M_TRIM_THRESHOLD = trim_threshold`` (the heap's free top is returned
    to the kernel only beyond that). Idempotent; a no-op returning ``False`` where the C library
    is not glibc (macOS, Windows, musl) or when ``MEDSEG_TUNE_ALLOCATOR=0`` is set (for a machine
    where the extra resident memory, up to ``trim_threshold`` plus fragmentation, matters more
    than the step time).

    Args:
        trim_threshold: bytes of free heap top kept before trimming (the memory-growth bound).

    Returns:
        Whether the settings were applied.

    Example:
        >>> tune_allocator() in (True, False)
        True
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("MEDSEG_TUNE_ALLOCATOR", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        getattr(libc, "gnu_get_libc_version")  # noqa: B009 (glibc only: musl's mallopt ignores these knobs)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim = max(0, min(int(trim_threshold), 2**31 - 1))  # mallopt takes an int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    return _applied


CPUINFO = "/proc/cpuinfo"
"""Where :func:`cpu_flags` reads the CPU's feature flags (Linux)."""
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of native bf16 arithmetic: AVX-512-BF16 (Cooper Lake, Sapphire Rapids,
AMD Zen 4 and later) and AMX-BF16 (Sapphire Rapids and later)."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in :data:`CPUINFO`; empty where it cannot be read
    (macOS, Windows, a container without ``/proc``). Read once per process."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 / ARM
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (one of :data:`BF16_FLAGS`), so that bf16 autocast
    makes training faster rather than slower.

    Without these instructions oneDNN still runs bf16 on any AVX-512 CPU, emulated (converted to
    fp32 and back), which saves no arithmetic and adds the conversions; torch's own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) says yes there too, so it is not used.
    ``train.amp: auto`` turns bf16 on from this (:func:`pipeline.engines.inferer.autocast_dtype`).

    Example:
        >>> cpu_has_bf16() in (True, False)
        True
    """
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


_command_start: float | None = None


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time in ticks
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def command_clock(from_process_start: bool = False) -> Iterator[None]:
    """While a ``medseg`` command runs (:func:`pipeline.cli.main`): :func:`command_start` is the
    ``time.perf_counter()`` at its start (``from_process_start``: at the process's start, the
    imports included), so ``train.time_budget`` counts the start-up (imports, reading and caching
    the data, building the network) as the user's wall clock does."""
    global _command_start
    now = time.perf_counter()
    age = process_age() if from_process_start else None
    outer, _command_start = _command_start, now - (age or 0.0)
    try:
        yield
    finally:
        _command_start = outer


def command_start() -> float | None:
    """The start of the running ``medseg`` command (:func:`command_clock`), or None outside one
    (a Trainer driven from Python counts from its ``fit``)."""
    return _command_start
