"""Fault injection: simulators that raise, return NaN, hang or die; drivers that are killed;
stores that are corrupted, full, or resumed by two processes at once (issue 10, tests 1-13)."""

import errno
import numpy as np
import os
import pytest
import signal
import subprocess
import sys
import threading
import time
import torch

from pathlib import Path

import sbikit
import faulty

from sbikit.runs import SimulationError, StoreWriteError, open_store
from sbikit.runs.chunk import draw_prior
from sbikit.runs.seeds import simulation_seed, simulation_seeds

pytestmark = pytest.mark.fault
PRIOR = faulty.PRIOR
TESTS = Path(__file__).resolve().parent


def thetas(n, seed=0):
    return draw_prior(PRIOR, simulation_seeds(seed, np.arange(n)))


def logged_indices(log: Path, theta: torch.Tensor) -> list[int]:
    r"""The indices of the simulations a logging simulator was called on, one per call."""

    keys = {float(t): i for i, t in enumerate(theta[:, 0].tolist())}
    return [keys[float(line.split()[0])] for line in log.read_text().splitlines()]


def driver_command(path, n, size):
    return [sys.executable, "-c", f"import faulty; faulty.run({str(path)!r}, {n}, {size})"]


def quiet(**kwargs):
    return dict(show_progress=False, **kwargs)


# 1 -----------------------------------------------------------------------------------------------
def test_raising_in_one_percent_is_recorded_and_aligned(tmp_path):
    n = 2000
    with pytest.warns(RuntimeWarning, match=r"raised.*FloatingPointError: solver diverged"):
        data = sbikit.simulate(faulty.flaky, PRIOR, n, seed=0, batched=False, batch_size=250,
                               store=tmp_path / "a", **quiet())
    errors = [f for f in data.failures if f.status == "error"]
    assert 0.005 < len(errors) / n < 0.02 and len(errors) == len(data.failures)
    assert all(f.error_type == "FloatingPointError" for f in errors)
    expected = torch.tensor([np.modf(float(t) * 997.0)[0] % 1.0 < 0.01 for t in data.theta[:, 0]])
    assert torch.equal(~data.valid, expected)
    # rows stay aligned: every other row is its own parameters plus small noise
    ok = data.valid
    assert (data.x[ok] - data.theta[ok]).abs().max() < 0.6
    records = open_store(tmp_path / "a").records
    assert list(records["index"]) == list(range(n))
    assert set(records["status"][expected.numpy()]) == {"error"} and set(records["status"][~expected.numpy()]) == {"ok"}
    assert (records["duration"] >= 0).all() and set(records["attempt"]) == {1}


def test_raising_under_raise_names_the_index_and_seed():
    first = next(i for i, t in enumerate(thetas(2000)[:, 0]) if np.modf(float(t) * 997.0)[0] % 1.0 < 0.01)
    with pytest.raises(SimulationError, match=rf"simulation {first} \(seed {simulation_seed(0, first)}\) raised "
                                              r"FloatingPointError: solver diverged") as info:
        sbikit.simulate(faulty.flaky, PRIOR, 2000, seed=0, batched=False, on_error="raise", **quiet())
    assert isinstance(info.value.__cause__, FloatingPointError)  # the simulator's own traceback


# 2 -----------------------------------------------------------------------------------------------
def test_too_many_failures_stop_the_run_early_with_a_summary(tmp_path):
    with pytest.raises(SimulationError, match="stopped early") as info:
        sbikit.simulate(faulty.half_broken, PRIOR, 5000, seed=0, batched=False, batch_size=100,
                        max_failure_fraction=0.2, store=tmp_path / "a", **quiet())
    message = str(info.value)
    assert "ValueError: step size underflow" in message and "KeyError: 'missing rate constant'" in message
    assert message.index("step size underflow") < message.index("missing rate constant")  # most common first
    assert 0 < len(open_store(tmp_path / "a").records["index"]) < 5000  # it stopped early


