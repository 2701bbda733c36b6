r"""One training loop for every estimator.

An estimator is an :class:`torch.nn.Module` with a method ``loss(*tensors)`` that
returns one loss per row, :math:`(B,)`, and optionally a method ``batch_loss(*tensors)``
that returns one scalar for the whole batch (a term that is not a sum over rows, such as
an MMD penalty on summaries). :func:`fit` minimizes the mean of the first plus the
second over mini-batches sliced from in-memory tensors, holds out a validation split, stops
early and restores the weights with the best validation loss. A module whose loss draws
random numbers takes them from its attribute ``generator``, where it has one: training sets
it to the run's generator (seeded by ``TrainConfig.seed`` and checkpointed), and each
validation pass to a fresh generator seeded 0, so that epochs are compared on the same draws.
"""

__all__ = ["TrainConfig", "Schedule", "Training", "fit"]

import copy
import dataclasses
import io
import math
import os
import re
import signal
import sys
import time
import torch
import torch.nn as nn
import warnings

from dataclasses import dataclass
from pathlib import Path
from torch import Tensor
from typing import NamedTuple
from tqdm.auto import tqdm

from .errors import TrainingError
from .io import atomic_write
from .runs.store import digest


_AUTOMATIC = ("batch_size", "learning_rate", "max_epochs", "steps", "clip_norm", "patience")
_BASE_RATE = 1.6e-3  # the automatic learning rate at 256 rows per batch
# what is trained -> (n / rows per batch, gradient steps; None: as many epochs as "vectors", gradient
# norm clipped at, patience in epochs), for the settings left at None
TRAINING_KINDS = {
    "vectors": (4, 1000, 5.0, 20),
    "structured": (8, 2000, 5.0, 20),
    "likelihood": (16, None, 1.0, 40),
}
TRAINING_KINDS["location"] = TRAINING_KINDS["likelihood"]  # NLE's first stage; resolve takes a quarter of the epochs
TRAINING_KINDS["counts"] = TRAINING_KINDS["likelihood"]  # NLE's count model; resolve takes twice the epochs


class Schedule(NamedTuple):
    r"""The settings a training run uses, as :meth:`TrainConfig.resolve` fills them in."""

    batch_size: int
    learning_rate: float
    max_epochs: int
    clip_norm: float
    patience: int


