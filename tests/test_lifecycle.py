"""The run lifecycle under what clusters and bad files do to it: every fault ends as one line and
exit 2 in a separate process (so a crash at interpreter exit would show as 134, not pass)."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
from _synthetic import PYTHON, ROOT, subprocess_env, tiny_config, write_config, write_folders


def _huge_header_nifti(path) -> None:
    """A NIfTI-1 header claiming 2000 x 2000 x 1000 float32 (16 GB) in a 4 KB file."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 1000))
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + struct.pack("<4x") + bytes(4096 - 352)
    path.write_bytes(raw)


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "workers"), [("zero-byte png", 0), ("zero-byte png", 2), ("huge nifti header", 0)])
def test_bad_file_with_the_memory_cache_exits_2(tmp_path, fault, workers):
    dims = 2 if fault == "zero-byte png" else 3
    data = write_folders(tmp_path / "data", n=6, size=40 if dims == 2 else 16, dims=dims)
    if fault == "zero-byte png":
        bad = data / "images" / "case3.png"
        bad.write_bytes(b"")
    else:
        (data / "images" / "case3.nii.gz").unlink()
        _huge_header_nifti(data / "images" / "case3.nii")
    cfg = tiny_config(data, tmp_path / "run", dims=dims)
    cfg["train"].update(cache="memory", num_workers=workers)
    config = write_config(tmp_path / "cfg.yaml", cfg)
    done = subprocess.run(
        [PYTHON, "-m", "pipeline.cli", "train", "-c", config],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, lines[-5:])
    assert "terminate called" not in done.stderr
    assert lines and "case3" in lines[-1] and lines[-1].startswith("medseg: error:"), lines[-3:]
    assert not (tmp_path / "run").exists()