# 3 -----------------------------------------------------------------------------------------------
def test_nan_and_inf_are_invalid_and_never_trained_on(tmp_path, quick):
    with pytest.warns(RuntimeWarning, match=r"returned NaN"):
        data = sbikit.simulate(faulty.non_finite, PRIOR, 400, seed=0, store=tmp_path / "a", **quiet())
    expected = (data.theta[:, 0] > 0.8) | (data.theta[:, 0] < -0.8)
    assert torch.equal(~data.valid, expected)
    assert {f.status for f in data.failures} == {"invalid"} and {f.kind for f in data.failures} == {"nan", "inf"}
    assert set(open_store(tmp_path / "a").records["status"][expected.numpy()]) == {"invalid"}
    with pytest.warns(RuntimeWarning, match=f"excluding {int(expected.sum())} of 400"):
        posterior = sbikit.NPE(PRIOR, training=quick, adjust=False).fit(open_store(tmp_path / "a"))
    assert np.isfinite(posterior.history["train_loss"]).all()


# 4 -----------------------------------------------------------------------------------------------
def test_a_hanging_simulation_times_out_and_its_worker_is_replaced(tmp_path, monkeypatch):
    n, culprit = 60, 23
    theta = thetas(n)
    monkeypatch.setenv("SBIKIT_TEST_HANG", repr(float(theta[culprit, 0])))
    monkeypatch.setenv("SBIKIT_TEST_LOG", str(tmp_path / "log"))
    with pytest.warns(RuntimeWarning, match="1 timed out"):
        data = sbikit.simulate(faulty.hangs, PRIOR, n, seed=0, batched=False, batch_size=10, workers=2, timeout=2,
                               store=tmp_path / "a", **quiet())
    [failure] = data.failures
    assert failure.index == culprit and failure.status == "timeout" and failure.attempt == 2  # retried once
    monkeypatch.delenv("SBIKIT_TEST_HANG")
    clean = sbikit.simulate(faulty.hangs, PRIOR, n, seed=0, batched=False, **quiet())
    ok = torch.arange(n) != culprit
    assert torch.equal(data.x[ok], clean.x[ok]) and data.x[culprit].isnan().all()
    assert open_store(tmp_path / "a").records["attempt"][culprit] == 2


# 5 -----------------------------------------------------------------------------------------------
def test_a_killed_worker_redoes_only_its_chunk(tmp_path, monkeypatch):
    n, culprit, size = 80, 37, 10
    theta = thetas(n)
    log = tmp_path / "log"
    monkeypatch.setenv("SBIKIT_TEST_KILL", repr(float(theta[culprit, 0])))
    monkeypatch.setenv("SBIKIT_TEST_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("SBIKIT_TEST_LOG", str(log))
    data = sbikit.simulate(faulty.killed_once, PRIOR, n, seed=0, batched=False, batch_size=size, workers=2,
                           store=tmp_path / "a", **quiet())
    assert (tmp_path / "killed").exists() and data.failures == ()
    calls = np.bincount(logged_indices(log, theta), minlength=n)
    assert list(calls[:2]) == [2, 2]  # the pre-flight ran simulations 0 and 1 in this process first
    calls[:2] -= 1
    chunk = np.arange(n) // size == culprit // size
    assert (calls[~chunk] == 1).all()  # no other chunk was redone
    assert (calls[chunk] >= 1).all() and calls[culprit] == 2  # the culprit ran again, after the kill
    assert (calls[chunk & (np.arange(n) > culprit)] == 1).all()  # what came after it ran once
    monkeypatch.delenv("SBIKIT_TEST_LOG")
    clean = sbikit.simulate(faulty.killed_once, PRIOR, n, seed=0, batched=False, **quiet())
    assert torch.equal(data.x, clean.x)  # no duplicates, no gaps
    records = open_store(tmp_path / "a").records
    assert list(records["index"]) == list(range(n)) and records["attempt"][culprit] == 2


# 6 -----------------------------------------------------------------------------------------------
def test_a_killed_driver_resumes_to_the_same_store(tmp_path):
    n, size, path = 200, 10, tmp_path / "a"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]), OMP_NUM_THREADS="1")
    driver = subprocess.Popen(driver_command(path, n, size), env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(path.glob("shards/*.npz"))) < 5:
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    shards = len(list((path / "shards").glob("*.npz")))
    assert 5 <= shards < n // size, "the driver was to be killed mid-run"
    resumed = sbikit.simulate(faulty.slow, PRIOR, n, seed=0, batched=False, batch_size=size, store=path, **quiet())
    whole = sbikit.simulate(faulty.slow, PRIOR, n, seed=0, batched=False, batch_size=size, store=tmp_path / "b",
                            **quiet())
    assert torch.equal(resumed.x, whole.x) and torch.equal(resumed.theta, whole.theta)
    a, b = open_store(path), open_store(tmp_path / "b")
    assert [(s, e) for s, e, _ in a.shards()] == [(s, e) for s, e, _ in b.shards()]
    for (_, _, fa), (_, _, fb) in zip(a.shards(), b.shards()):
        assert np.array_equal(fa["x"], fb["x"]) and np.array_equal(fa["status"], fb["status"])
    assert (path / "theta.npy").read_bytes() == (tmp_path / "b" / "theta.npy").read_bytes()


