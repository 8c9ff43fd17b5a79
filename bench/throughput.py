"""Training throughput on the CPU: ``medseg train``'s step against a bare PyTorch loop, per config.

For each shipped config, on small synthetic data of the config's layout (``medseg synth``), one
subprocess per measurement (so process-wide allocator settings and ``getrusage`` counters belong
to that measurement alone):

- **medseg**: the Trainer, loaders and cached dataset exactly as ``medseg train`` builds them
  (:func:`pipeline.engines.run._build_trainer`), ``Trainer.train_step`` on the loader's batches,
  whole epochs (so loader workers have exited and their CPU time is counted);
- **bare**: the same network, loss, optimiser and batch shapes on random tensors made once: the
  ceiling, no data loading.

The two run in ``--rounds`` interleaved blocks (medseg, bare, medseg, ...), each of whole epochs
and ``--steps / --rounds`` steps or more, so that a change in the machine's load hits both; the
ratio columns are the medians of the blocks' ratios, the other columns are over all blocks.

Columns: steps/s, crop pixels (voxels) per second, system-time share of CPU time, minor page
faults per step, peak RSS (process + its loader workers), and medseg / bare (steps/s, and CPU
time per step: the steadier figure on a shared machine). ``--allocator off`` measures without
:func:`pipeline.runtime.tune_allocator` (glibc's defaults, what ``medseg`` ran with before);
``--amp auto|bf16|off`` sets ``train.amp`` (``auto``: bf16 on a CPU with native bf16).
``--phases`` runs the Trainer's own ``fit`` and splits its wall and CPU time per step into data,
host-to-device, forward, loss, backward, optimiser, per-step logging, epoch end (checkpoints, log,
curves) and validation, then the random transforms one by one, then torch.profiler's top ops.
``plan_vessel2d`` and ``plan_lung`` are ``medseg plan`` outputs for the synthetic data (planned
once, kept beside it). Patch and batch are shrunk only where ``SHRINK`` says (full-size 3D
patches take minutes a step on two cores); the table says what ran.

Usage:
    PYTHONPATH=. python bench/throughput.py                          # every config, ~15 min on 2 cores
    PYTHONPATH=. python bench/throughput.py --configs cell_dsb --allocator off
    PYTHONPATH=. python bench/throughput.py --configs demo_vessel2d plan_lung --phases --threads 1
    PYTHONPATH=. python bench/throughput.py --configs demo_lung --workers 0 1 2 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (
    "cell_dsb",
    "demo_cell",
    "demo_vessel2d",
    "vessel_drive",
    "demo_lung",
    "lung_msd",
    "vessel_hepatic",
    "plan_vessel2d",
    "plan_lung",
)
PLANNED = {"plan_vessel2d": 5, "plan_lung": 5}
"""``medseg plan --budget-minutes B`` output on the synthetic data of the same name's SYNTH entry."""
SYNTH = {  # config -> (synth kind, size, cases[, make_dataset options])
    "cell_dsb": ("cell", 256, 12),  # DSB2018 images are 256² to 1040²
    "demo_cell": ("cell", 128, 12),
    "demo_vessel2d": ("vessel2d", 192, 12),
    "vessel_drive": ("vessel2d", 256, 8),
    "demo_lung": ("lung", (96, 96, 48), 6),
    "lung_msd": ("lung", (96, 96, 48), 6, {"nodules": False}),  # Task06 labels one class
    "vessel_hepatic": ("vessel3d", (96, 96, 48), 6),
    "plan_vessel2d": ("vessel2d", 192, 12),
    "plan_lung": ("lung", (96, 96, 48), 6),
}
SHRINK = {  # overrides that make a step take seconds, not minutes, on two cores
    "lung_msd": ["transforms.patch_size=[64,64,48]", "transforms.spacing=null", "train.batch_size=1"],
    "vessel_hepatic": ["transforms.patch_size=[96,96,48]", "transforms.spacing=null", "train.batch_size=1"],
}


def _synth(config: str, cache: Path) -> Path:
    kind, size, n, *options = SYNTH[config]
    options = options[0] if options else {}
    key = f"{kind}_{size if isinstance(size, int) else 'x'.join(map(str, size))}_{n}{'_' * bool(options)}"
    key += "_".join(f"{k}{v}" for k, v in options.items())
    root = cache / key
    if not root.exists():
        from pipeline.data.synth import make_dataset

        make_dataset(kind, root, n, 0, size=size, **options)
    return root


