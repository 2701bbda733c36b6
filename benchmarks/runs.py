r"""Simulation runs: overhead per simulation, scaling on local processes and Dask, a
million simulations through a Dask ``LocalCluster`` into a store, and training from a
store larger than the memory the process may use.

    python benchmarks/runs.py [--only overhead|scaling|dask|stream] [--num-simulations N] [--markdown]

- ``overhead``: the time per simulation through ``simulate`` against calling the
  simulator directly, for no-op and cheap simulators, batched and unbatched, in this
  process and on 2 local worker processes (the extra time is the overhead).
- ``scaling``: a CPU-bound simulator of about 10 ms per call, on 1 and 2 local worker
  processes and on a Dask ``LocalCluster`` of 1 and 2 workers; the speed-up of 2 over 1.
- ``dask``: ``--num-simulations`` (1,000,000 by default for this part) cheap simulations
  through a 2-worker ``LocalCluster`` into a store: the time, and the driver's resident
  memory sampled along the run, which stays flat because each chunk is written and dropped.
- ``stream``: NPE trained for 2 epochs on a store of ``--num-simulations`` (1,000,000)
  simulations of 200 features (about 800 MB), in a child process whose address space
  is capped at what its imports take plus ``--budget-mb`` (400): the store is streamed.

Run it alone, on an idle machine: two processes on 2 cores slow each other down. To
compare with an older sbikit, run it with that version first on ``PYTHONPATH`` (cases
that it does not support are skipped)::

    git archive <commit> sbikit | tar -x -C /tmp/before && PYTHONPATH=/tmp/before python benchmarks/runs.py --only overhead
"""

import argparse
import inspect
import math
import numpy as np
import os
import shutil
import tempfile
import threading
import time
import torch

import sbikit

PRIOR = sbikit.BoxUniform(-torch.ones(3), torch.ones(3))
SUPPORTS_WORKERS = "workers" in inspect.signature(sbikit.simulate).parameters


def noop(theta):
    return theta


def noop_one(theta):
    return theta


def trivial(theta):
    return theta + 0.1 * torch.randn_like(theta)


def trivial_one(theta):
    return theta + 0.1 * torch.randn(3)


def trivial_numpy(theta):
    return theta + 0.1 * np.random.normal(size=3)


def sde(theta, steps=50, dt=0.02):
    r"""An Ornstein-Uhlenbeck path by Euler-Maruyama: 50 ``randn`` calls per batch."""

    x = torch.zeros(theta.shape[0])
    rate, scale = theta[:, 0].abs() + 0.1, theta[:, 1].abs() + 0.1
    path = []
    for _ in range(steps):
        x = x - rate * x * dt + scale * math.sqrt(dt) * torch.randn(theta.shape[0])
        path.append(x)
    return torch.stack(path, dim=-1)


def busy(theta, seconds=0.01):
    r"""CPU-bound work for about ``seconds`` (a pure-Python loop, which holds the GIL)."""

    end = time.process_time() + seconds
    total = 0.0
    while time.process_time() < end:
        for k in range(200):
            total += math.sin(k * float(theta[0]))
    return theta + 1e-12 * total