@dataclass(frozen=True)
class TrainConfig:
    r"""Training settings.

    The batch size, learning rate, number of epochs and steps default to None: then
    they follow the number of training rows :math:`n` and what is trained (see
    :meth:`resolve`), so that training takes about ``steps``
    gradient steps whatever :math:`n`, in batches large enough to keep each step
    efficient.

    Arguments:
        batch_size: The number of rows per gradient step; None picks the power of
            two nearest :math:`n / 4` (:math:`n / 8` for sets and series, :math:`n / 16`
            for NLE), between 32 and 2,048.
        learning_rate: AdamW's initial learning rate, decayed to zero by a cosine
            schedule over ``max_epochs``; None gives
            :math:`1.6 \cdot 10^{-3} \sqrt{\text{batch size} / 256}` (see :meth:`resolve`).
        max_epochs: The passes over the training rows; None gives about ``steps``
            gradient steps, and at least 30 epochs.
        steps: The number of gradient steps that sets ``max_epochs`` when it is None;
            None gives 1,000, 2,000 for sets and series, and for NLE as many epochs
            as NPE's 1,000 steps would take.
        patience: Stop after this many epochs without a better validation loss. None
            gives 20, and 40 for NLE (see :meth:`resolve`).
        validation_fraction: The share of rows held out for early stopping.
        clip_norm: The largest gradient norm; larger gradients are scaled down. None
            gives 5, and 1 for NLE (see :meth:`resolve`).
        max_nonfinite: Abort after this many non-finite losses in a row.
        weight_decay: AdamW's decoupled weight decay.
        average: The decay of an exponential moving average of the weights, taken
            after every step, with the decay :math:`\min(\text{average}, (1 + t) / (10 + t))`
            at step :math:`t`, so that early on it spans about the last tenth of the
            steps. Validation, early stopping and the weights kept all use the
            average, which is less noisy than the last step's weights. 0 keeps the
            last step's weights.
        seed: Seeds the split, the shuffling and the network's initialization.
        checkpoint: A directory for checkpoints; None keeps none. Training saves one
            every ``checkpoint_every`` epochs and when the process gets SIGTERM (at the
            end of the epoch it is in, after which the signal takes its course), and a
            training run with the same name and data resumes from the newest valid one,
            with the loss trajectory of a run never interrupted.
        checkpoint_every: The epochs between checkpoints.
        device: Where to train, for example ``"cpu"`` or ``"cuda"``.
        show_progress: Whether to show a progress bar; None shows one on a terminal.

    Example:
        >>> TrainConfig().resolve(9_000)
        Schedule(batch_size=2048, learning_rate=0.004525483399593904, max_epochs=200,
                 clip_norm=5.0, patience=20)
        >>> TrainConfig(batch_size=128, max_epochs=50).resolve(9_000)[:3]
        (128, 0.001131370849898476, 50)
        >>> TrainConfig().resolve(4_500, kind="structured")[:3]  # sets or series
        (512, 0.002262741699796952, 223)
        >>> TrainConfig().resolve(9_000, kind="likelihood")  # NLE
        Schedule(batch_size=512, learning_rate=0.002262741699796952, max_epochs=200,
                 clip_norm=1.0, patience=40)
        >>> TrainConfig().resolve(9_000, kind="location").max_epochs  # NLE's first stage
        50
    """

    batch_size: int | None = None
    learning_rate: float | None = None
    max_epochs: int | None = None
    steps: int | None = None
    patience: int | None = None
    validation_fraction: float = 0.1
    clip_norm: float | None = None
    max_nonfinite: int = 10
    weight_decay: float = 0.0
    average: float = 0.99
    seed: int = 0
    device: str = "cpu"
    show_progress: bool | None = None
    checkpoint: str | None = None
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "steps", "patience", "max_nonfinite"):
            value = getattr(self, name)
            if value is None and name in _AUTOMATIC:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}.")
        for name in ("learning_rate", "clip_norm"):
            value = getattr(self, name)
            if value is None and name in _AUTOMATIC:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not value > 0 or not math.isfinite(value):
                raise ValueError(f"TrainConfig.{name} must be a positive number, got {value!r}.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"TrainConfig.validation_fraction must lie in (0, 1), got {self.validation_fraction!r}."
            )
        if isinstance(self.average, bool) or not isinstance(self.average, (int, float)) or not 0 <= self.average < 1:
            raise ValueError(f"TrainConfig.average must lie in [0, 1), got {self.average!r}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}.")
        _check_device(self.device)
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise ValueError(f"TrainConfig.checkpoint_every must be a positive int, got {self.checkpoint_every!r}.")
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise TypeError(f"TrainConfig.checkpoint must be a directory path or None, got {type(self.checkpoint).__name__}.")
        if self.checkpoint is not None:  # a str, which saved posteriors keep in their JSON config
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))

    def resolve(self, num_rows: int, kind: str = "vectors") -> Schedule:
        r"""Returns the batch size, learning rate, number of epochs, gradient clipping
        norm and patience for ``num_rows`` training rows, filling in those left at None;
        ``kind`` says what is trained: ``"vectors"`` (NPE on observations of a fixed
        shape), ``"structured"`` (NPE on sets or series), ``"likelihood"`` (NLE),
        ``"location"`` (NLE's first stage, its flow's location and scale alone; see
        :meth:`sbikit.NLE.fit`) or ``"counts"`` (NLE's count model).

        Larger batches amortize the per-step cost of a flow, the learning rate grows with
        the square root of the batch size (:math:`1.6 \cdot 10^{-3}` at 256 rows), and a
        cosine schedule over a fixed number of steps ends at a small learning rate. Sets and
        series take batches half as large and twice the steps (their summary network costs
        about the same per row at any batch size). NLE takes batches a quarter as large over
        as many epochs, clips gradients at a norm of 1 instead of 5 and waits 40 epochs
        instead of 20 before it stops. NLE's first stage (``"location"``) takes a quarter of
        NLE's epochs, and its count model (``"counts"``) twice them. ``docs/design.md``,
        "Training schedules", has the measurements behind each rule.

        Raises:
            ValueError: If ``kind`` is not one of those.
        """

        if kind not in TRAINING_KINDS:
            raise ValueError(f"kind must be one of {sorted(TRAINING_KINDS)}, got {kind!r}.")
        share, default_steps, default_clip, default_patience = TRAINING_KINDS[kind]
        batch = self.batch_size
        if batch is None:
            batch = 2 ** min(max(round(math.log2(max(num_rows, 1) / share)), 5), 11)
        rate = self.learning_rate if self.learning_rate is not None else _BASE_RATE * math.sqrt(batch / 256)
        epochs = self.max_epochs
        if epochs is None and self.steps is None and default_steps is None:
            epochs = self.resolve(num_rows).max_epochs * (2 if kind == "counts" else 1)  # as many as "vectors"
        elif epochs is None:
            steps = self.steps if self.steps is not None else default_steps
            epochs = max(30, math.ceil(steps / math.ceil(num_rows / batch)))
        clip = self.clip_norm if self.clip_norm is not None else default_clip
        patience = self.patience if self.patience is not None else default_patience
        if kind == "location":
            epochs = math.ceil(epochs / 4)
        return Schedule(batch, rate, epochs, clip, patience)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_device(device: object) -> None:
    r"""Refuses a device that this torch cannot train on, before any work is done."""

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"TrainConfig.device must be a torch device such as 'cpu' or 'cuda', got {device!r}.") from None
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if kind in available and not available[kind]():
        raise ValueError(
            f"TrainConfig.device is {device!r}, but this torch ({torch.__version__}) sees no {kind.upper()} "
            "device (torch.cuda.is_available() is False for cuda); train with device='cpu', or install "
            "a torch build for your accelerator."
        )


