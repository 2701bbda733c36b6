r"""Where chunks run: in this process, in local worker processes, or on a Dask cluster.

An executor takes tasks (consecutive indices and their parameters) and yields, for
each, one :class:`~sbikit.runs.chunk.Chunk` that covers all its indices, in any
order. All three call the same chunk function, so they give the same outputs.

- :class:`SerialExecutor` calls it in this process (clean tracebacks).
- :class:`ProcessExecutor` sends it to ``workers`` spawned processes. A worker
  reports after each simulator call; one that reports nothing for ``timeout``
  seconds is killed and replaced, and so is one that dies. Its task is split: the
  simulations before the culprit are redone, the culprit is retried (``retries``
  times) and then recorded as ``"timeout"`` or ``"crashed"``, and the rest run on.
  A batched call that runs past the timeout is split into calls of one simulation.
- :class:`DaskExecutor` submits chunks to a ``distributed.Client``. Each thread of a
  Dask worker runs its chunks through a one-worker :class:`ProcessExecutor`: away
  from the worker's other threads, which draw from ``random``, and in a process that
  a timeout can kill and replace, as locally.

A simulation that raises is never retried: the exception is deterministic, given
the simulation's seed.
"""

__all__ = ["DaskExecutor", "ProcessExecutor", "SerialExecutor", "Task", "WorkerError", "preflight"]

import collections
import hashlib
import multiprocessing
import multiprocessing.connection
import numpy as np
import pickle
import threading
import time
import torch
import traceback

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from torch import Tensor

from .chunk import Chunk, draw_prior, stack_outputs
from .seeds import simulation_seeds
from ..data import Failure


@dataclass
class Task:
    r"""Simulations ``start`` to ``stop - 1``, with their parameters :math:`(stop - start, D)`."""

    cell: int
    start: int
    stop: int
    theta: Tensor

    def __len__(self) -> int:
        return self.stop - self.start


_ARRAYS = ("theta", "x", "mask", "local")  # a chunk's tensors


def _to_numpy(chunk: Chunk) -> Chunk:
    r"""Tensors pickle through torch's own serializer, a millisecond each; arrays travel faster."""

    for name in _ARRAYS:
        value = getattr(chunk, name)
        setattr(chunk, name, None if value is None else value.numpy())
    return chunk


def _to_torch(chunk: Chunk) -> Chunk:
    for name in _ARRAYS:
        value = getattr(chunk, name)
        setattr(chunk, name, None if value is None else torch.from_numpy(value))
    return chunk


def _format(error: BaseException | None) -> str:
    return "" if error is None else "".join(traceback.format_exception(type(error), error, error.__traceback__))


def concatenate(theta: Tensor, pieces: list[tuple[int, Chunk, int]], start: int) -> Chunk:
    r"""Joins chunks ``(start, chunk, attempt)`` that tile ``theta``'s rows into one chunk."""

    pieces = sorted(pieces, key=lambda p: p[0])
    x, mask, local = stack_outputs([(len(c), c.x, c.mask, c.local) for _, c, _ in pieces])
    failures = sorted((f for _, c, _ in pieces for f in c.failures), key=lambda f: f.index)
    errors = [c for _, c, _ in pieces if c.error is not None or c.traceback]
    out = Chunk(
        theta,
        x,
        failures,
        any(c.unattributed for _, c, _ in pieces),
        any(c.global_draws for _, c, _ in pieces),
        np.concatenate([c.durations for _, c, _ in pieces]),
        errors[0].error if errors else None,
        errors[0].traceback if errors else "",
        mask=mask,
        local=local,
    )
    out.attempts = np.concatenate([np.full(len(c), a, np.uint8) for _, c, a in pieces])
    return out


def _lost(theta: Tensor, index: int, kind: str, message: str, attempt: int, seconds: float) -> Chunk:
    r"""The chunk of one simulation that timed out or whose process died."""

    return Chunk(theta, None, [Failure(index, kind, message, "", attempt)], durations=np.array([seconds]))


class SerialExecutor:
    r"""Runs chunks one after the other in this process."""

    def __init__(self, function: Callable) -> None:
        self.function = function

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Chunk]]:
        for task in tasks:
            chunk = self.function(task.start, task.stop, theta=task.theta)
            chunk.attempts = np.ones(len(task), np.uint8)
            yield task, chunk

    def close(self) -> None:
        pass