def _best(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _simulate(simulator, n, **options):
    return sbikit.simulate(simulator, PRIOR, n, seed=0, show_progress=False, **options)


def _steady(simulator, n: int, options: dict, chunk: int = 1000) -> float:
    r"""Seconds for ``n`` simulations on 2 worker processes once they have started (spawning one, which
    imports torch, takes a second or two per ``simulate`` call and is not counted)."""

    import functools

    from sbikit.runs.chunk import run_chunk
    from sbikit.runs.executors import ProcessExecutor, Task, preflight

    function = functools.partial(run_chunk, simulator, PRIOR, 0, **options)
    theta = PRIOR.sample((n,))
    executor = ProcessExecutor(preflight(function, simulator), 2, batched=options.get("batched", True))
    try:
        list(executor.run(Task(0, 0, 10, theta[:10]) for _ in range(8)))  # both workers up
        started = time.perf_counter()
        for _ in executor.run(Task(s, s, min(s + chunk, n), theta[s : s + chunk]) for s in range(0, n, chunk)):
            pass
        return time.perf_counter() - started
    finally:
        executor.close()


def overhead(n: int) -> list[list[str]]:
    theta = PRIOR.sample((n,))
    cases = [
        ("no-op, batched", noop, {}, lambda: noop(theta)),
        ("no-op, unbatched", noop_one, {"batched": False}, lambda: [noop_one(t) for t in theta]),
        ("trivial, batched torch", trivial, {}, lambda: trivial(theta)),
        ("trivial, unbatched torch", trivial_one, {"batched": False}, lambda: [trivial_one(t) for t in theta]),
        (
            "trivial, unbatched numpy",
            trivial_numpy,
            {"batched": False, "numpy": True},
            lambda: [trivial_numpy(t) for t in theta.double().numpy()],
        ),
        ("SDE (50 randn calls), batched torch", sde, {}, lambda: torch.cat([sde(t) for t in theta.split(1000)])),
    ]
    rows = []
    for name, simulator, options, direct in cases:
        plain = _best(direct)
        runs = [("this process", {})]
        if SUPPORTS_WORKERS and name.startswith("no-op"):
            runs.append(("2 processes, once started", {"workers": 2}))
        for where, extra in runs:
            through = _steady(simulator, n, options) if extra else _best(lambda: _simulate(simulator, n, **options))
            rows.append([f"{name}, {where}", f"{1e6 * through / n:.2f}", f"{1e6 * plain / n:.2f}",
                         f"{1e6 * (through - plain) / n:.2f}", f"{through / plain:.1f}"])
    return [["case", "simulate µs/sim", "direct µs/sim", "overhead µs/sim", "simulate / direct"], *rows]


def scaling(n: int) -> list[list[str]]:
    rows = [["executor", "workers", "seconds", "ms/sim", "speed-up"]]
    per_call = _best(lambda: busy(PRIOR.sample((1,))[0]), repeat=5)
    local = {}
    for workers in (1, 2):
        # workers=1 with a timeout runs in one worker process: the same costs as 2, one process fewer.
        # Each call spawns its workers (a second or two, importing torch): the time of a run of 20
        # simulations is subtracted, so that the figure is the time of the remaining n - 20
        run = lambda m: _simulate(busy, m, batched=False, batch_size=10, workers=workers, timeout=60)  # noqa: E731
        seconds = _best(lambda: run(n), repeat=1) - _best(lambda: run(20), repeat=1)
        local[workers] = seconds
        rows.append(["local processes (after start)", str(workers), f"{seconds:.2f}", f"{1e3 * seconds / (n - 20):.2f}",
                     f"{local[1] / seconds:.2f}"])
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        rows.append(["dask", "-", "not installed", "", ""])
        return rows
    dask = {}
    for workers in (1, 2):
        with Client(LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0")) as client:
            _simulate(busy, 20, batched=False, batch_size=10, executor=client)  # warm the workers up
            seconds = _best(lambda: _simulate(busy, n, batched=False, batch_size=10, executor=client), repeat=1)
        dask[workers] = seconds
        rows.append(["dask LocalCluster", str(workers), f"{seconds:.2f}", f"{1e3 * seconds / n:.2f}",
                     f"{dask[1] / seconds:.2f}"])
    rows.append(["(one direct call)", "", "", f"{1e3 * per_call:.2f}", ""])
    return rows


class _Memory(threading.Thread):
    r"""Samples this process's resident memory every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process, self.samples, self.stop = psutil.Process(), [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.samples.append((time.perf_counter(), self.process.memory_info().rss))


def dask_at_scale(n: int) -> list[list[str]]:
    from dask.distributed import Client, LocalCluster

    directory = tempfile.mkdtemp()
    try:
        with Client(LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")) as client:
            monitor = _Memory()
            monitor.start()
            started = time.perf_counter()
            store = os.path.join(directory, "run")
            # simulate() returns the run read back (N x 3 floats); the driver's memory during the run is what grows
            # with N if results are held, so it is sampled until the last shard is written
            sbikit.simulate(trivial, PRIOR, n, seed=0, store=store, executor=client, batch_size=10_000,
                            show_progress=False)
            seconds = time.perf_counter() - started
            monitor.stop.set()
        samples = monitor.samples
        rss = [r for _, r in samples]
        quarter = [rss[int(q * (len(rss) - 1))] / 2**20 for q in (0.1, 0.25, 0.5, 0.75, 1.0)] if rss else []
        return [
            ["simulations", "seconds", "µs/sim", "driver RSS MiB at 10% / 25% / 50% / 75% / 100% of the run", "peak"],
            [f"{n:,}", f"{seconds:.1f}", f"{1e6 * seconds / n:.1f}", " / ".join(f"{q:.0f}" for q in quarter),
             f"{max(rss) / 2**20:.0f}" if rss else ""],
        ]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def wide(theta, features=200):
    r"""Outputs of ``features`` values per simulation: a store that takes room."""

    return theta.repeat(1, features // 3 + 1)[:, :features] + 0.1 * torch.randn(len(theta), features)


def _train_child(store: str, budget_mb: int) -> None:
    r"""In a child process: caps the address space at what it uses now plus ``budget_mb``, then trains."""

    import resource

    with open("/proc/self/statm") as statm:
        fields = statm.read().split()
    used, base = (int(f) * os.sysconf("SC_PAGE_SIZE") for f in fields[:2])
    limit = used + budget_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    started = time.perf_counter()
    posterior = sbikit.NPE(PRIOR, adjust=False, training=sbikit.TrainConfig(max_epochs=2, show_progress=False)).fit(
        sbikit.open_store(store)
    )
    # VmHWM, the peak resident memory of this program: ru_maxrss would carry the parent's across fork and exec
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 2**10
    print(f"{time.perf_counter() - started:.1f} {base / 2**20:.0f} {peak:.0f} {posterior.history['train_loss'][-1]:.3f}")


def streaming(n: int, budget_mb: int) -> list[list[str]]:
    import subprocess
    import sys

    directory = tempfile.mkdtemp()
    try:
        store = os.path.join(directory, "run")
        sbikit.simulate(wide, PRIOR, n, seed=0, store=store, batch_size=10_000, show_progress=False)
        size = sum(f.stat().st_size for f in __import__("pathlib").Path(store).rglob("*") if f.is_file())
        # glibc reserves 64 MiB of address space per malloc arena and thread: two arenas keep the cap about data
        env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--train-child", store, str(budget_mb)], capture_output=True,
                             text=True, check=True, env=env).stdout.split()
        return [
            ["simulations", "store MiB", "allowed MiB (address space above the imports)", "2 epochs s",
             "RSS after imports MiB", "peak RSS MiB", "last train loss"],
            [f"{n:,}", f"{size / 2**20:.0f}", str(budget_mb), *out],
        ]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _print(rows: list[list[str]], markdown: bool) -> None:
    header, lines = rows[0], rows[1:]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|:--|" + "--:|" * (len(header) - 1))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["overhead", "scaling", "dask", "stream"], action="append")
    parser.add_argument("--budget-mb", type=int, default=400, help="stream: the memory allowed to training")
    parser.add_argument("--train-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--num-simulations", type=int, default=None,
                        help="overhead: 20,000; scaling: 2,000; dask: 1,000,000 by default")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.train_child:
        _train_child(args.train_child[0], int(args.train_child[1]))
        return
    parts = args.only or ["overhead", "scaling", "dask", "stream"]
    if "overhead" in parts:
        n = args.num_simulations or 20_000
        print(f"Overhead: {n} simulations, torch {torch.__version__}, 1 thread, best of 3; on 2 processes, "
              "chunks of 1,000 once the workers run (the executor alone), 1 run.")
        _print(overhead(n), args.markdown)
    if "scaling" in parts and SUPPORTS_WORKERS:
        n = args.num_simulations or 2_000
        print(f"Scaling: {n} simulations of a CPU-bound simulator, chunks of 10.")
        _print(scaling(n), args.markdown)
    if "dask" in parts and SUPPORTS_WORKERS:
        n = args.num_simulations or 1_000_000
        print(f"Dask at scale: {n:,} simulations into a store, chunks of 10,000, 2 workers.")
        _print(dask_at_scale(n), args.markdown)
    if "stream" in parts and SUPPORTS_WORKERS:
        n = args.num_simulations or 1_000_000
        print(f"Streaming: NPE on a store of {n:,} simulations of 200 features, in a process allowed "
              f"{args.budget_mb} MiB more than its imports take.")
        _print(streaming(n, args.budget_mb), args.markdown)


if __name__ == "__main__":
    main()