def _batch_term(module: nn.Module, tensors: list[Tensor]) -> Tensor | float:
    r"""The module's loss term over the whole batch, ``module.batch_loss(*tensors)``; 0 without one."""

    batch_loss = getattr(module, "batch_loss", None)
    return 0.0 if batch_loss is None else batch_loss(*tensors)


def _num_validation(num_rows: int, config: TrainConfig) -> int:
    n_val = max(1, int(round(num_rows * config.validation_fraction)))
    if num_rows - n_val < 1:
        raise ValueError(f"need at least 2 valid simulations to train with a validation split, got {num_rows}.")
    return n_val


def held_out(num_rows: int, config: TrainConfig) -> Tensor:
    r"""Which of ``num_rows`` rows in memory :func:`fit` holds out for validation under
    ``config``, :math:`(N,)` booleans: statistics fitted before training (standardization,
    the regression adjustment) use the other rows only, so that validation judges them
    fairly against what training learns."""

    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(config.seed))
    mask = torch.zeros(num_rows, dtype=torch.bool)
    mask[order[: _num_validation(num_rows, config)]] = True
    return mask


def best_validation(history: dict) -> str:
    r"""The best validation loss of a training ``history`` and where it was seen, in words.

    An epoch is named by its index in the history, as ``history["best_epoch"]`` names it:
    ``"at epoch 14"`` is ``history["validation_loss"][14]``, the fifteenth epoch.
    """

    epoch = history["best_epoch"]
    if epoch < 0:
        return f"{history['initial_validation_loss']:.4f} at the start, before any epoch"
    return f"{history['validation_loss'][epoch]:.4f} at epoch {epoch}"