def test_the_workers_of_a_killed_driver_end_without_a_traceback(tmp_path):
    n, culprit, size, path = 3000, 3, 20, tmp_path / "a"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]), OMP_NUM_THREADS="1",
               SBIKIT_TEST_HANG=repr(float(thetas(n)[culprit, 0])))
    # 5 ms a simulation, so that the run is far from done when the culprit's chunk is written
    code = ("import faulty, sbikit, time\n"
            "def slow_hangs(theta):\n    time.sleep(0.005)\n    return faulty.hangs(theta)\n"
            f"sbikit.simulate(slow_hangs, faulty.PRIOR, {n}, seed=0, batched=False, batch_size={size}, workers=2, "
            f"timeout=2, retries=0, store={str(path)!r}, show_progress=False)")
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(path.glob(f"shards/000000000000-{size:012d}.*.npz")):
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)  # its workers are mid-chunk, their pipes to it now closed
    _, stderr = driver.communicate(timeout=60)  # the end of stderr: the workers have ended too
    assert driver.returncode == -signal.SIGKILL
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    store = open_store(path)
    assert not store.complete, "the driver was to be killed mid-run"
    [failure] = store.failures
    assert failure.index == culprit and failure.status == "timeout" and "worker process was killed" in failure.message
    assert store.records["status"][culprit] == "timeout" and (np.delete(store.records["status"], culprit) == "ok").all()


# 7 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("simulator, batched", [(faulty.noisy, True), (faulty.noisy_one, False)])
def test_workers_and_chunk_sizes_do_not_change_x(simulator, batched):
    n = 200
    one = sbikit.simulate(simulator, PRIOR, n, seed=3, batched=batched, batch_size=100, **quiet())
    two = sbikit.simulate(simulator, PRIOR, n, seed=3, batched=batched, batch_size=1, workers=2, **quiet())
    assert torch.equal(one.x, two.x) and torch.equal(one.theta, two.theta)
    other = sbikit.simulate(simulator, PRIOR, n, seed=4, batched=batched, batch_size=100, **quiet())
    assert not torch.equal(one.x, other.x)


