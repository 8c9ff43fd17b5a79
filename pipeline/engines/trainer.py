"""The training loop: plain PyTorch with hook methods.

:class:`Trainer` receives everything already built (network, loss, optimiser, scheduler, data
loaders) and the resolved config, from which it reads its settings (``train``, ``infer``,
``seed``); variation comes from the config, never from a subclass per setting. Override a hook
(``on_train_start``, ``on_epoch_start``, ``train_step``, ``validation_step``, ``on_epoch_end``,
``on_train_end``) to change one step; :meth:`Trainer.fit` calls them in this order::

    on_train_start()
    for each epoch:
        on_epoch_start(epoch)
        train_step(batch)            for each training batch
        validation_step(batch)       for each validation image, when the epoch validates
        on_epoch_end(epoch, record)  scheduler step, checkpoints, log, curves
    on_train_end()                   also after an error

Reproducibility: every epoch reseeds torch, NumPy, Python, the loader's generator and the random
transforms from ``(seed, epoch)``, so a run resumed from the checkpoint of epoch *k* continues
with exactly the random streams the uninterrupted run used for epoch *k + 1*.

Preemption (:mod:`pipeline.engines.preemption`): once the run holds a checkpoint, a SIGTERM or
SIGUSR1 is polled after every optimiser step; the trainer then writes ``last.pt`` with its place
in the epoch (``mid_epoch``: the steps done and their losses) and the generators' states, and
raises :class:`~pipeline.engines.preemption.Preempted`. The resumed run reseeds that epoch, draws
(without training on them) the batches already trained on, so the loader and the random
transforms stand where they stood, restores the saved generators and goes on: its weights are
bit-identical to an uninterrupted run's (on one process; under DDP every rank restores rank 0's
global generators, which only ops such as dropout read).
"""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import runtime
from pipeline.config import Config
from pipeline.engines import batchnorm, preemption, report
from pipeline.engines.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.engines.inferer import WindowCache, autocast, autocast_dtype, needs_grad_scaler, predict, to_labels
from pipeline.errors import MedsegError
from pipeline.metrics import METRICS, evaluate_case
from transforms import keys