def _lend(module: nn.Module, generator: torch.Generator | None) -> None:
    if hasattr(module, "generator"):
        module.generator = generator


def _mean_loss(module: nn.Module, tensors: list[Tensor], batch_size: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tensors[0]), batch_size):
            chunk = [t[start : start + batch_size] for t in tensors]
            losses = module.loss(*chunk)
            total += float(losses.sum()) + len(losses) * float(_batch_term(module, chunk))
            count += len(losses)
    return total / count


class Training:
    r"""One training run, which can be advanced a few epochs at a time.

    :func:`fit` runs one to the end. Running it in parts lets a caller race
    candidate models on the same split and stop the losers early: ``advance(k)``
    runs up to ``k`` more epochs, ``best`` is the best validation loss so far, and
    ``finish()`` restores the best weights and returns the history.

    Arguments:
        module: An estimator with a ``loss`` method returning :math:`(B,)`.
        tensors: Training tensors with a common first dimension :math:`N`, or a
            :class:`sbikit.runs.stream.StoreStream` of a store larger than memory.
        config: The training settings.
        name: The label of the progress bar and of the summary line.
        kind: What is trained, for the settings that ``config`` leaves automatic:
            ``"vectors"``, ``"structured"``, ``"likelihood"`` or ``"location"`` (see
            :meth:`TrainConfig.resolve`).
    """

    def __init__(self, module: nn.Module, tensors: tuple[Tensor, ...], config: TrainConfig,
                 name: str = "training", kind: str = "vectors") -> None:
        self.module, self.config, self.name = module, config, name
        self.device = torch.device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        # rows streamed from a store larger than memory (sbikit.runs.stream), or tensors in memory
        self.stream = tensors if hasattr(tensors, "batches") else None
        if self.stream is not None:
            self.order, self.train = self.stream.split, None
            self.val = [t.to(self.device) for t in self.stream.validation]
            n_train = self.stream.num_train
        else:
            n = len(tensors[0])
            self.order = order = torch.randperm(n, generator=self.generator)
            n_val = _num_validation(n, config)
            self.val = [t[order[:n_val]].to(self.device) for t in tensors]
            self.train = [t[order[n_val:]].to(self.device) for t in tensors]
            n_train = n - n_val
        self.batch_size, learning_rate, self.max_epochs, self.clip_norm, self.patience = config.resolve(n_train, kind)

        module.to(self.device)
        # foreach: one fused update over all parameters; torch picks it on CUDA only by default,
        # and on the CPU it saves a Python loop over dozens of small tensors per step
        self.optimizer = torch.optim.AdamW(
            module.parameters(), lr=learning_rate, weight_decay=config.weight_decay, foreach=True
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.max_epochs)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params] if config.average else None
        self.steps = 0
        self.history = {
            "train_loss": [],
            "validation_loss": [],
            "best_epoch": 0,
            "epochs": 0,
            "skipped_steps": 0,
            "batch_size": self.batch_size,
            "learning_rate": learning_rate,
            "max_epochs": self.max_epochs,
            "clip_norm": self.clip_norm,
            "patience": self.patience,
        }
        self.best, self.best_state, self.stale, self.nonfinite = math.inf, None, 0, 0
        self.stopped = False
        disable = None if config.show_progress is None else not config.show_progress
        self.bar = tqdm(total=self.max_epochs, desc=name, unit="epoch", disable=disable)
        # off a terminal tqdm is silent, so a line every half minute and a summary say how it goes
        self.lines = config.show_progress is None and self.bar.disable
        self.seconds = 0.0
        self.last_line = time.perf_counter()
        self.terminated = False
        self.checkpoints = None if config.checkpoint is None else Checkpoints(config.checkpoint, name)
        if self.checkpoints is not None:
            state = self.checkpoints.load()
            if state is not None:
                self._restore(state)
        if self.history["epochs"] == 0:
            self._validate_start()

    @property
    def done(self) -> bool:
        r"""Whether training has stopped early or run all its epochs."""

        return self.stopped or self.history["epochs"] >= self.max_epochs

    def advance(self, epochs: int | None = None) -> None:
        r"""Runs up to ``epochs`` more epochs (all that remain, if None)."""

        started = time.perf_counter()
        previous = _catch_sigterm(self) if self.checkpoints is not None else None
        try:
            remaining = self.max_epochs - self.history["epochs"]
            for _ in range(remaining if epochs is None else min(epochs, remaining)):
                if self.stopped or self.terminated:
                    break
                self._epoch()
        except BaseException:
            self.bar.close()
            raise
        finally:
            self.seconds += time.perf_counter() - started
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if self.terminated:  # saved at the end of the epoch: now the signal takes its course
            self.bar.close()
            os.kill(os.getpid(), signal.SIGTERM)
        if self.done:
            self.bar.close()

    def _validation_loss(self) -> float:
        r"""The module's mean loss over the validation rows, in large chunks."""

        _lend(self.module, torch.Generator().manual_seed(0))
        loss = _mean_loss(self.module, self.val, max(self.batch_size, 1024))
        _lend(self.module, None)
        return loss

    def _validate_start(self) -> None:
        r"""Makes the starting weights the first candidate for the weights kept.

        An estimator that starts at a fitted model (the regression adjustment's Gaussian,
        with the flow at the identity) then keeps it unless an epoch of training does
        better on validation: on a simulator that the Gaussian describes exactly, the
        flow can only fit the noise of the training rows.
        """

        self.module.eval()
        loss = self._validation_loss()
        self.history["initial_validation_loss"] = loss
        if math.isfinite(loss):
            self.best, self.best_state = loss, copy.deepcopy(self.module.state_dict())
            self.history["best_epoch"] = -1

    def _epoch(self) -> None:
        module, config, history = self.module, self.config, self.history
        epoch = history["epochs"]
        module.train()
        _lend(module, self.generator)
        total, count = 0.0, 0
        for batch in self._batches():
            loss = module.loss(*batch).mean() + _batch_term(module, batch)
            if not torch.isfinite(loss):
                history["skipped_steps"] += 1
                self.nonfinite += 1
                if self.nonfinite >= config.max_nonfinite:
                    raise TrainingError(
                        f"{self.nonfinite} non-finite losses in a row at epoch {epoch}; check the data for "
                        "extreme values, or lower TrainConfig.learning_rate."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                continue
            self.nonfinite = 0
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(module.parameters(), self.clip_norm)
            self.optimizer.step()
            if self.average is not None:
                self.steps += 1
                decay = min(config.average, (1 + self.steps) / (10 + self.steps))
                with torch.no_grad():
                    for average, param in zip(self.average, self.params):
                        average.lerp_(param, 1 - decay)
            total += float(loss.detach()) * len(batch[0])
            count += len(batch[0])
        module.eval()
        if self.average is not None:  # validate, and keep, the averaged weights
            with torch.no_grad():
                current = [p.detach().clone() for p in self.params]
                for param, average in zip(self.params, self.average):
                    param.copy_(average)
        val_loss = self._validation_loss()
        self.scheduler.step()
        history["train_loss"].append(total / max(count, 1))
        history["validation_loss"].append(val_loss)
        history["epochs"] = epoch + 1
        if val_loss < self.best:
            self.best, self.stale = val_loss, 0
            history["best_epoch"] = epoch
            self.best_state = copy.deepcopy(module.state_dict())
        else:
            self.stale += 1
        if self.average is not None:  # and train on from the optimizer's own
            with torch.no_grad():
                for param, kept in zip(self.params, current):
                    param.copy_(kept)
        self.bar.update()
        self.bar.set_postfix(train=f"{history['train_loss'][-1]:.3f}", val=f"{val_loss:.3f}")
        if self.stale >= self.patience:
            self.stopped = True
        if self.checkpoints is not None and (history["epochs"] % config.checkpoint_every == 0 or self.terminated):
            self.checkpoints.save(self._state(), history["epochs"])
        if self.lines and time.perf_counter() - self.last_line > 30:
            self.last_line = time.perf_counter()
            print(
                f"{self.name}: {epoch + 1}/{self.max_epochs} epochs, train loss {history['train_loss'][-1]:.4f}, "
                f"validation loss {val_loss:.4f}",
                file=sys.stderr,
            )

    def _batches(self):
        r"""One epoch's shuffled mini-batches: slices of the tensors in memory, or read from a store."""

        if self.stream is not None:
            for batch in self.stream.batches(self.batch_size, self.generator):
                yield [t.to(self.device) for t in batch]
            return
        n_train = len(self.train[0])
        perm = torch.randperm(n_train, generator=self.generator).to(self.device)
        for start in range(0, n_train, self.batch_size):
            index = perm[start : start + self.batch_size]
            yield [t[index] for t in self.train]

    def _state(self) -> dict:
        r"""Everything that the rest of training depends on, as tensors and plain values."""

        return {
            "format": 1,
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": copy.deepcopy(self.history),
            "best": self.best,
            "best_state": self.best_state,
            "average": self.average,
            "counters": {"steps": self.steps, "stale": self.stale, "nonfinite": self.nonfinite, "stopped": self.stopped},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "split": self.order,
        }

    def _restore(self, state: dict) -> None:
        r"""Continues from a checkpoint of a training run on the same data."""

        if not torch.equal(state["split"], self.order):
            raise TrainingError(
                f"the checkpoint in {self.checkpoints.directory} was made with another validation split (other "
                "data or TrainConfig.seed); pass another checkpoint directory to train afresh."
            )
        # checkpoints from before the clip and the patience were recorded do not say what they used
        recorded = [name for name in ("clip_norm", "patience") if name in state["history"]]
        settings = ("batch_size", "learning_rate", "max_epochs", *recorded)
        changed = [f"{name}: {state['history'].get(name)} there, {self.history[name]} now" for name in settings
                   if state["history"].get(name) != self.history[name]]
        if changed:
            raise TrainingError(
                f"the checkpoint in {self.checkpoints.directory} was made with other training settings "
                f"({'; '.join(changed)}); pass the TrainConfig it was made with, or another checkpoint "
                "directory to train afresh."
            )
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.best, self.best_state = state["best"], state["best_state"]
        if self.average is not None:
            with torch.no_grad():
                for average, saved in zip(self.average, state["average"]):
                    average.copy_(saved)
        counters = state["counters"]
        self.steps, self.stale, self.nonfinite, self.stopped = (
            counters["steps"], counters["stale"], counters["nonfinite"], counters["stopped"]
        )
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.bar.update(self.history["epochs"])

    def abandon(self, reason: str) -> None:
        r"""Ends training without keeping it (a candidate that lost a race), saying why."""

        self.bar.close()
        if self.lines:
            print(
                f"{self.name}: left after {self.history['epochs']} of {self.max_epochs} epochs, best validation loss "
                f"{self.best:.4f} ({reason})",
                file=sys.stderr,
            )

    def finish(self) -> dict:
        r"""Ends training: restores the weights with the best validation loss and returns the history.

        Raises:
            TrainingError: If no validation loss was finite.
        """

        self.bar.close()
        history = self.history
        if self.lines and self.best_state is not None:
            if history["epochs"] >= self.max_epochs:
                stopped = "reached max_epochs"
            else:
                stopped = "stopped early" if self.stopped else "stopped by the caller"
            print(
                f"{self.name}: {history['epochs']} epochs in {self.seconds:.1f} s ({stopped}); "
                f"best validation loss {best_validation(history)}",
                file=sys.stderr,
            )
        if self.best_state is None:
            raise TrainingError("the validation loss was never finite; no weights to keep.")
        self.module.load_state_dict(self.best_state)
        self.module.eval()
        return history


def fit(module: nn.Module, tensors: tuple[Tensor, ...], config: TrainConfig, name: str = "training",
        kind: str = "vectors") -> dict:
    r"""Trains ``module`` by minimizing ``module.loss(*tensors)``.

    Arguments:
        module: An estimator with a ``loss`` method returning :math:`(B,)`, and optionally a
            ``batch_loss`` method returning a scalar term over the whole batch, which is added
            to the mean of ``loss`` in every step and in validation.
        tensors: Training tensors with a common first dimension :math:`N`.
        config: The training settings.
        name: The label of the progress bar and of the summary line.
        kind: What is trained, for the settings that ``config`` leaves automatic
            (see :meth:`TrainConfig.resolve`).

    Returns:
        The history: per-epoch ``train_loss`` and ``validation_loss``, the
        ``initial_validation_loss`` of the starting weights, the ``best_epoch`` (the
        index of the epoch whose weights are kept, -1 for the starting weights), the
        number of ``epochs`` run and of ``skipped_steps``, and the ``batch_size``,
        ``learning_rate`` and ``max_epochs`` used.

    Raises:
        TrainingError: After ``config.max_nonfinite`` non-finite losses in a row.
    """

    run = Training(module, tensors, config, name, kind)
    run.advance()
    return run.finish()


def _catch_sigterm(run: Training):
    r"""Makes SIGTERM end ``run`` after a checkpoint at the end of its epoch; returns the old handler."""

    def handler(signum, frame) -> None:
        run.terminated = True

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be caught here
        return None


class Checkpoints:
    r"""Training checkpoints in a directory: ``<name>-<epoch>.<sha256 prefix>.pt``, the newest two kept.

    Each is written to a temporary file, fsynced and renamed, and loads with
    ``torch.load(weights_only=True)``. A checkpoint whose checksum or contents fail is
    skipped, with a warning, for the one before it.

    Arguments:
        directory: Where the checkpoints go.
        name: The training run's name (NPE's candidates have their own).
    """

    def __init__(self, directory: str | os.PathLike, name: str) -> None:
        self.directory = Path(directory)
        self.prefix = "".join(c if c.isalnum() else "-" for c in name).strip("-") or "training"

    def _files(self) -> list:
        pattern = re.compile(rf"^{re.escape(self.prefix)}-(\d{{6}})\.([0-9a-f]{{16}})\.pt$")
        if not self.directory.is_dir():
            return []
        found = [(int(m[1]), m[2], self.directory / m[0]) for m in map(pattern.match, os.listdir(self.directory)) if m]
        return sorted(found, reverse=True)

    def save(self, state: dict, epoch: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        atomic_write(self.directory / f"{self.prefix}-{epoch:06d}.{digest(data)}.pt", data)
        for _, _, old in self._files()[2:]:
            old.unlink(missing_ok=True)

    def load(self) -> dict | None:
        r"""The newest valid checkpoint, or None if there is none.

        Raises:
            TrainingError: If there are checkpoints and none is valid.
        """

        files, problems = self._files(), []
        for epoch, expected, path in files:
            data = path.read_bytes()
            try:
                if digest(data) != expected:
                    raise ValueError("its checksum does not match its contents")
                state = torch.load(io.BytesIO(data), weights_only=True)
            except Exception as error:  # noqa: BLE001 - any failure to read it means it is corrupt
                problems.append(f"{path.name}: {error}")
                continue
            if problems:
                warnings.warn(
                    f"skipped corrupt training checkpoints ({'; '.join(problems)}); resuming from {path.name}.",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return state
        if problems:
            raise TrainingError(
                f"every training checkpoint in {self.directory} is corrupt ({'; '.join(problems)}); delete them "
                "to train from the start."
            )
        return None