# 8 -----------------------------------------------------------------------------------------------
def test_corrupt_shards_and_leftover_temp_files_are_quarantined(tmp_path):
    path = tmp_path / "a"
    first = sbikit.simulate(faulty.noisy, PRIOR, 100, seed=0, batch_size=20, store=path, **quiet())
    shards = sorted((path / "shards").glob("*.npz"))
    bad = bytearray(shards[1].read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    shards[1].write_bytes(bytes(bad))
    leftover = path / "shards" / f".{shards[3].name}.1a2b3c4d.tmp"
    leftover.write_bytes(shards[3].read_bytes()[:100])  # a write cut short
    shards[3].unlink()
    again = sbikit.simulate(faulty.noisy, PRIOR, 100, seed=0, batch_size=20, store=path, **quiet())
    assert torch.equal(again.x, first.x)
    quarantined = {p.name.split(".")[0] for p in (path / "quarantine").iterdir() if not p.name.endswith(".why")}
    assert len(quarantined) == 2 and not leftover.exists()
    ranges = sorted(p.name.split(".")[0] for p in (path / "shards").iterdir())
    assert ranges == sorted(p.name.split(".")[0] for p in shards)  # (the durations recorded differ)


# 9 -----------------------------------------------------------------------------------------------
def test_a_full_disk_leaves_no_partial_shard(tmp_path, monkeypatch):
    import sbikit.io as files  # the store writes its files with sbikit.io.atomic_write

    write = files._write_all
    calls = []

    def full_after_some(fd, data):
        calls.append(len(data))
        if len(calls) == 4:  # theta, manifest, one shard; the next shard hits a full disk
            write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(fd, data)

    monkeypatch.setattr(files, "_write_all", full_after_some)
    with pytest.raises(StoreWriteError, match="disk is full") as info:
        sbikit.simulate(faulty.noisy, PRIOR, 100, seed=0, batch_size=20, store=tmp_path / "a", **quiet())
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in (tmp_path / "a" / "shards").iterdir()] == [next((tmp_path / "a" / "shards").iterdir()).name]
    assert not list((tmp_path / "a").rglob("*.tmp"))
    monkeypatch.setattr(files, "_write_all", write)
    assert len(sbikit.simulate(faulty.noisy, PRIOR, 100, seed=0, batch_size=20, store=tmp_path / "a", **quiet())) == 100


# 10 ----------------------------------------------------------------------------------------------
def test_two_processes_resuming_one_store_run_each_index_once(tmp_path):
    n, size, path, log = 600, 10, tmp_path / "a", tmp_path / "log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]), OMP_NUM_THREADS="1",
               SBIKIT_TEST_LOG=str(log))
    command = driver_command(path, n, size)
    drivers = [subprocess.Popen(command, env=env) for _ in range(2)]
    assert [d.wait(timeout=120) for d in drivers] == [0, 0]
    calls = np.bincount(logged_indices(log, thetas(n)), minlength=n)
    assert (calls == 1).all(), np.flatnonzero(calls != 1)
    assert len({line.split()[1] for line in log.read_text().splitlines()}) == 2  # both did a share
    assert open_store(path).complete and not list((path / "claims").iterdir())


def test_an_expired_claim_is_taken_over(tmp_path):
    path = tmp_path / "a"
    with pytest.raises(SimulationError, match="stopped early"):  # makes the store; stops after the first cell
        sbikit.simulate(faulty.half_broken, PRIOR, 200, seed=0, batched=False, batch_size=100, store=path,
                        max_failure_fraction=0.0, **quiet())
    claim = path / "claims" / f"{100:012d}.claim"
    claim.write_text("another-host:1234:deadbeef\n")  # a claimer on another machine, silent for an hour
    old = time.time() - 3600
    os.utime(claim, (old, old))
    # a claim that is never taken over leaves the run waiting for it: give it a minute, in a thread
    finished = []

    def resume():
        with pytest.warns(RuntimeWarning, match="failed"):
            finished.append(sbikit.simulate(faulty.half_broken, PRIOR, 200, seed=0, batched=False, batch_size=100,
                                            store=path, **quiet()))

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert finished, "the expired claim was not taken over"
    assert open_store(path).complete and len(finished[0]) == 200 and not claim.exists()


# 11 ----------------------------------------------------------------------------------------------
def _train_in_a_process(directory, every=1, **env):
    command = [sys.executable, "-c", f"import faulty; faulty.train({str(directory)!r}, {every})"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]), OMP_NUM_THREADS="1", **env)
    return subprocess.run(command, env=env, timeout=120).returncode


def _same_trajectory(a, b):
    assert a["epochs"] == b["epochs"] == 12
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(a["validation_loss"], b["validation_loss"], rtol=1e-6)