__all__ = ["Trainer", "TrainState", "dice_per_class", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every generator gets at the start of ``epoch`` (stable across machines)."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**31 - 1)


def dice_per_class(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of each foreground class between two index maps ``B1HW[D]`` (or ``BHW[D]``).

    Both empty → 1 (the evaluation convention: nothing to find, nothing found).

    Returns:
        ``(num_classes - 1,)`` float tensor, averaged over the batch.
    """
    pred = pred.reshape(pred.shape[0], -1)
    label = label.reshape(label.shape[0], -1).to(pred.device)
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, label == c
        inter = (p & t).sum(1).float()
        denom = p.sum(1).float() + t.sum(1).float()
        out.append(torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom)).mean())
    return torch.stack(out) if out else torch.zeros(0)


@dataclass
class TrainState:
    """What the loop needs to continue: saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_validations: int = 0
    elapsed: float = 0.0  # training seconds over all sessions of this run
    steps: int = 0  # optimisation steps over all sessions (the schedules' position)
    history: list[dict[str, Any]] = field(default_factory=list)


CURVES_EVERY_S = 30.0
"""``curves.png`` is redrawn at most this often (seconds) and at the end of :meth:`Trainer.fit`:
matplotlib takes about 0.2 s of CPU per drawing, 4 % of a 4-step epoch of ``demo_vessel2d`` on
one CPU thread when it validates every epoch (``bench/throughput.py --phases``, ``epoch_end``)."""


class Trainer:
    """Train a segmentation network with periodic sliding-window validation.

    Args:
        network: returns logits ``BKHW[D]`` (or a list of heads, full resolution first, in
            training mode when deep supervision is on); ``out_channels: 1`` is a binary task with
            a sigmoid loss (see :func:`pipeline.engines.inferer.to_labels`).
        loss: ``loss(pred, label, **extras)``; ``extras`` are the batch keys the loss lists in
            ``extra_inputs`` (a batch without one is an error); a loss with ``set_epoch`` is told
            the epoch before each one.
        optimizer / scheduler: built; the scheduler is stepped once per training step (a
            :class:`~pipeline.engines.optim.RunLR` is fitted to ``train.time_budget``).
        train_loader: yields dicts with ``image`` ``BCHW[D]`` and ``label`` ``B1HW[D]``.
        val_loader: whole images, batch size 1; ``None`` disables validation.
        config: the resolved config (:func:`pipeline.config.load_config`); the trainer reads
            ``train`` (epochs, val_every, patience, time_budget, iterations_per_epoch, grad_clip,
            amp, compile, tensorboard, val_metric), ``infer`` (the validation window) and ``seed``,
            and stores it in checkpoints.
        run_dir: where checkpoints, logs and plots go.
        device: where the network runs.
        rank / world_size: for DDP; only rank 0 writes files.
        progress: a progress bar per epoch (rank 0 only).

    Raises:
        MedsegError: ``train.tensorboard`` is on and the event folder cannot be written.

    The step never waits for the device: losses stay on it (the progress bar reads them every
    10 steps), batches arrive as plain tensors (a ``MetaTensor`` would put metadata tracking on
    every network op) and are copied without blocking from the loader's pinned memory.

    ``train.compile`` compiles the training forward only: weights, checkpoints and validation
    use the network itself, so checkpoint keys do not change.

    Example:
        Override one hook to change one step, e.g. one more ``log.csv`` column per epoch::

            class MemoryLoggingTrainer(Trainer):
                def on_epoch_end(self, epoch, record):
                    record["peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                    super().on_epoch_end(epoch, record)  # checkpoints, log.csv, curves

            MemoryLoggingTrainer(network=..., loss=..., ..., config=config, run_dir=run, device=device).fit()
    """

    def __init__(
        self,
        *,
        network: torch.nn.Module,
        loss: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        train_loader: Iterable[Mapping[str, Any]],
        val_loader: Iterable[Mapping[str, Any]] | None,
        config: Config,
        run_dir: str | Path,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        progress: bool = True,
    ) -> None:
        self.config = config
        train = config["train"]
        self.network = network
        self._forward = torch.compile(network) if train["compile"] else network
        self.loss = loss
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.run_dir = Path(run_dir)
        self.num_classes = config.num_classes
        self.device = device
        self.epochs = train["epochs"]
        self.val_every = train["val_every"]
        self._validations = max(1, self.epochs // self.val_every)  # kept when the budget shortens the run
        self.patience = train["patience"]
        self.time_budget = train["time_budget"]
        self.iterations_per_epoch = train["iterations_per_epoch"]
        self.grad_clip = train["grad_clip"]
        self.amp_dtype = autocast_dtype(train["amp"], device)
        self.val_metric = train["val_metric"]  # a registered metric: checked when the config was resolved
        self.higher_is_better = METRICS.get(self.val_metric).higher_is_better
        self.seed = self.config["seed"]
        self.rank = rank
        self.world_size = world_size
        self.progress = progress and rank == 0
        self.state = TrainState()
        self.scaler = torch.amp.GradScaler(device.type) if needs_grad_scaler(self.amp_dtype) else None
        self.stop_reason: str | None = None
        self._budget_hit = False
        self._windows = WindowCache()  # validation images repeat every epoch: their window plans too
        self._session_start = 0.0
        self._best_pending = False
        self._mid_epoch: dict[str, Any] | None = None  # where a preempted run stopped in its epoch
        self._curves_pending, self._curves_drawn = False, -math.inf
        self._fitted_steps: int | None = None
        self._rate_origin: tuple[float, int] | None = None
        self._tb = self._tensorboard() if train["tensorboard"] and self.is_main else None

    @property
    def infer(self) -> Mapping[str, Any]:
        """The ``infer`` section (the validation window size filled in when the config was resolved)."""
        return self.config["infer"]

    # ------------------------------------------------------------------ helpers

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def model(self) -> torch.nn.Module:
        """The network without a DDP wrapper."""
        return getattr(self.network, "module", self.network)

    def _tensorboard(self):
        """A SummaryWriter; without the tensorboard package a warning with the reason and None."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is optional
            warnings.warn(
                f"train.tensorboard is on but TensorBoard cannot be used ({err}); "
                "pip install tensorboard, or set train.tensorboard: false to silence this",
                stacklevel=3,
            )
            return None
        where = self.run_dir / "tensorboard"
        try:
            return SummaryWriter(str(where))
        except OSError as err:
            raise MedsegError(
                f"{where}: cannot write TensorBoard events ({err.strerror or err}); "
                "set train.tensorboard: false to train without them"
            ) from None

    def seed_epoch(self, epoch: int) -> None:
        """Reseed every generator for ``epoch`` (see the module docstring)."""
        s = epoch_seed(self.seed, epoch) + self.rank
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        gen = getattr(self.train_loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(s)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        transform = getattr(getattr(self.train_loader, "dataset", None), "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=s)

    def _move(self, batch: Mapping[str, Any], names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Batch entries as plain tensors on the device (``MetaTensor`` unwrapped: no copy).

        Raises:
            MedsegError: a named entry is missing from the batch (naming it and the batch's keys).
        """
        out = {}
        for k in names:
            if k not in batch:
                raise MedsegError(
                    f"the batch has no {k!r} entry, which the loss ({type(self.loss).__name__}) declares in "
                    f"extra_inputs; batch keys: {', '.join(map(str, batch))}. The transform chain must add it"
                )
            t = torch.as_tensor(batch[k])
            out[k] = (t if type(t) is torch.Tensor else t.as_subclass(torch.Tensor)).to(self.device, non_blocking=True)
        return out

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "network": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "train_state": asdict(self.state),
            "loss_schedule": {"epoch": self.state.epoch, "weights": self.loss_weights()},
            "rng": rng_state(),
        }

    def save(self, name: str) -> Path | None:
        if not self.is_main:
            return None
        return save_checkpoint(
            self.checkpoint_state(), self.checkpoint_dir / f"{name}.pt", keep_previous=name == "last"
        )

    def resume(self, checkpoint: str | Path | Mapping[str, Any]) -> None:
        """Restore weights, optimiser, scheduler, loop state and RNG from a checkpoint (path or loaded)."""
        ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint, map_location=self.device)
        self.model.load_state_dict(ckpt["network"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
            # the schedule of this run's length from the resumed epoch on: a run extended with more
            # train.epochs continues on the longer curve at once (it would otherwise train its next
            # epoch at the old curve's last rate); an unchanged run gets the same rate it saved
            with warnings.catch_warnings():  # get_lr() outside step() warns; here it is the point
                warnings.simplefilter("ignore", UserWarning)
                rates = self.scheduler.get_lr()
            for group, lr in zip(self.optimizer.param_groups, rates, strict=True):
                group["lr"] = lr
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])
        set_rng_state(ckpt["rng"])
        mid = ckpt.get("mid_epoch")
        self._mid_epoch = {**mid, "rng": ckpt["rng"]} if mid else None

    # ------------------------------------------------------------------ hooks

    def on_train_start(self) -> None:
        """Once per :meth:`fit`, before the first epoch: starts the clock, creates the run folder.

        The clock (``train.time_budget``, the elapsed time saved in checkpoints) starts with the
        ``medseg`` command (:func:`pipeline.runtime.command_start`), so the budget covers its
        start-up too; a resumed run adds the time of its earlier sessions."""
        started = runtime.command_start()
        now = time.perf_counter()
        self._session_start = (started if started is not None and started <= now else now) - self.state.elapsed
        self._first_epoch, self._elapsed_at_start = self.state.epoch, self.state.elapsed
        self._fitted_steps, self._rate_origin = None, None
        self._budget_hit = False
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tqdm.write(self.start_summary(), file=sys.stdout)

    def start_summary(self) -> str:
        """What the run is about to do, before its first step (printed by :meth:`on_train_start`)."""
        n_train = len(getattr(self.train_loader, "dataset", ()) or ())
        n_val = len(getattr(self.val_loader, "dataset", ()) or ()) if self.val_loader is not None else 0
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        train = self.config["train"]
        crops = self.config["transforms"]["num_samples"]
        patch = "x".join(str(v) for v in self.config["transforms"]["patch_size"])
        threads = f", {torch.get_num_threads()} thread(s)" if self.device.type == "cpu" else ""
        ranks = f" x {self.world_size} processes" if self.world_size > 1 else ""
        return (
            f"training {self.config['network']['name']} ({params:.2f} M parameters) on {self.device}{threads}{ranks}: "
            f"{n_train} training / {n_val} validation case(s), patch {patch}, batch {train['batch_size']} x {crops} "
            f"crop(s), {self._steps_per_epoch()} steps per epoch, epochs {self.state.epoch + 1}-{self.epochs}"
            + (f", budget {self.time_budget:g} min" if self.time_budget is not None else "")
            + (f", {str(self.amp_dtype).removeprefix('torch.')} autocast" if self.amp_dtype is not None else "")
        )

    def _steps_per_epoch(self) -> int:
        return self.iterations_per_epoch or len(self.train_loader)  # type: ignore[arg-type]

    def _estimate(self, steps: int, seconds: float) -> str:
        """The run's length extrapolated from its first ``steps`` steps (validation not included)."""
        left = (self.epochs - self.state.epoch) * self._steps_per_epoch()
        minutes = seconds / steps * left / 60
        span = f"{minutes:.1f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
        line = f"{seconds / steps:.2f} s per step over the first {steps}: about {span} of training left"
        if self.time_budget is not None and minutes > self.time_budget:
            reach = self.state.epoch + self.time_budget * 60 / (seconds / steps * self._steps_per_epoch())
            line += (
                f"; warning: longer than train.time_budget ({self.time_budget:g} min), which stops it at about "
                f"epoch {int(reach)} of {self.epochs}; the learning-rate schedule is fitted to it"
            )
        return line

    def on_epoch_start(self, epoch: int) -> None:
        """Before each epoch (0-based): reseeds every generator, tells the loss the epoch, train mode."""
        self.seed_epoch(epoch)
        set_epoch = getattr(self.loss, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        self._loss_progress()
        self.network.train()

    def train_step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """One optimisation step on one training batch.

        Args:
            batch: ``image``, ``label`` and the loss's ``extra_inputs``.

        Returns:
            The loss as a detached tensor on the device (no host sync).

        Raises:
            MedsegError: the batch lacks an entry the loss declares.
        """
        data = self._move(batch, (keys.IMAGE, keys.LABEL, *getattr(self.loss, "extra_inputs", ())))
        image, label = data.pop(keys.IMAGE), data.pop(keys.LABEL)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            pred = self._forward(image)
        if isinstance(pred, (list, tuple)):
            pred = [p.float() for p in pred]
        else:
            pred = pred.float()
        loss = self.loss(pred, label, **data)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``train.val_metric`` per foreground class of one whole image, by sliding-window inference.

        Labels come from :func:`~pipeline.engines.inferer.to_labels` (argmax, or ``p > 0.5`` for a
        single-channel network). Dice is computed on the device; other metrics by
        :func:`pipeline.metrics.evaluate_case` on the CPU, with the label's spacing when the batch
        carries it.

        Returns:
            ``(num_classes - 1,)`` float tensor.
        """
        image = torch.as_tensor(batch[keys.IMAGE])
        probs = predict(
            self.model,
            image.to(self.device),
            roi_size=self.infer["roi_size"],
            overlap=self.infer["overlap"],
            mode=self.infer["mode"],
            sw_batch_size=self.infer["sw_batch_size"] or "auto",
            amp_dtype=self.amp_dtype,
            cache=self._windows,
        )
        pred = to_labels(probs, keepdim=True)
        label = batch[keys.LABEL]
        if self.val_metric == "dice":
            return dice_per_class(pred, torch.as_tensor(label), self.num_classes)
        classes = range(1, self.num_classes)
        values = torch.zeros(len(classes))
        lab = torch.as_tensor(label).to(torch.int64).cpu()
        spacing = _spacing(label, pred.ndim - 2)
        for i in range(pred.shape[0]):
            res = evaluate_case(pred[i, 0].cpu(), lab[i, 0], spacing, classes, metrics=(self.val_metric,))
            values += torch.tensor([res[c][self.val_metric] for c in classes], dtype=torch.float32)
        return values / pred.shape[0]

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """After each epoch: steps the scheduler, saves ``best.pt`` (when the epoch improved) and
        ``last.pt``, writes ``log.csv``, ``curves.png`` and TensorBoard scalars (rank 0).

        Args:
            epoch: 0-based.
            record: the epoch's log row (``epoch``, ``lr``, ``train_loss``, ``val_<metric>``...).
        """
        self.state.epoch = epoch + 1
        self.state.elapsed = time.perf_counter() - self._session_start
        record["time_min"] = round(self.state.elapsed / 60, 3)
        self.state.history.append(record)
        if self.time_budget is not None:
            self._fit_to_budget()  # validation included in the rate from the first epoch on
        # best before last: a kill between the two leaves last.pt at the previous epoch, whose resume
        # redoes this one and rewrites best.pt, instead of a last.pt whose best.pt never got written
        if self._best_pending:
            self.save("best")
            self._best_pending = False
        self.save("last")
        if self.is_main:
            tqdm.write(self.epoch_line(record), file=sys.stdout)
            report.write_history(self.state.history, self.run_dir / "log.csv")
            self._curves_pending |= f"val_{self.val_metric}" in record
            if self._curves_pending and time.perf_counter() - self._curves_drawn >= CURVES_EVERY_S:
                self._draw_curves()
            if self._tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        self._tb.add_scalar(k, v, epoch)
                self._tb.flush()

    def epoch_line(self, record: Mapping[str, Any]) -> str:
        """One line a person can follow in a log file (``nohup``, SLURM, CI) as on a terminal::

        epoch 3/40  loss 0.4121 (region 0.95 boundary 0.06)  val dice 0.8123 [0.801 0.823]  ...
        ...  lr 9.10e-04  42.0 s/epoch  ETA 25.9 min
        """
        epoch = int(record["epoch"])
        done = epoch - self._first_epoch
        per_epoch = (self.state.elapsed - self._elapsed_at_start) / max(done, 1)
        parts = [f"epoch {epoch}/{self.epochs}", f"loss {record['train_loss']:.4f}"]
        weights = {k[2:]: v for k, v in record.items() if k.startswith("w_")}
        if weights:
            parts[-1] += " (" + " ".join(f"{k} {v:.3g}" for k, v in weights.items()) + ")"
        column = f"val_{self.val_metric}"
        if column in record:
            per_class = [record[k] for k in record if k.startswith(column + "_")]
            classes = f" [{' '.join(f'{v:.3f}' for v in per_class)}]" if len(per_class) > 1 else ""
            parts.append(f"val {self.val_metric} {record[column]:.4f}{classes}")
        parts += [f"lr {record['lr']:.2e}", f"{per_epoch:.1f} s/epoch"]
        if epoch < self.epochs:
            eta = per_epoch * (self.epochs - epoch)
            if self.time_budget is not None:  # the budget ends it first
                eta = min(eta, max(0.0, self.time_budget * 60 - self.state.elapsed))
            parts.append(f"ETA {eta / 60:.1f} min")
        return "  ".join(parts)

    def on_train_end(self) -> None:
        """Once per :meth:`fit`, also after an error or an interrupt: draws ``curves.png`` if a
        validation is not on it yet, closes TensorBoard."""
        if self._curves_pending and self.is_main:
            self._draw_curves()
        if self._tb is not None:
            self._tb.close()

    def _draw_curves(self) -> None:
        report.plot_curves(
            self.state.history, self.run_dir / "curves.png", self.val_metric, self.config["loss"]["name"]
        )
        self._curves_drawn, self._curves_pending = time.perf_counter(), False

    # ------------------------------------------------------------------ loop

    def loss_weights(self) -> dict[str, float]:
        weights = getattr(self.loss, "weights", None)
        return dict(weights) if isinstance(weights, Mapping) else {}

    def train_epoch(self, epoch: int) -> float:
        total = self._steps_per_epoch()
        bar = tqdm(
            total=total, desc=f"epoch {epoch + 1}/{self.epochs}", disable=None if self.progress else True, leave=False
        )
        losses: list[torch.Tensor] = []
        done = 0
        first = epoch == self._first_epoch
        skip, mid = 0, self._mid_epoch
        if mid is not None and mid["epoch"] == epoch:  # resumed from a preempted run's checkpoint
            skip, losses = mid["step"], list(mid["losses"].to(self.device).unbind())
        self._mid_epoch = None
        while done < total:
            for batch in self.train_loader:
                if done < skip:  # already trained on: drawn only to advance the loader and transforms
                    done += 1
                    bar.update()
                    if done == skip:
                        set_rng_state(mid["rng"])  # type: ignore[index]
                    if done >= total:
                        break
                    continue
                if first and done == skip + 1:
                    timed_from = time.perf_counter()  # after the first step: compile, caches and allocator warm-up
                losses.append(self.train_step(batch))
                done += 1
                self._advance_schedules()
                bar.update()
                if first and self.is_main and done == min(skip + 4, total) and done > skip + 1:
                    torch.stack(losses[-1:]).sum().item()  # wait for the device before reading the clock
                    tqdm.write(self._estimate(done - skip - 1, time.perf_counter() - timed_from), file=sys.stdout)
                if first and self.time_budget is not None and done == min(skip + 4, total) and done > skip + 1:
                    torch.stack(losses[-1:]).sum().item()
                    seconds_per_step = (time.perf_counter() - timed_from) / (done - skip - 1)
                    self._fit_to_budget(seconds_per_step)  # every rank: it all-reduces
                if self._preempt_requested(done):
                    bar.close()
                    self._stop_preempted(epoch, done, losses)
                if self._out_of_time(done):
                    break  # the budget holds within one step, not one epoch (an epoch can take hours)
                if done % 10 == 0 or done == total:
                    postfix = {"loss": f"{torch.stack(losses[-10:]).mean().item():.4f}"}
                    column = f"val_{self.val_metric}"
                    value = next((r[column] for r in reversed(self.state.history) if column in r), None)
                    if value is not None:
                        postfix[self.val_metric] = f"{value:.3f}"
                    bar.set_postfix(postfix)
                if done >= total:
                    break
            if self._budget_hit:
                break
        bar.close()
        mean = torch.stack(losses).mean()
        if self.world_size > 1:
            torch.distributed.all_reduce(mean)
            mean /= self.world_size
        value = float(mean)
        if not math.isfinite(value):
            raise MedsegError(f"training diverged at epoch {epoch + 1}: loss is {value}; lower optimizer.lr")
        return value

    def _preempt_requested(self, steps: int) -> bool:
        """Whether a signal asked the run to stop (:mod:`~pipeline.engines.preemption`), checked
        after every step (under DDP every tenth, agreed by all ranks, so they stop at one step)."""
        if self.world_size > 1 and steps % 10:
            return False
        return self._all_ranks_any(preemption.requested() is not None)

    def _stop_preempted(self, epoch: int, step: int, losses: list[torch.Tensor]) -> None:
        """Save ``last.pt`` at ``step`` of ``epoch`` (0-based) and raise ``Preempted``; ``step`` 0:
        at the epoch's start, where the checkpoint of the epoch before already stands."""
        self.state.elapsed = time.perf_counter() - self._session_start
        path = self.checkpoint_dir / "last.pt"
        if step and self.is_main:
            state = self.checkpoint_state()
            state["mid_epoch"] = {"epoch": epoch, "step": step, "losses": torch.stack(losses).cpu()}
            save_checkpoint(state, path, keep_previous=True)
        raise preemption.Preempted(preemption.requested() or 15, str(path.resolve()), epoch + 1, step)

    def _advance_schedules(self) -> None:
        """After each optimisation step: the learning rate and the loss weights move to the next step."""
        self.state.steps += 1
        if self._rate_origin is None:  # the session's rate is timed from its first step on (not start-up)
            self._rate_origin = (time.perf_counter(), self.state.steps)
        if self.scheduler is not None:
            self.scheduler.step()
        self._loss_progress()

    def _loss_progress(self) -> None:
        """Tell a loss with ``set_progress`` the fraction of the run done (its weight ramps)."""
        set_progress = getattr(self.loss, "set_progress", None)
        if callable(set_progress):
            set_progress(min(1.0, self.state.steps / self.total_steps))

    @property
    def total_steps(self) -> int:
        """The run's length in steps: ``train.epochs`` × steps per epoch, or fewer when fitted to the budget."""
        return self._fitted_steps or self.epochs * self._steps_per_epoch()

    def _fit_to_budget(self, seconds_per_step: float | None = None) -> None:
        """Shorten the schedules to the steps that ``train.time_budget`` leaves room for, at the
        measured rate (``seconds_per_step``, else this session's wall time per step since its first
        step, validation and checkpoints included), so the learning rate reaches the end of its curve when time
        runs out instead of the run stopping mid-warm-up; never longer than ``train.epochs``.
        ``val_every`` shrinks with the run, so it validates about as often as configured.
        Every DDP rank takes the shortest estimate, so their rates stay equal."""
        now = time.perf_counter()
        if seconds_per_step is None:
            if self._rate_origin is None or self.state.steps <= self._rate_origin[1]:
                return
            seconds_per_step = (now - self._rate_origin[0]) / (self.state.steps - self._rate_origin[1])
        left = self.time_budget * 60 - (now - self._session_start)
        fit = self.state.steps + max(1, int(left / max(seconds_per_step, 1e-9)))
        total = min(self.epochs * self._steps_per_epoch(), fit)
        if self.world_size > 1:
            value = torch.tensor([float(total)], device=self.device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
            total = int(value.item())
        self._fitted_steps = total
        rescale = getattr(self.scheduler, "rescale", None)
        if callable(rescale):
            rescale(total)
        # the validations ``train.epochs`` and ``train.val_every`` ask for, spread over the fitted
        # run: a plan is written for more epochs than its timing says fit (planner.OVERPLAN), and
        # its val_every would otherwise leave a shortened run with a validation or two
        epochs = max(1, math.ceil(total / self._steps_per_epoch()))
        self.val_every = max(1, min(self.config["train"]["val_every"], round(epochs / self._validations)))

    def recalibrate_norm(self) -> None:
        """While the run has taken few steps, batch-norm running statistics are recomputed from
        the current weights on training patches before validation and the checkpoints
        (:mod:`pipeline.engines.batchnorm`); nothing for other norms or later on."""
        if not batchnorm.needs_recalibration(self.model, self.state.steps):
            return

        def forward(batch: Mapping[str, Any]) -> None:
            with autocast(self.device, self.amp_dtype):
                self.model(self._move(batch, (keys.IMAGE,))[keys.IMAGE])

        batches = batchnorm.recalibration_batches(self._steps_per_epoch())
        batchnorm.recalibrate_batch_norm(self.model, self.train_loader, batches, forward)

    def _out_of_time(self, steps: int) -> bool:
        """Whether ``train.time_budget`` is spent, checked after every step (under DDP every tenth,
        agreed by all ranks, so they stop at the same step)."""
        if self.time_budget is None or self._budget_hit:
            return self._budget_hit
        if self.world_size > 1 and steps % 10:
            return False
        spent = time.perf_counter() - self._session_start > self.time_budget * 60
        self._budget_hit = self._all_ranks_any(spent)
        return self._budget_hit

    def validate(self) -> torch.Tensor:
        """Mean ``train.val_metric`` per foreground class over the validation set (all-reduced under DDP)."""
        self.network.eval()
        total = torch.zeros(self.num_classes - 1, device=self.device)
        count = torch.zeros((), device=self.device)
        for batch in self.val_loader or ():
            total += self.validation_step(batch).to(self.device)
            count += 1
        if self.world_size > 1:
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        return (total / count.clamp_min(1)).cpu()

    def _all_ranks_any(self, flag: bool) -> bool:
        """``flag`` of any rank, on every rank: clocks differ between ranks, and a rank that stops
        alone leaves the others waiting in a collective."""
        if self.world_size <= 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def should_validate(self, epoch: int) -> bool:
        return self.val_loader is not None and ((epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs)

    def fit(self) -> TrainState:
        """Train until ``epochs``, early stopping or the time budget; returns the final state."""
        self.on_train_start()
        if self.state.epoch > 0 or self._mid_epoch is not None:
            preemption.arm()  # a resumed run: a signal saves and stops it at the next step
        try:
            for epoch in range(self.state.epoch, self.epochs):
                self.on_epoch_start(epoch)
                record: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
                record["train_loss"] = self.train_epoch(epoch)
                self.recalibrate_norm()
                record.update({f"w_{k}": v for k, v in self.loss_weights().items()})
                over_budget = self._budget_hit or self._all_ranks_any(
                    self.time_budget is not None and time.perf_counter() - self._session_start > self.time_budget * 60
                )
                if self.should_validate(epoch) or (over_budget and self.val_loader is not None):
                    values = self.validate()
                    column = f"val_{self.val_metric}"
                    record[column] = float(values.mean()) if values.numel() else float("nan")
                    for c, v in enumerate(values.tolist(), start=1):
                        record[f"{column}_{c}"] = v
                    self._track_best(record[column], epoch)
                self.on_epoch_end(epoch, record)
                preemption.arm()  # last.pt exists from here on
                if self.patience and self.state.bad_validations >= self.patience:
                    self.stop_reason = f"early stopping: no improvement in {self.patience} validations"
                    break
                if over_budget:
                    self.stop_reason = f"time budget of {self.time_budget} min reached"
                    break
                if epoch + 1 < self.epochs and self._preempt_requested(0):  # came during validation or a save
                    self._stop_preempted(epoch + 1, 0, [])
        finally:
            preemption.disarm()
            self.on_train_end()
        return self.state

    def _track_best(self, metric: float, epoch: int) -> None:
        """Best by ``train.val_metric``'s direction; a NaN never counts as an improvement."""
        if self.state.best_epoch < 0:
            better = not math.isnan(metric)
        else:
            better = metric > self.state.best_metric if self.higher_is_better else metric < self.state.best_metric
        if better:
            self.state.best_metric = metric
            self.state.best_epoch = epoch + 1
            self.state.bad_validations = 0
            self._best_pending = True
        else:
            self.state.bad_validations += 1


def _spacing(label: Any, spatial_dims: int) -> tuple[float, ...] | None:
    """The first item's voxel spacing of a collated ``MetaTensor`` label, else None (1 per axis)."""
    pixdim = getattr(label, "pixdim", None)
    if pixdim is None:
        return None
    values = torch.as_tensor(pixdim[0] if isinstance(pixdim, (list, tuple)) else pixdim, dtype=torch.float64)
    values = values.reshape(-1, values.shape[-1])[0] if values.ndim > 1 else values
    return tuple(float(v) for v in values[:spatial_dims]) if values.numel() >= spatial_dims else None