def _worker_main(conn, counter, payload: bytes) -> None:
    r"""A worker process: runs the pieces it receives until its pipe closes."""

    import cloudpickle
    import signal

    # Ctrl-C reaches the whole process group: the driver stops, and kills its workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    function = cloudpickle.loads(payload)

    def progress(k: int) -> None:
        counter.value = k

    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        start, stop, theta = pickle.loads(message)
        counter.value = 0
        try:
            chunk = function(start, stop, theta=torch.from_numpy(theta), progress=progress)
        except BaseException as error:  # noqa: BLE001 - a bug in the run (not a failed simulation) goes to the driver
            try:
                reply = pickle.dumps(("raise", error, _format(error)))
            except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
                reply = pickle.dumps(("raise", RuntimeError(f"{type(error).__name__}: {error}"), _format(error)))
        else:
            chunk.traceback, chunk.error = _format(chunk.error), None
            reply = pickle.dumps(("ok", _to_numpy(chunk), ""), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            conn.send_bytes(reply)
        except ConnectionError:  # the driver is gone (killed, or a Dask worker that died): no one reads it
            return


class WorkerError(RuntimeError):
    r"""The run itself failed in a worker (not one simulation): its traceback follows."""


class _Worker:
    def __init__(self, context, payload: bytes) -> None:
        self.counter = context.Value("q", 0, lock=False)
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, self.counter, payload), daemon=True)
        # Dask's worker processes are daemonic, and multiprocessing refuses children to those
        # (distributed.worker.daemon); ours are daemonic themselves, so they end with their parent
        config = multiprocessing.current_process()._config
        daemon = config.pop("daemon", None)
        try:
            self.process.start()
        finally:
            if daemon is not None:
                config["daemon"] = daemon
        child.close()
        self.piece: tuple | None = None
        self.since = self.seen = 0.0

    def send(self, piece: tuple) -> None:
        _, start, stop, _, theta = piece
        self.piece = piece
        self.counter.value = -1  # the worker sets 0 when it starts: a spawning worker's imports do not count
        self.seen = -1
        self.since = time.monotonic()
        self.conn.send_bytes(pickle.dumps((start, stop, theta.numpy()), protocol=pickle.HIGHEST_PROTOCOL))

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class ProcessExecutor:
    r"""Runs chunks in ``workers`` spawned processes; see the module docstring.

    Arguments:
        payload: The chunk function, pickled with cloudpickle.
        workers: The number of processes.
        timeout: Seconds a simulator call may run; None for no limit.
        retries: How often a simulation that timed out or crashed is run again.
        batched: Whether the simulator takes batches (a timed-out batch is split).
    """

    def __init__(self, payload: bytes, workers: int, timeout: float | None = None, retries: int = 1,
                 batched: bool = True) -> None:
        self.payload, self.timeout, self.retries, self.batched = payload, timeout, retries, batched
        self.context = multiprocessing.get_context("spawn")
        self.workers = [_Worker(self.context, payload) for _ in range(workers)]
        self.replaced = 0

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self.context, self.payload)
        self.workers[self.workers.index(worker)] = fresh
        self.replaced += 1
        return fresh

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Chunk]]:
        tasks = iter(tasks)
        queue: collections.deque = collections.deque()  # pieces: (cell key, start, stop, attempt, theta)
        partial: dict[int, list] = {}  # task key -> [task, pieces done, simulations left]
        exhausted = False
        tick = 0.05 if self.timeout is not None else None
        while True:
            for worker in self.workers:
                if worker.piece is not None:
                    continue
                if not queue and not exhausted:
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                    else:
                        partial[id(task)] = [task, [], len(task)]
                        queue.append((id(task), task.start, task.stop, 1, task.theta))
                if queue:
                    worker.send(queue.popleft())
            busy = [w for w in self.workers if w.piece is not None]
            if not busy:
                if exhausted and not queue:
                    return
                continue
            ready = set(multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=tick
            ))
            finished = []
            for worker in busy:
                key, start, stop, attempt, theta = worker.piece
                if worker.conn in ready:
                    try:
                        status, value, text = pickle.loads(worker.conn.recv_bytes())
                    except (EOFError, OSError):
                        finished += self._fault(worker, "crashed", queue)
                        continue
                    worker.piece = None
                    if status == "raise":
                        raise WorkerError(f"the run failed in a worker process:\n{text}") from value
                    finished.append((key, start, _to_torch(value), attempt))
                elif worker.process.sentinel in ready:
                    finished += self._fault(worker, "crashed", queue)
                elif self.timeout is not None:
                    now, count = time.monotonic(), worker.counter.value
                    if count != worker.seen or count < 0:
                        worker.seen, worker.since = count, now
                    elif now - worker.since > self.timeout:
                        finished += self._fault(worker, "timeout", queue)
            for key, start, chunk, attempt in finished:
                entry = partial[key]
                entry[1].append((start, chunk, attempt))
                entry[2] -= len(chunk)
                if entry[2] == 0:
                    del partial[key]
                    task = entry[0]
                    yield task, concatenate(task.theta, entry[1], task.start)

    def _fault(self, worker: _Worker, kind: str, queue: collections.deque) -> list:
        r"""Replaces a worker that timed out or died; requeues its piece, split around the culprit."""

        key, start, stop, attempt, theta = worker.piece
        count, seconds = max(worker.counter.value, 0), time.monotonic() - worker.since
        code = worker.process.exitcode
        if kind == "crashed" and worker.counter.value < 0:
            # it died before it took its piece: every replacement would too
            worker.kill()
            raise WorkerError(
                f"a worker process died (exit code {code}) before its first simulation: it could not load the "
                "simulator, or import what the simulator needs (its error is printed above). Run with workers=1 "
                "to debug it in this process."
            )
        self._replace(worker)
        n = stop - start
        if self.batched and n > 1 and count == 0:
            # a batched call: no culprit is known, so its simulations run one per call
            queue.extendleft((key, i, i + 1, attempt, theta[i - start : i + 1]) for i in range(stop - 1, start - 1, -1))
            return []
        culprit = start + min(count, n - 1)
        done = []
        if culprit + 1 < stop:
            queue.appendleft((key, culprit + 1, stop, attempt, theta[culprit + 1 - start :]))
        if attempt <= self.retries:
            queue.appendleft((key, culprit, culprit + 1, attempt + 1, theta[culprit - start : culprit - start + 1]))
        else:
            if kind == "timeout":
                message = f"ran past the timeout of {self.timeout:g} s; its worker process was killed and replaced"
            else:
                message = f"its worker process died (exit code {code}) and was replaced"
            done.append((key, culprit, _lost(theta[culprit - start : culprit - start + 1], culprit, kind, message,
                                             attempt, seconds), attempt))
        if culprit > start:
            queue.appendleft((key, start, culprit, attempt, theta[: culprit - start]))
        return done

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()