def test_killed_training_resumes_on_the_same_loss_trajectory(tmp_path):
    whole = faulty.train(None)
    # 9 steps an epoch: step 40 is in epoch 5, after the checkpoint of epoch 4
    assert _train_in_a_process(tmp_path, SBIKIT_TEST_KILL_STEP="40") == -signal.SIGKILL
    assert sorted(p.name.split(".")[0] for p in tmp_path.glob("*.pt")) == ["training-000003", "training-000004"]
    resumed = faulty.train(str(tmp_path))
    _same_trajectory(resumed, whole)


def test_a_corrupt_checkpoint_falls_back_to_the_one_before(tmp_path):
    whole = faulty.train(None)
    assert _train_in_a_process(tmp_path, SBIKIT_TEST_KILL_STEP="40") == -signal.SIGKILL
    newest = sorted(tmp_path.glob("*.pt"))[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=r"skipped corrupt training checkpoints \(training-000004.*checksum.*"
                                            r"resuming from training-000003"):
        resumed = faulty.train(str(tmp_path))
    _same_trajectory(resumed, whole)
    for path in tmp_path.glob("*.pt"):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(sbikit.TrainingError, match="every training checkpoint in .* is corrupt"):
        faulty.train(str(tmp_path))


def test_a_checkpoint_made_with_other_training_settings_is_refused(tmp_path):
    from sbikit.train import TrainConfig, fit

    faulty.train(str(tmp_path))
    # the same data and seed (so the same split), but a smaller batch: resuming would silently mix the two
    config = TrainConfig(batch_size=32, max_epochs=12, learning_rate=1e-2, show_progress=False, checkpoint=str(tmp_path))
    with pytest.raises(sbikit.TrainingError, match=r"other training settings \(batch_size: 64 there, 32 now\)"):
        fit(faulty.Regression(), faulty.regression_data(), config)
    # or another gradient clip
    config = TrainConfig(batch_size=64, max_epochs=12, learning_rate=1e-2, clip_norm=1.0, show_progress=False,
                         checkpoint=str(tmp_path))
    with pytest.raises(sbikit.TrainingError, match=r"other training settings \(clip_norm: 5.0 there, 1.0 now\)"):
        fit(faulty.Regression(), faulty.regression_data(), config)


def test_sigterm_saves_a_checkpoint_and_ends_training(tmp_path):
    whole = faulty.train(None)
    # checkpoints every 100 epochs: only SIGTERM (in epoch 3, at step 22) makes one
    assert _train_in_a_process(tmp_path, every=100, SBIKIT_TEST_TERM_STEP="22") == -signal.SIGTERM
    assert [p.name.split(".")[0] for p in tmp_path.glob("*.pt")] == ["training-000003"]
    state = torch.load(next(tmp_path.glob("*.pt")), weights_only=True)
    assert state["history"]["epochs"] == 3 and set(state) >= {"optimizer", "scheduler", "split", "generator"}
    _same_trajectory(faulty.train(str(tmp_path), 100), whole)


@pytest.mark.parametrize("options, error, message", [
    ({"checkpoint_every": 0}, ValueError, "checkpoint_every must be a positive int"),
    ({"checkpoint": 3}, TypeError, "checkpoint must be a directory path or None"),
])
def test_bad_checkpoint_options_are_named(options, error, message):
    with pytest.raises(error, match=message):
        sbikit.TrainConfig(**options)


def test_checkpoint_paths_are_kept_as_text(tmp_path):
    assert sbikit.TrainConfig(checkpoint=tmp_path).checkpoint == str(tmp_path)


# 12 ----------------------------------------------------------------------------------------------
def test_an_unpicklable_simulator_gets_the_preflight_message():
    lock = threading.Lock()

    def locked(theta):
        with lock:
            return theta

    with pytest.raises(TypeError, match=r"cannot be sent to worker processes: cloudpickle failed with TypeError: "
                                        r"cannot pickle '_thread.lock' object\. Open files, locks"):
        sbikit.simulate(locked, PRIOR, 100, seed=0, workers=2, **quiet())


