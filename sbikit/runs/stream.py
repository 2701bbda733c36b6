r"""Training from a store larger than memory: its rows in shuffled chunks of shards.

A :class:`StoreStream` holds out whole shards for validation (kept in memory, at most
``max_validation`` rows or 16 MiB), and each epoch reads the other shards in a random
order into a buffer of about ``buffer_rows`` rows (at most 32 MiB), shuffles the buffer
and yields batches from it. Memory then stays near the buffer's size whatever the store's; the
shuffling is over a buffer, not the whole run, which for shards of a few thousand
i.i.d. simulations mixes as well. Rows that failed are skipped.

:func:`streamed` decides: a store whose rows would take more than a quarter of the
memory this process may use is streamed; a smaller one is read into memory. A structured
model's run (sets or series) streams its rows with their mask, padded to the run's widest.

:func:`member_rows` gives the members of mixed-effects groups as rows, from memory or from
a store read one shard at a time, for estimators that train on members (the local factor
of :class:`sbikit.HierarchicalNPE`, and :class:`sbikit.NLE`'s trials).
"""

__all__ = ["StoreStream", "member_rows", "streamed", "too_large"]

import numpy as np
import os
import torch

from collections.abc import Callable, Iterator
from torch import Tensor

from .chunk import stack_outputs
from .store import Store
from ..data import Simulations