# ---- Dask -------------------------------------------------------------------------------------

_DASK = threading.local()  # per thread of a Dask worker: its one-process pool


def _dask_piece(payload: bytes, start: int, stop: int, timeout: float | None, retries: int, batched: bool) -> Chunk:
    r"""Runs on a Dask worker: one chunk, through a one-process pool of this worker thread's own.

    A Dask worker's other threads (its event loop, other tasks) use ``random`` and may use
    numpy's global generator, which an unbatched simulator draws from after its seeding; in a
    process of its own, a chunk's draws are its own, and a timeout can kill that process.
    The chunk's parameters are drawn here again from their seeds (the values the run wrote),
    so that a task is a few numbers: for a ``LocalCluster`` the scheduler runs in the driver's
    process, which then holds no data for the tasks.
    """

    import cloudpickle

    key = (hashlib.sha256(payload).hexdigest(), timeout, retries, batched)
    if getattr(_DASK, "key", None) != key:
        if getattr(_DASK, "pool", None) is not None:
            _DASK.pool.close()
        _DASK.key, _DASK.pool = key, ProcessExecutor(payload, 1, timeout, retries, batched)
        _DASK.prior, _DASK.root = cloudpickle.loads(payload).args[1:3]  # partial(run_chunk, simulator, prior, root)
    theta = draw_prior(_DASK.prior, simulation_seeds(_DASK.root, np.arange(start, stop)))
    [(_, chunk)] = list(_DASK.pool.run([Task(start, start, stop, theta)]))
    return chunk


class DaskExecutor:
    r"""Runs chunks as tasks of a ``distributed.Client``, at most two per worker thread in flight."""

    def __init__(self, client, payload: bytes, timeout: float | None = None, retries: int = 1,
                 batched: bool = True) -> None:
        self.client, self.timeout, self.retries, self.batched = client, timeout, retries, batched
        [self.payload] = client.scatter([payload], broadcast=True, hash=False)
        threads = sum(client.nthreads().values()) or 1
        self.in_flight = 2 * threads

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Chunk]]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        tasks = iter(tasks)
        submitted = {}

        def submit() -> bool:
            task = next(tasks, None)
            if task is None:
                return False
            future = self.client.submit(_dask_piece, self.payload, task.start, task.stop, self.timeout, self.retries,
                                        self.batched, pure=False)
            submitted[future.key] = task
            pending.add(future)
            return True

        pending = as_completed()
        for _ in range(self.in_flight):
            if not submit():
                break
        for future in pending:
            task = submitted.pop(future.key)
            try:
                chunk = future.result()
            except KilledWorker as error:
                lost = [Failure(i, "crashed", f"the Dask worker running it died ({error})", "", 1)
                        for i in range(task.start, task.stop)]
                chunk = Chunk(task.theta, None, lost, durations=np.zeros(len(task)))
                chunk.attempts = np.ones(len(task), np.uint8)
            future.release()
            yield task, chunk
            submit()

    def close(self) -> None:
        pass


def preflight(function: Callable, simulator: Callable) -> bytes:
    r"""Pickles the chunk function with cloudpickle and loads it back, as a worker will.

    Raises:
        TypeError: Naming what failed to pickle, and what to do instead.
    """

    import cloudpickle

    try:
        payload = cloudpickle.dumps(function)
        cloudpickle.loads(payload)
    except Exception as error:  # noqa: BLE001 - any failure here means the workers cannot get the simulator
        name = getattr(simulator, "__qualname__", type(simulator).__name__)
        raise TypeError(
            f"the simulator {name!r} cannot be sent to worker processes: cloudpickle failed with "
            f"{type(error).__name__}: {error}. Open files, locks, sockets and other handles inside the "
            "simulator instead of holding them in it or in the variables it uses (a closure or an object's "
            "attributes), or run it in this process with workers=1 and no executor."
        ) from error
    return payload