def test_a_simulator_that_always_raises_fails_in_this_process_before_fanning_out():
    def broken(theta):
        raise ZeroDivisionError("bug in the simulator")

    with pytest.raises(SimulationError, match=r"raised in this process before fanning out; simulation 0 \(seed "
                                              r"\d+\) raised ZeroDivisionError") as info:
        sbikit.simulate(broken, PRIOR, 100, seed=0, workers=2, **quiet())
    assert isinstance(info.value.__cause__, ZeroDivisionError)


# 13 ----------------------------------------------------------------------------------------------
def test_a_dask_local_cluster_run_equals_the_serial_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    serial = sbikit.simulate(faulty.noisy_one, PRIOR, 300, seed=0, batched=False, batch_size=50, **quiet())
    with distributed.Client(distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0",
                                                     processes=True)) as client:
        data = sbikit.simulate(faulty.noisy_one, PRIOR, 300, seed=0, batched=False, batch_size=50, executor=client,
                               store=tmp_path / "b", **quiet())
    assert torch.equal(serial.x, data.x) and torch.equal(serial.theta, data.theta)


def test_a_structured_model_on_a_dask_cluster_equals_the_serial_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    ou = sbikit.simulators.ornstein_uhlenbeck.model()
    serial = sbikit.simulate(ou, 60, seed=0, batch_size=25, **quiet())
    with distributed.Client(distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                                                     processes=True)) as client:
        data = sbikit.simulate(ou, 60, seed=0, batch_size=8, executor=client, store=tmp_path / "b", **quiet())
    assert torch.equal(serial.x, data.x) and torch.equal(serial.mask, data.mask) and data.structure == "series"


def test_a_hanging_group_of_a_structured_model_times_out_alone(monkeypatch):
    model = faulty.groups()
    clean = sbikit.simulate(model, 12, seed=0, batch_size=6, **quiet())
    culprit = 4
    monkeypatch.setenv("SBIKIT_TEST_HANG", repr(float(clean.theta[culprit, 0])))  # the workers inherit it
    with pytest.warns(RuntimeWarning, match="1 timed out"):
        data = sbikit.simulate(model, 12, seed=0, batch_size=6, timeout=1, retries=0, **quiet())
    [failure] = data.failures
    assert failure.index == culprit and failure.status == "timeout"
    ok = torch.arange(12) != culprit
    assert torch.equal(data.x[ok], clean.x[ok]) and torch.equal(data.mask[ok], clean.mask[ok])
    assert not data.valid[culprit] and not data.mask[culprit].any()  # its members are unknown


def test_a_hanging_simulation_times_out_under_dask(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    n, culprit = 40, 13
    monkeypatch.setenv("SBIKIT_TEST_HANG", repr(float(thetas(n)[culprit, 0])))  # the Dask workers inherit it
    with distributed.Client(distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0")) as client:
        with pytest.warns(RuntimeWarning, match="1 timed out"):
            data = sbikit.simulate(faulty.hangs, PRIOR, n, seed=0, batched=False, batch_size=10, executor=client,
                                   timeout=2, retries=0, **quiet())
    [failure] = data.failures
    assert failure.index == culprit and failure.status == "timeout" and "worker process was killed" in failure.message
    monkeypatch.delenv("SBIKIT_TEST_HANG")
    clean = sbikit.simulate(faulty.hangs, PRIOR, n, seed=0, batched=False, **quiet())
    ok = torch.arange(n) != culprit
    assert torch.equal(data.x[ok], clean.x[ok])


def test_a_worker_that_cannot_load_the_simulator_stops_the_run(tmp_path, monkeypatch):
    # the simulator pickles by reference to a module that the workers cannot import
    module = tmp_path / "only_here.py"
    module.write_text("import torch\n\ndef simulator(theta):\n    return theta\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])  # gone for the spawned workers
    with pytest.raises(sbikit.runs.WorkerError, match="died .* before its first simulation"):
        sbikit.simulate(only_here.simulator, PRIOR, 100, seed=0, workers=2, **quiet())