def memory_limit() -> int:
    r"""The bytes this process may still use: the address-space limit, if set, or the free memory."""

    limits = []
    try:
        import resource  # POSIX only
    except ImportError:
        soft = None
    else:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        soft = None if soft == resource.RLIM_INFINITY else soft
    if soft is not None:
        try:
            with open("/proc/self/statm") as statm:
                used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            used = 0
        limits.append(max(soft - used, 0))
    try:  # Linux: free memory plus what the page cache would give back
        with open("/proc/meminfo") as meminfo:
            limits.append(next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable")) * 1024)
    except (OSError, ValueError, StopIteration):
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    return min(limits) if limits else 2**62


class StoreStream:
    r"""The valid rows of a complete store, for :class:`sbikit.train.Training`.

    Rows are tuples of tensors: :math:`(\theta, x)`, and for a structured model's store
    (sets or series) :math:`(\theta, x, \text{mask})`, padded to the run's widest row.

    Arguments:
        store: A complete store.
        validation_fraction: The share of shards held out for validation.
        seed: Seeds the choice of validation shards.
        buffer_rows: The rows read and shuffled together.
        max_validation: The most validation rows kept.
    """

    def __init__(self, store: Store, validation_fraction: float = 0.1, seed: int = 0, buffer_rows: int = 100_000,
                 max_validation: int = 50_000) -> None:
        self.width = (store.x_shape or (0,))[0] if store.structure is not None else None
        row = 4 * (store.theta_rows(0, 1).shape[1] + int(np.prod(store.x_shape or ()))) + (self.width or 0)
        buffer_rows = min(buffer_rows, max(1, 32 * 2**20 // row))
        max_validation = self.max_sample = min(max_validation, max(1000, 16 * 2**20 // row))
        self.store, self.buffer_rows = store, buffer_rows
        self.transform: Callable[..., tuple[Tensor, ...]] = lambda *rows: rows
        self.shards = [(start, stop, path) for start, stop, path in store._shard_files()]
        self.theta_file = np.load(store.path / "theta.npy", mmap_mode="r", allow_pickle=False)
        counts = [self._valid(path).sum() for _, _, path in self.shards]
        order = np.random.Generator(np.random.PCG64(seed)).permutation(len(self.shards))
        target = min(max_validation, max(1, round(validation_fraction * sum(counts))))
        held, rows = [], 0
        for k in order:
            if rows >= target or len(held) == len(self.shards) - 1:
                break
            held.append(int(k))
            rows += counts[k]
        self.validation_shards = sorted(held)
        self.train_shards = [k for k in range(len(self.shards)) if k not in set(held)]
        self.num_train = int(sum(counts[k] for k in self.train_shards))
        self.validation_rows = tuple(t[:max_validation] for t in self._rows(self.validation_shards))

    def _valid(self, path) -> np.ndarray:
        with np.load(path, allow_pickle=False) as fields:
            return fields["status"] == 0

    def _read(self, k: int) -> tuple[Tensor, ...]:
        start, stop, path = self.shards[k]
        with np.load(path, allow_pickle=False) as fields:
            ok = fields["status"] == 0
            x = torch.from_numpy(fields["x"][ok])
            mask = torch.from_numpy(fields["mask"][ok]) if self.width is not None else None
        theta = torch.from_numpy(np.array(np.asarray(self.theta_file[start:stop])[ok]))
        if mask is None:
            return theta, x
        # a shard's sets or series are padded to its own widest row: pad them to the run's
        x, mask, _ = stack_outputs([(len(x), x, mask, None)], self.width)
        return theta, x, mask

    def _rows(self, shards: list[int]) -> tuple[Tensor, ...]:
        parts = [self._read(k) for k in shards]
        return tuple(torch.cat(column) for column in zip(*parts))

    def sample(self, rows: int | None = None, seed: int = 0) -> Simulations:
        r"""Valid rows from random training shards, in memory (by default as many as the validation
        rows may be): for standardization, the regression adjustment and shapes."""

        rows = self.max_sample if rows is None else rows
        order = np.random.Generator(np.random.PCG64(seed)).permutation(self.train_shards)
        parts, count = [], 0
        for k in order:
            parts.append(self._read(int(k)))
            count += len(parts[-1][0])
            if count >= rows:
                break
        theta, x, *mask = (torch.cat(column)[:rows] for column in zip(*parts))
        return Simulations(theta, x, seed=self.store.seed, mask=mask[0] if mask else None,
                           structure=self.store.structure)

    @property
    def validation(self) -> list[Tensor]:
        return list(self.transform(*self.validation_rows))

    @property
    def split(self) -> Tensor:
        r"""Which shards are held out (what a training checkpoint checks on resume)."""

        return torch.tensor([self.shards[k][0] for k in self.validation_shards], dtype=torch.long)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[list[Tensor]]:
        r"""One epoch: shuffled batches of ``batch_size`` training rows, transformed."""

        order = [self.train_shards[k] for k in torch.randperm(len(self.train_shards), generator=generator).tolist()]
        buffer: list[tuple[Tensor, ...]] = []
        rows = 0
        for position, k in enumerate(order):
            buffer.append(self._read(k))
            rows += len(buffer[-1][0])
            last = position == len(order) - 1
            if rows < self.buffer_rows and not last:
                continue
            columns = [torch.cat(column) for column in zip(*buffer)]
            perm = torch.randperm(len(columns[0]), generator=generator)
            usable = len(perm) if last else len(perm) // batch_size * batch_size
            for start in range(0, usable, batch_size):
                index = perm[start : start + batch_size]
                yield list(self.transform(*(c[index] for c in columns)))
            rest = perm[usable:]
            buffer, rows = ([tuple(c[rest] for c in columns)], len(rest)) if len(rest) else ([], 0)


def too_large(data: object, budget: int | None = None) -> bool:
    r"""Whether ``data`` is a store too large for a quarter of ``budget`` bytes (by default
    :func:`memory_limit`), to be streamed rather than read into memory.

    Raises:
        StoreError: If it is a store with simulations missing.
    """

    if not isinstance(data, Store):
        return False
    if not data.complete:
        data.simulations()  # raises, saying what is missing
    shape = data.x_shape or ()
    row = 4 * (data.theta_rows(0, 1).shape[1] + int(np.prod(shape)))
    # training holds about three copies (the rows, their split, their unconstrained parameters)
    return 3 * row * len(data) > (memory_limit() if budget is None else budget) / 4


def streamed(data: object, budget: int | None = None) -> StoreStream | None:
    r"""A :class:`StoreStream` for a complete store too large for a quarter of ``budget``
    bytes (see :func:`too_large`); None for anything else."""

    return StoreStream(data) if too_large(data, budget) else None


def _valid_groups(store: Store) -> Iterator[Simulations]:
    r"""Each shard's valid groups, in index order, as :class:`sbikit.Simulations`."""

    for start, stop, fields in store.shards():
        if not fields["has_x"]:  # every simulation of the shard failed
            continue
        local = torch.from_numpy(fields["local"]) if "local" in fields else None
        part = Simulations(store.theta_rows(start, stop), torch.from_numpy(fields["x"]),
                           mask=torch.from_numpy(fields["mask"]), structure="set", theta_local=local)
        yield part[part.valid]


def member_rows(data: Simulations | Store, limit: int, seed: int) -> tuple[Tensor, Tensor, Tensor | None]:
    r"""The present members of the valid groups of mixed-effects simulations, one row each.

    Returns each member's group parameters :math:`(R, D)`, its observation :math:`(R, L)`
    and its local parameters :math:`(R, K)` (None if the data have none). Members are
    numbered group by group; beyond ``limit`` of them, ``limit`` are drawn at random
    (seeded by ``seed``), in the order drawn.

    A store is read one shard at a time, twice (to count, then to gather), so memory holds
    the chosen rows and one shard; simulations in memory are one part, gathered the same
    way, so both give the same rows in the same order.
    """

    memory = [data[data.valid]] if isinstance(data, Simulations) else None

    def groups() -> list[Simulations] | Iterator[Simulations]:  # a store is read again on each pass
        return memory if memory is not None else _valid_groups(data)

    counts = [int(part.mask.sum()) for part in groups()]
    total = sum(counts)
    if not total:
        raise ValueError("the simulations hold no valid group with members.")
    generator = torch.Generator().manual_seed(seed)
    wanted = torch.randperm(total, generator=generator)[:limit] if total > limit else torch.arange(total)
    ordered, drawn = wanted.sort()
    pieces, offset = [], 0
    for part, count in zip(groups(), counts):
        lo, hi = torch.searchsorted(ordered, torch.tensor([offset, offset + count])).tolist()
        group, member = part.mask.nonzero()[ordered[lo:hi] - offset].unbind(1)
        local = None if part.theta_local is None else part.theta_local[group, member]
        pieces.append((part.theta[group], part.x[group, member], local))
        offset += count
    theta, x, local = (torch.cat(column) if column[0] is not None else None for column in zip(*pieces))
    back = torch.empty_like(drawn)
    back[drawn] = torch.arange(len(drawn))  # from the sorted order back to the order drawn
    return theta[back], x[back], None if local is None else local[back]