def _config_path(config_name: str, data: Path) -> Path:
    """A shipped config, or for ``plan_*`` the plan of ``data`` (made once, kept beside the data)."""
    if config_name not in PLANNED:
        return ROOT / "configs" / f"{config_name}.yaml"
    budget = PLANNED[config_name]
    path = data.parent / f"{data.name}_plan{budget}.yaml"
    if not path.exists():
        cmd = [sys.executable, "-m", "pipeline.cli", "plan", str(data), "--budget-minutes", str(budget)]
        proc = subprocess.run([*cmd, "--output", str(path)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(f"medseg plan {data} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return path


def _usage() -> dict[str, float]:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "user": s.ru_utime + c.ru_utime,
        "sys": s.ru_stime + c.ru_stime,
        "minflt": s.ru_minflt + c.ru_minflt,
        "rss_gb": (s.ru_maxrss + c.ru_maxrss) / 2**20,
        "t": time.perf_counter(),
    }


def _delta(a: dict, b: dict, steps: int) -> dict[str, float]:
    cpu = (b["user"] - a["user"]) + (b["sys"] - a["sys"])
    wall = b["t"] - a["t"]
    return {
        "steps": steps,
        "steps_s": steps / wall,
        "sys_frac": (b["sys"] - a["sys"]) / max(cpu, 1e-9),
        "cpu_per_step": cpu / steps,
        "faults_step": (b["minflt"] - a["minflt"]) / steps,
        "rss_gb": b["rss_gb"],
    }


def _build(config_name: str, data: Path, out: Path, args: argparse.Namespace):
    from pipeline.config import load_config
    from pipeline.engines import factory
    from pipeline.engines.run import _build_trainer, distributed_context

    overrides = [
        f"data.root={data}",
        f"train.output={out}",
        f"train.threads={args.threads}",
        f"train.num_workers={args.workers}",
        "train.tensorboard=false",
        f"train.amp='{args.amp}'",
        *SHRINK.get(config_name, []),
        *args.set,
    ]
    config = load_config(_config_path(config_name, data), overrides)
    factory.set_threads(args.threads)
    with distributed_context("cpu") as dist:
        trainer = _build_trainer(config, out, dist, factory.select_device("cpu"), progress=False)
    if getattr(args, "loader", "plain") == "thread":  # the next batch made in a background thread
        from monai.data import ThreadDataLoader

        plain = trainer.train_loader
        trainer.train_loader = ThreadDataLoader(
            plain.dataset,
            buffer_size=1,
            batch_size=plain.batch_size,
            shuffle=True,
            num_workers=plain.num_workers,
            generator=plain.generator,
            drop_last=plain.drop_last,
        )
    return config, trainer


def _epochs(trainer, first: int):
    epoch = first
    while True:
        trainer.on_epoch_start(epoch)
        yield from trainer.train_loader
        epoch += 1


def _bare_batch(batch: dict, num_classes: int) -> dict:
    import torch

    out = {}
    for k, v in batch.items():
        if not isinstance(v, torch.Tensor):
            continue
        v = v.as_subclass(torch.Tensor)
        out[k] = torch.randint(0, num_classes, v.shape).float() if k == "label" else torch.randn(v.shape)
    return out


def measure(config_name: str, args: argparse.Namespace) -> dict:
    """One config's medseg and bare figures (runs in its own process)."""
    import torch

    if args.allocator == "on":
        from pipeline.runtime import tune_allocator

        tune_allocator(**({"trim_threshold": args.trim} if args.trim is not None else {}))
    warnings.filterwarnings("ignore")
    data = _synth(config_name, Path(args.data))
    with tempfile.TemporaryDirectory() as tmp:
        config, trainer = _build(config_name, data, Path(tmp) / "run", args)
        trainer.network.train()
        batches = _epochs(trainer, 0)
        per_epoch = len(trainer.train_loader)
        first = next(batches)
        for _ in range(per_epoch * args.warmup_epochs - 1):  # whole epochs: workers start and exit
            trainer.train_step(next(batches))
        rounds = max(1, args.rounds)
        epochs = max(1, -(-args.steps // (per_epoch * rounds)))  # per round
        bare_step = _bare(trainer, _bare_batch(first, config.num_classes))
        ours_parts, bare_parts = [], []
        for _ in range(rounds):  # interleaved: the machine's drift hits both alike
            a = _usage()
            for _ in range(epochs * per_epoch):
                trainer.train_step(next(batches))
            # the next epoch's iterator is not started: the last one's workers have exited and been reaped
            ours_parts.append(_delta(a, _usage(), epochs * per_epoch))
            a = _usage()
            for _ in range(epochs * per_epoch):
                bare_step()
            bare_parts.append(_delta(a, _usage(), epochs * per_epoch))
        ours = _merge(ours_parts)
        ours["bare"] = _merge(bare_parts)
        pairs = list(zip(ours_parts, bare_parts, strict=True))
        ratios = [(o["steps_s"] / b["steps_s"], b["cpu_per_step"] / o["cpu_per_step"]) for o, b in pairs]
        ours["ratio_steps"] = statistics.median(r for r, _ in ratios)
        ours["ratio_cpu"] = statistics.median(c for _, c in ratios)
        ours["rounds"] = rounds
    crop = tuple(first["image"].shape)
    ours.update(
        config=config_name,
        dims=config.spatial_dims,
        crop="x".join(map(str, crop)),
        px_step=int(torch.tensor(crop[2:]).prod()) * crop[0],
        threads=torch.get_num_threads(),
        workers=trainer.train_loader.num_workers,
        allocator=args.allocator,
    )
    return ours


def _bare(trainer, batch: dict):
    """One step of the same network, loss and optimiser on fixed random tensors: zero_grad,
    forward, loss, backward, clip, step (what ``Trainer.train_step`` does, without a loader);
    run once here (first-step overheads)."""
    import torch

    from pipeline.engines.inferer import autocast

    net, loss_fn, opt = trainer.network, trainer.loss, trainer.optimizer
    extras = {k: batch[k] for k in getattr(loss_fn, "extra_inputs", ()) if k in batch}

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(trainer.device, trainer.amp_dtype):
            pred = net(batch["image"])
        pred = [p.float() for p in pred] if isinstance(pred, (list, tuple)) else pred.float()
        loss = loss_fn(pred, batch["label"], **extras)
        loss.backward()
        if trainer.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), trainer.grad_clip)
        opt.step()

    step()
    return step


def _merge(parts: list[dict]) -> dict[str, float]:
    """Blocks of :func:`_delta` as one: rates over the summed steps and time, the peak RSS."""
    steps = sum(p["steps"] for p in parts)
    wall = sum(p["steps"] / p["steps_s"] for p in parts)
    cpu = sum(p["cpu_per_step"] * p["steps"] for p in parts)
    sys_cpu = sum(p["sys_frac"] * p["cpu_per_step"] * p["steps"] for p in parts)
    return {
        "steps": steps,
        "steps_s": steps / wall,
        "sys_frac": sys_cpu / max(cpu, 1e-9),
        "cpu_per_step": cpu / steps,
        "faults_step": sum(p["faults_step"] * p["steps"] for p in parts) / steps,
        "rss_gb": max(p["rss_gb"] for p in parts),
    }


def _timed(times: dict[str, list[float]], name: str, fn):
    """``fn`` with its wall time and this thread's CPU time added to ``times[name]`` on every call.

    The thread's CPU time is what the phase cost on a shared machine (other jobs' load inflates
    wall time only); with one torch thread and no loader workers it is the whole cost.
    """

    def call(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            times[name][0] += time.perf_counter() - wall
            times[name][1] += time.thread_time() - cpu

    return call


class _Delegate:
    """Stands in for ``inner`` (attributes pass through); subclasses time one use of it."""

    def __init__(self, inner, times: dict[str, float]) -> None:
        self.inner, self.times = inner, times

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class _TimedLoader(_Delegate):
    """The train loader, each ``next`` timed as ``data`` (random transforms, extra targets, collate)."""

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        it = iter(self.inner)
        step = _timed(self.times, "data", lambda: next(it, None))
        while (batch := step()) is not None:
            yield batch


class _TimedLoss(_Delegate):
    def __call__(self, *args, **kwargs):
        return _timed(self.times, "loss", self.inner)(*args, **kwargs)


PHASES = (
    ("data", "loader next: random transforms, extra targets (distance maps), collate"),
    ("h2d", "batch to the device (Trainer._move)"),
    ("forward", "network forward (autocast)"),
    ("loss", "loss on the prediction and the extra targets"),
    ("backward", "zero_grad, backward, gradient clipping (train_step minus the rest)"),
    ("optimizer", "optimizer.step"),
    ("logging", "per-step loop work: progress bar, loss readback, budget check (fit minus the rest)"),
    ("epoch_end", "per epoch: scheduler, checkpoints, log.csv, curves (amortised per step)"),
    ("validation", "sliding-window validation (amortised per step)"),
)


def phases(config_name: str, args: argparse.Namespace) -> None:
    """Where the wall time of ``Trainer.fit`` goes per step, the random transforms one by one,
    and torch.profiler's top ops of two steps.

    The Trainer's own ``fit`` runs (one warm-up epoch, then whole epochs of at least
    ``--steps`` steps, validation at the config's ``val_every``), its parts timed by wrapping
    them on the instance (loader, ``_move``, forward, loss, ``optimizer.step``, ``train_step``,
    ``validate``, ``on_epoch_end``); nothing of the step is re-implemented here.
    """
    import contextlib
    import io

    import torch
    from monai.transforms import apply_transform

    from transforms.chains import without_metadata

    if args.allocator == "on":
        from pipeline.runtime import tune_allocator

        tune_allocator()
    warnings.filterwarnings("ignore")
    data = _synth(config_name, Path(args.data))
    with tempfile.TemporaryDirectory() as tmp:
        config, trainer = _build(config_name, data, Path(tmp) / "run", args)
        per_epoch = trainer._steps_per_epoch()  # train.iterations_per_epoch, else one pass
        times = {n: [0.0, 0.0] for n in [*(n for n, _ in PHASES), "step", "fit", "train_end"]}
        trainer.train_loader = _TimedLoader(trainer.train_loader, times)
        trainer._move = _timed(times, "h2d", trainer._move)
        trainer._forward = _timed(times, "forward", trainer._forward)
        trainer.loss = _TimedLoss(trainer.loss, times)
        trainer.optimizer.step = _timed(times, "optimizer", trainer.optimizer.step)
        trainer.train_step = _timed(times, "step", trainer.train_step)
        trainer.validate = _timed(times, "validation", trainer.validate)
        trainer.on_epoch_end = _timed(times, "epoch_end", trainer.on_epoch_end)
        trainer.on_train_end = _timed(times, "train_end", trainer.on_train_end)  # once per run: left out
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            trainer.epochs = 1
            trainer.fit()  # warm-up: caches, allocator growth, first-step overheads
            for v in times.values():
                v[:] = [0.0, 0.0]
            epochs = max(1, -(-args.steps // per_epoch))
            trainer.epochs = 1 + epochs
            a = _usage()
            _timed(times, "fit", trainer.fit)()
            use = _delta(a, _usage(), epochs * per_epoch)
        steps = epochs * per_epoch
        wall = steps / use["steps_s"]
        for i in (0, 1):
            times["backward"][i] = times["step"][i] - sum(times[n][i] for n in ("h2d", "forward", "loss", "optimizer"))
            times["logging"][i] = times["fit"][i] - times["step"][i]
            times["logging"][i] -= sum(times[n][i] for n in ("data", "epoch_end", "validation", "train_end"))
        cpu = times["fit"][1] - times["train_end"][1]
        wall -= times["train_end"][0]
        crop = config["train"]["batch_size"] * config["transforms"]["num_samples"]
        print(
            f"{config_name} ({config.spatial_dims}D): batch {crop} crops of {config.patch_size}, "
            f"{torch.get_num_threads()} thread(s), {trainer.train_loader.num_workers} worker(s), "
            f"amp {trainer.amp_dtype}; {epochs} epochs of {per_epoch} steps: {wall / steps:.3f} s/step wall, "
            f"{use['cpu_per_step'] - times['train_end'][1] / steps:.3f} s/step CPU, system {use['sys_frac']:.1%}, "
            f"{use['faults_step']:,.0f} minor faults/step; once per run, not in the table: "
            f"on_train_end {times['train_end'][1] * 1000:.0f} ms CPU"
        )
        print("  | phase | wall ms/step | CPU ms/step | CPU share | what |\n  | --- | --: | --: | --: | --- |")
        for name, what in PHASES:
            w, c = times[name]
            print(f"  | {name} | {w / steps * 1000:.1f} | {c / steps * 1000:.1f} | {c / cpu:.1%} | {what} |")
        ds = trainer.train_loader.dataset
        chain = ds.transform
        first = chain.get_index_of_first(lambda t: hasattr(t, "randomize") or hasattr(t, "set_random_state"))
        per_t: dict[str, float] = {}
        cached = [ds._cache[i] for i in range(min(8, len(getattr(ds, "_cache", ()) or ())))]
        for item in cached:
            x = item
            with without_metadata() if getattr(chain, "untracked_from", None) is not None else contextlib.nullcontext():
                for t in chain.transforms[first:]:  # as Chain runs them: without MONAI's metadata
                    start = time.thread_time()
                    x = apply_transform(t, x, map_items=True)
                    per_t[type(t).__name__] = per_t.get(type(t).__name__, 0.0) + time.thread_time() - start
        samples = config["transforms"]["num_samples"]
        print(f"  random transforms, CPU ms per cached case ({len(cached)} cases, {samples} crops each):")
        for n, dt in per_t.items():
            print(f"    {n:32s} {dt / max(len(cached), 1) * 1000:8.1f}")
        from torch.profiler import ProfilerActivity, profile

        batches = _epochs(trainer, 0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                trainer.train_step(next(batches))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


def _row(r: dict) -> str:
    b = r["bare"]
    cells = [
        r["config"],
        f"{r['dims']}D",
        r["crop"],
        f"{r['threads']}/{r['workers']}",
        f"{r['steps_s']:.3f}",
        f"{r['px_step'] * r['steps_s'] / 1e6:.2f}",
        f"{r['cpu_per_step']:.2f}",
        f"{r['sys_frac']:.1%}",
        f"{r['faults_step']:,.0f}",
        f"{r['rss_gb']:.2f}",
        f"{b['steps_s']:.3f}",
        f"{b['cpu_per_step']:.2f}",
        f"{b['sys_frac']:.1%}",
        f"{b['faults_step']:,.0f}",
        f"{r['ratio_steps']:.2f}",
        f"{r['ratio_cpu']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| config | dims | crop BCHW[D] | threads/workers | steps/s | Mpx/s | CPU s/step | sys % | faults/step "
    "| peak RSS GB | bare steps/s | bare CPU s/step | bare sys % | bare faults/step | steps/s ratio | CPU ratio |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--steps", type=int, default=6, help="measured steps (rounded up to whole epochs per round)")
    p.add_argument("--rounds", type=int, default=3, help="medseg and bare blocks, interleaved; ratios are medians")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--workers", type=int, nargs="+", default=[-1], help="-1 = auto_workers")
    p.add_argument("--allocator", choices=("on", "off"), default="on")
    p.add_argument("--trim", type=int, default=None, help="tune_allocator(trim_threshold=...) in bytes")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "auto"))
    p.add_argument("--loader", default="plain", choices=("plain", "thread"), help="thread: MONAI's ThreadDataLoader")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    p.add_argument("--phases", action="store_true", help="per-phase split and profile instead of the table")
    p.add_argument("--top", type=int, default=15, help="--phases: profiler rows")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "medseg_bench_throughput"))
    p.add_argument("--json", help="append the rows to this JSON-lines file")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.threads, args.workers = args.threads[0], args.workers[0]
        if args.phases:
            phases(args.one, args)
        else:
            print("RESULT " + json.dumps(measure(args.one, args)))
        return
    print(HEADER)
    for name in args.configs:
        for threads in args.threads:
            for workers in args.workers:
                cmd = [sys.executable, __file__, "--one", name, "--threads", str(threads), "--workers", str(workers)]
                cmd += ["--steps", str(args.steps), "--rounds", str(args.rounds)]
                cmd += ["--warmup-epochs", str(args.warmup_epochs)]
                cmd += ["--allocator", args.allocator, "--amp", args.amp, "--data", args.data, "--top", str(args.top)]
                cmd += ["--loader", args.loader]
                cmd += [
                    *(["--trim", str(args.trim)] if args.trim is not None else []),
                    *(["--phases"] if args.phases else []),
                ]
                for s in args.set:
                    cmd += ["--set", s]
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if args.phases:
                    print(proc.stdout, proc.stderr[-2000:] if proc.returncode else "", flush=True)
                    continue
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    errors = [x for x in proc.stderr.splitlines() if "Error" in x] or proc.stderr.splitlines()[-1:]
                    print(f"| {name} | failed: {errors[-1:]} |", flush=True)
                    continue
                r = json.loads(line[7:])
                print(_row(r), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
