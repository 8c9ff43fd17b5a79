"""pipeline.runtime: the allocator setting, measured in subprocesses (it is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import runtime

ROOT = Path(__file__).resolve().parents[1]

_LOOP = """
import json, resource, sys, torch
if sys.argv[1] == "tuned":
    from pipeline.runtime import tune_allocator
    assert tune_allocator()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
# warm-up: 64 MiB blocks, every page touched. Tuned, glibc 2.36 still extends its heap for the first
# ~8 blocks (posix_memalign asks for 96 bytes more than the block just freed until the small pieces it
# split off leave the tcache and coalesce); from then on every block reuses faulted-in pages.
for _ in range(12):
    x = torch.ones(16 * 2**20)
    del x
before = faults()
for _ in range(20):
    x = torch.ones(16 * 2**20)
    del x
print(json.dumps(faults() - before))
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True, cwd=ROOT, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


@pytest.mark.skipif(not _glibc(), reason="mallopt's knobs are glibc's")
def test_tuned_allocator_takes_a_tenth_of_the_faults():
    default, tuned = _faults("default"), _faults("tuned")
    pages = 20 * 64 * 2**20 // 4096
    assert default >= pages // 2, f"the untuned loop should re-fault its 64 MiB blocks: {default} faults"
    assert tuned * 10 <= default, f"tuned {tuned} faults vs default {default}"


def test_tune_allocator_is_idempotent_and_says_whether_it_applied():
    code = "from pipeline.runtime import tune_allocator as t; print(t(), t())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    first, second = out.stdout.split()
    assert first == second == str(_glibc())


def test_tune_allocator_can_be_turned_off_from_the_environment():
    code = "from pipeline.runtime import tune_allocator as t; print(t())"
    env = {**os.environ, "MEDSEG_TUNE_ALLOCATOR": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == "False"


def test_medseg_main_tunes_the_allocator(monkeypatch):
    from pipeline import cli

    calls = []
    monkeypatch.setattr(runtime, "tune_allocator", lambda: calls.append(1) or True)
    assert cli.main([]) == cli.EXIT_USER_ERROR  # help printed, nothing run
    assert calls == [1]


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
bogomips\t: 4800.00

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
"""


@pytest.fixture
def fake_cpuinfo(tmp_path, monkeypatch):
    """Point :data:`pipeline.runtime.CPUINFO` at a file written by the test; the cache is cleared
    before and after, so the real flags come back for the other tests."""

    def write(extra: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(_CPUINFO.format(extra=extra))
        monkeypatch.setattr(runtime, "CPUINFO", str(path))
        runtime.cpu_flags.cache_clear()

    yield write
    runtime.cpu_flags.cache_clear()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("", False), ("avx512_bf16", True), ("amx_tile amx_bf16", True), ("avx512_fp16 avx512vnni", False)],
)
def test_cpu_has_bf16_reads_the_cpuinfo_flags(fake_cpuinfo, extra, expected):
    fake_cpuinfo(extra)
    assert runtime.cpu_has_bf16() is expected
    assert "avx512f" in runtime.cpu_flags()


def test_cpu_without_cpuinfo_has_no_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "missing"))
    runtime.cpu_flags.cache_clear()
    try:
        assert runtime.cpu_flags() == frozenset() and not runtime.cpu_has_bf16()
    finally:
        runtime.cpu_flags.cache_clear()
