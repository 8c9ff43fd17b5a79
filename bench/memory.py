"""Peak resident memory of ``medseg infer`` on a 512³ float32 volume on the CPU (target: 6 GiB).

What it does, in a work folder (default: a temporary one):

1. writes ``volume.nii``: 512³ float32 (512 MiB; uncompressed so writing it takes a second), a
   smooth CT-like pattern plus noise, identity affine;
2. writes ``model.pt``: an untrained 3D UNet (channels 4/8/16, 2 classes) saved as a valid
   medseg checkpoint by :func:`pipeline.engines.checkpoint.save_checkpoint`, with inference
   settings roi 96³, overlap 0.25, sw_batch_size 4, Gaussian blending;
3. runs ``python -m pipeline.cli infer`` in a child process and reads the child's peak resident
   set (``ru_maxrss`` from ``os.wait4``, which is that child's own high-water mark);
4. runs MONAI's stock path on the same file in another child, measured the same way, as the
   baseline: ``LoadImage`` → ``NormalizeIntensity`` → ``monai.inferers.sliding_window_inference``
   (same network, roi, overlap, batch, Gaussian) → softmax → argmax → ``SaveImage``.

It prints both peaks, their ratio and the wall times. The weights are untrained: memory and time
do not depend on what the network has learnt.

Usage:
    PYTHONPATH=. python bench/memory.py                    # 512³ on the CPU, 2 threads, + baseline
    PYTHONPATH=. python bench/memory.py --size 256 --no-baseline
    PYTHONPATH=. python bench/memory.py --device cuda --cuda-fraction 0.01   # GPU windows, output
                                                            # too big for the GPU: CPU stitching
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_GIB = 6.0
ROI, OVERLAP, SW_BATCH = 96, 0.25, 4

_BASELINE = """
import sys, torch
from monai.inferers import sliding_window_inference
from monai.transforms import LoadImage, NormalizeIntensity, SaveImage
from pipeline.engines.checkpoint import load_checkpoint
from pipeline.engines import factory
volume, checkpoint, out, roi, sw_batch, overlap = sys.argv[1:7]
ckpt = load_checkpoint(checkpoint)
net = factory.build_network(ckpt["config"]); net.load_state_dict(ckpt["network"]); net.eval()
image = LoadImage(image_only=True, ensure_channel_first=True)(volume)
image = NormalizeIntensity(channel_wise=True)(image)
with torch.no_grad():
    logits = sliding_window_inference(image[None], (int(roi),) * 3, int(sw_batch), net, overlap=float(overlap),
                                      mode="gaussian")
labels = torch.softmax(logits, 1).argmax(1).to(torch.uint8)
SaveImage(output_dir=out, output_postfix="seg", separate_folder=False, output_dtype="uint8")(labels,
                                                                                               meta_data=image.meta)
"""


def write_volume(path: Path, size: int) -> Path:
    """A smooth pattern plus noise, float32, ``size``³, identity affine (uncompressed NIfTI)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    axis = np.linspace(0, 6 * np.pi, size, dtype=np.float32)
    volume = rng.standard_normal((size, size, size), dtype=np.float32)
    volume *= 20
    volume += 100 * np.sin(axis)[:, None, None]
    volume += 100 * np.cos(axis)[None, :, None]
    volume += 50 * np.sin(2 * axis)[None, None, :]
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    return path


def write_checkpoint(path: Path) -> Path:
    """An untrained small 3D UNet as a valid medseg checkpoint (resolved config + weights)."""
    from pipeline.config import load_config
    from pipeline.engines import factory
    from pipeline.engines.checkpoint import save_checkpoint

    config = load_config(
        None,
        base={
            "network": {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16]},
            "transforms": {"patch_size": [ROI] * 3, "intensity": {"mode": "zscore"}},
            "infer": {"overlap": OVERLAP, "sw_batch_size": SW_BATCH, "mode": "gaussian", "device": "cpu"},
        },
    )
    network = factory.build_network(config)
    save_checkpoint({"config": config, "network": network.state_dict()}, path)
    return path


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run ``cmd``; return (peak resident GiB of that child, wall seconds, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 2**20, time.perf_counter() - start, proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="volume edge in voxels (default 512)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the children (default 2)")
    parser.add_argument("--device", default="cpu", help="medseg infer --device (default cpu)")
    parser.add_argument(
        "--cuda-fraction", type=float, help="cap the child's CUDA memory at this fraction (forces CPU stitching)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip MONAI's stock path")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args(argv)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="medseg-memory-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        volume = work / "volume.nii"
        if not volume.exists() or volume.stat().st_size < args.size**3 * 4:
            write_volume(volume, args.size)
        checkpoint = write_checkpoint(work / "model.pt")
        gib_in = args.size**3 * 4 / 2**30
        print(f"input {args.size}³ float32 ({gib_in:.2f} GiB), UNet 4/8/16, roi {ROI}³, overlap {OVERLAP}, "
              f"sw_batch_size {SW_BATCH}, {args.threads} threads, device {args.device}")  # fmt: skip

        infer = ["infer", "--checkpoint", str(checkpoint), "--input", str(volume), "--output", str(work / "ours"),
                 "--device", args.device, "--overwrite"]  # fmt: skip
        if args.cuda_fraction is not None:
            code = (
                f"import sys, torch; torch.cuda.set_per_process_memory_fraction({args.cuda_fraction!r}); "
                "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
            )
            cmd = [sys.executable, "-c", code, *infer]
        else:
            cmd = [sys.executable, "-m", "pipeline.cli", *infer]
        ours, ours_s, rc = peak_rss(cmd, env)
        if rc != 0:
            print(f"medseg infer failed with exit status {rc}")
            return 1
        verdict = "within" if ours <= TARGET_GIB else "OVER"
        print(f"medseg infer : peak RSS {ours:6.2f} GiB, {ours_s:6.1f} s  ({verdict} the {TARGET_GIB:.0f} GiB target)")
        if not args.no_baseline:
            cmd = [sys.executable, "-c", _BASELINE, str(volume), str(checkpoint), str(work / "monai")]
            cmd += [str(ROI), str(SW_BATCH), str(OVERLAP)]
            base, base_s, rc = peak_rss(cmd, env)
            if rc != 0:
                print(f"MONAI baseline failed with exit status {rc}")
                return 1
            print(f"MONAI stock  : peak RSS {base:6.2f} GiB, {base_s:6.1f} s")
            print(f"ratio ours / MONAI: memory {ours / base:.2f}, time {ours_s / base_s:.2f}")
    return 0 if ours <= TARGET_GIB else 1


if __name__ == "__main__":
    sys.exit(main())
