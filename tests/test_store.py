"""Runs on disk: the README's contract, resuming, refusing another run, reading a store lazily."""

import functools
import gc
import json
import numpy as np
import pytest
import re
import torch

import sbikit
import faulty

from conftest import readme_block, run_readme_block
from sbikit.runs import StoreError, open_store

PRIOR = faulty.PRIOR


def quiet(**kwargs):
    return dict(show_progress=False, **kwargs)


# Another process on the machine may hold Dask's default dashboard port (8787). The cluster then
# says so and takes another port, and distributed leaks the socket of its failed try (node.py,
# start_http_server), which warns when it is collected: both are Dask's, not sbikit's, and the
# socket is collected inside this test (gc.collect at its end) so that no other test sees it.
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use:UserWarning")
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_readme_store_contract_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    contract = readme_block('sbikit.open_store("runs/a")')
    assert contract.count("100_000") == 3
    small = contract.replace("100_000", "2_000")  # the same lines, at a size for a test
    monkeypatch.setattr(sbikit.estimators.npe, "TrainConfig",
                        functools.partial(sbikit.TrainConfig, max_epochs=3, show_progress=False))
    monkeypatch.chdir(tmp_path)
    namespace = run_readme_block(small, {"__name__": "__main__"})
    store, data = namespace["store"], namespace["data"]
    assert len(store) == 2000 and store.failures == () and store.complete
    assert torch.equal(store.x, data.x) and torch.equal(store.theta, data.theta)  # runs/a (2 workers) == runs/b (Dask)
    assert isinstance(namespace["posterior"], sbikit.Posterior)
    assert json.loads((tmp_path / "runs/b/manifest.json").read_text())["seed"] == 0
    gc.collect()


def test_a_finished_store_is_read_back_without_simulating(tmp_path):
    calls = []

    def counted(theta):
        calls.append(len(theta))
        return theta + 0.1 * torch.randn_like(theta)

    first = sbikit.simulate(counted, PRIOR, 300, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    assert sum(calls) == 300
    again = sbikit.simulate(counted, PRIOR, 300, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    assert sum(calls) == 300 and torch.equal(first.x, again.x)
    memory = sbikit.simulate(counted, PRIOR, 300, seed=0, batch_size=7, **quiet())
    assert torch.equal(memory.x, first.x) and torch.equal(memory.theta, first.theta)


def test_theta_is_written_before_any_simulation(tmp_path):
    seen = []

    def look(theta):
        seen.append(np.load(tmp_path / "a" / "theta.npy").shape)
        return theta

    data = sbikit.simulate(look, PRIOR, 250, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    assert seen == [(250, 3)] * 3
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "a" / "theta.npy")), data.theta)


def test_an_interrupted_run_resumes_only_the_missing_work(tmp_path):
    calls, ctrl_c = [], [True]

    def interrupted(theta):
        calls.append(len(theta))
        if len(calls) == 3 and ctrl_c.pop():
            raise KeyboardInterrupt
        return theta * 2

    with pytest.raises(KeyboardInterrupt):
        sbikit.simulate(interrupted, PRIOR, 500, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    assert len(list((tmp_path / "a" / "shards").glob("*.npz"))) == 2
    assert not list((tmp_path / "a" / "claims").iterdir())  # let go on the way out
    calls.clear()
    ctrl_c.append(False)
    data = sbikit.simulate(interrupted, PRIOR, 500, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    assert calls == [100, 100, 100] and torch.equal(data.x, 2 * data.theta)


@pytest.mark.parametrize("change, message", [
    ({"seed": 1}, r"the seed \(0 in the store, 1 here\)"),
    ({"prior": sbikit.BoxUniform(-2 * torch.ones(3), 2 * torch.ones(3))}, r"the prior \(BoxUniform"),
    ({"simulator": faulty.noisy_one, "batched": False}, r"the simulator \(faulty.noisy and faulty.noisy_one\)"),
    ({"num_simulations": 200}, r"num_simulations \(100 in the store, 200 here\)"),
])
def test_another_run_on_a_store_is_refused_saying_what_differs(tmp_path, change, message):
    arguments = {"simulator": faulty.noisy, "prior": PRIOR, "num_simulations": 100, "seed": 0}
    sbikit.simulate(**arguments, store=tmp_path / "a", **quiet())
    with pytest.raises(StoreError, match=message):
        sbikit.simulate(**{**arguments, **change}, store=tmp_path / "a", **quiet())


def test_open_store_reads_lazily_and_trains(tmp_path, quick):
    data = sbikit.simulate(faulty.noisy, PRIOR, 400, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    store = sbikit.open_store(tmp_path / "a")
    assert store._cache == {}  # nothing read yet
    assert len(store) == 400 and store.seed == 0 and store.failures == ()
    assert torch.equal(store.x, data.x) and torch.equal(store.theta_rows(10, 20), data.theta[10:20])
    assert list(store.records["status"]) == ["ok"] * 400
    posterior = sbikit.NPE(PRIOR, training=quick, adjust=False).fit(store)
    assert posterior.sample(5, x=data.x[0]).shape == (5, 3)


def test_an_incomplete_store_is_not_trained_on(tmp_path, quick):
    def stop(theta):
        if theta.shape[0] and stop.calls == 1:
            raise KeyboardInterrupt
        stop.calls += 1
        return theta

    stop.calls = 0
    with pytest.raises(KeyboardInterrupt):
        sbikit.simulate(stop, PRIOR, 200, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    store = open_store(tmp_path / "a")
    assert not store.complete and len(store) == len(store.x) == 100 and store.x.isfinite().all()
    with pytest.raises(StoreError, match="missing 100 of 200 simulations"):
        sbikit.NPE(PRIOR, training=quick).fit(store)


def test_a_partial_store_counts_and_reads_the_simulations_done(tmp_path):
    def interrupted(theta):
        if interrupted.calls == 3:
            raise KeyboardInterrupt
        interrupted.calls += 1
        x = 2 * theta
        x[theta[:, 0] > 0.8] = float("nan")  # recorded as invalid: done, not missing
        return x

    interrupted.calls = 0
    with pytest.raises(KeyboardInterrupt):
        sbikit.simulate(interrupted, PRIOR, 500, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    planned = sbikit.simulate(faulty.noisy, PRIOR, 500, seed=0, batch_size=100, **quiet()).theta
    # a cell that is not done between two that are (its shard quarantined, or another process's claim)
    shard = next((tmp_path / "a" / "shards").glob("000000000100-*.npz"))
    shard.rename(tmp_path / "a" / "quarantine" / shard.name)
    store = open_store(tmp_path / "a")
    index = np.r_[0:100, 200:300]
    assert store.num_simulations == 500 and not store.complete and repr(store).endswith("done=200, seed=0)")
    assert len(store) == len(store.theta) == len(store.x) == len(store.records["index"]) == 200
    assert list(store.records["index"]) == list(index)
    assert torch.equal(store.theta, planned[index])  # row i of theta and x is simulation records["index"][i]
    invalid = store.records["status"] == "invalid"
    assert invalid.any() and torch.equal(torch.from_numpy(invalid), planned[index, 0] > 0.8)
    assert torch.equal(store.x[~invalid], 2 * store.theta[~invalid]) and store.x[invalid].isnan().all()
    with pytest.raises(StoreError, match="missing 300 of 500 simulations"):
        store.simulations()


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a simulation store"):
        open_store(tmp_path)


@pytest.mark.parametrize("arguments, error, message", [
    ({"workers": 0}, ValueError, "workers must be a positive int"),
    ({"workers": 1.5}, TypeError, "workers must be a positive int"),
    ({"timeout": -1}, ValueError, "timeout must be a positive number"),
    ({"on_error": "ignore"}, ValueError, "on_error must be 'record' or 'raise'"),
    ({"max_failure_fraction": 2}, ValueError, r"max_failure_fraction must be a number in \[0, 1\]"),
    ({"retries": -1}, ValueError, "retries must be a non-negative int"),
    ({"executor": object()}, TypeError, "executor must be a dask.distributed.Client"),
])
def test_bad_run_options_are_named(arguments, error, message):
    with pytest.raises(error, match=message):
        sbikit.simulate(faulty.noisy, PRIOR, 10, seed=0, **arguments)


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_a_structured_model_runs_on_workers_into_a_store_as_in_memory(tmp_path, monkeypatch, quick):
    monkeypatch.setenv("SBIKIT_TEST_GROUPS_RAISE", "1")  # the spawned workers inherit it
    model = faulty.groups()
    with pytest.warns(RuntimeWarning, match="raised"):
        memory = sbikit.simulate(model, 60, seed=0, batch_size=16, **quiet())
    with pytest.warns(RuntimeWarning, match="raised"):
        stored = sbikit.simulate(model, 60, seed=0, batch_size=7, workers=2, store=tmp_path / "a", **quiet())
    failed = [f.index for f in memory.failures]
    assert len(failed) == 9 and failed == [i for i in range(60) if memory.theta[i, 0] > 0.8]
    assert [f.index for f in stored.failures] == failed and stored.structure == "set"
    for name in ("x", "mask", "theta_local"):
        assert torch.equal(getattr(stored, name).nan_to_num(7.0), getattr(memory, name).nan_to_num(7.0)), name
    assert stored.x.shape[1] == 6  # padded to the largest count that num_members allows
    # shards are padded to their own widest group; the store pads them to the run's
    store = open_store(tmp_path / "a")
    assert store.structure == "set" and store.x_shape == (6, 1)
    assert {np.load(p)["x"].shape[1] for p in (tmp_path / "a" / "shards").glob("*.npz")} >= {6}
    # an interrupted run: two shards lost, done again on resume, and the same data
    for path in sorted((tmp_path / "a" / "shards").glob("*.npz"))[2:4]:
        path.unlink()
    with pytest.warns(RuntimeWarning, match="raised"):
        resumed = sbikit.simulate(model, 60, seed=0, batch_size=7, store=tmp_path / "a", **quiet())
    assert torch.equal(resumed.x.nan_to_num(7.0), memory.x.nan_to_num(7.0))
    with pytest.warns(RuntimeWarning, match="excluding 9 of 60"):
        posterior = sbikit.NPE(model.prior, training=quick).fit(open_store(tmp_path / "a"))
    assert type(posterior.network.summary).__name__ == "DeepSet"
    with pytest.warns(RuntimeWarning, match="excluding 9 of 60"):
        joint = sbikit.HierarchicalNPE(model, training=quick).fit(open_store(tmp_path / "a"))
    assert joint.sample_joint(3, x=resumed.x[0, : int(resumed.mask[0].sum())])[1].shape == (3, int(resumed.mask[0].sum()), 1)
    # the model's functions are part of what a store checks
    other = sbikit.MixedEffects(model.global_prior, faulty.group_locals, faulty.noisy, num_members=(2, 6))
    with pytest.raises(StoreError, match="the simulator"):
        sbikit.simulate(other, 60, seed=0, batch_size=7, store=tmp_path / "a", **quiet())


def test_a_structured_store_records_its_structure_and_a_newer_schema(tmp_path):
    sbikit.simulate(sbikit.simulators.ornstein_uhlenbeck.model(), 20, seed=0, store=tmp_path / "a", **quiet())
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["schema"] == 2 and manifest["options"]["structure"] == "series"
    store = open_store(tmp_path / "a")
    assert store.mask is not None and store.theta_local is None and store.x.shape[:2] == store.mask.shape


def test_a_store_larger_than_memory_is_streamed(tmp_path, monkeypatch, quick):
    from sbikit.runs import stream as stream_module

    with pytest.warns(RuntimeWarning, match="returned NaN"):
        sbikit.simulate(faulty.non_finite, PRIOR, 3000, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    store = open_store(tmp_path / "a")
    valid = ~torch.isnan(store.x).any(1) & ~torch.isinf(store.x).any(1)
    monkeypatch.setattr(stream_module, "memory_limit", lambda: 100_000)  # 3,000 rows take more than a quarter

    def forbidden(self):
        raise AssertionError("the store was read into memory")

    monkeypatch.setattr(type(store), "simulations", forbidden)
    streamed = stream_module.streamed(store)
    assert streamed is not None and streamed.num_train + len(streamed.validation[0]) == int(valid.sum())
    # one epoch yields every training row once, shuffled across shards, skipping failed rows
    rows = torch.cat([b[0] for b in streamed.batches(64, torch.Generator().manual_seed(0))])
    held = torch.cat([store.theta[s:e] for k, (s, e, _) in enumerate(streamed.shards) if k in streamed.validation_shards])
    expected = store.theta[valid & ~torch.isin(store.theta[:, 0], held[:, 0])]
    assert torch.equal(rows[rows[:, 0].argsort()], expected[expected[:, 0].argsort()])
    assert not torch.equal(rows[:100], expected[:100])
    posterior = sbikit.NPE(PRIOR, training=quick, adjust=False).fit(store)
    assert np.isfinite(posterior.history["train_loss"]).all() and posterior.history["epochs"] == 3


def test_a_structured_store_larger_than_memory_streams_padded_rows_with_their_mask(tmp_path, monkeypatch, quick):
    from sbikit.runs import stream as stream_module

    model = faulty.groups()
    sbikit.simulate(model, 400, seed=0, batch_size=5, store=tmp_path / "a", **quiet())
    store = open_store(tmp_path / "a")
    assert min(np.load(p)["x"].shape[1] for p in (tmp_path / "a" / "shards").glob("*.npz")) < 6
    monkeypatch.setattr(stream_module, "memory_limit", lambda: 10_000)

    def forbidden(self):
        raise AssertionError("the store was read into memory")

    monkeypatch.setattr(type(store), "simulations", forbidden)
    streamed = stream_module.streamed(store)
    assert streamed is not None and len(streamed.validation) == 3
    # shards hold their own widths (some groups of up to 5 members only): every row comes padded to 6
    theta, x, mask = (torch.cat(c) for c in zip(*streamed.batches(64, torch.Generator().manual_seed(0))))
    index = torch.cat([torch.nonzero(store.theta[:, 0] == t)[0] for t in theta[:, 0]])
    assert len(index.unique()) == streamed.num_train == len(theta) and x.shape[1:] == (6, 1)
    assert torch.equal(x, store.x[index]) and torch.equal(mask, store.mask[index])
    posterior = sbikit.NPE(model.prior, training=quick).fit(store)
    assert type(posterior.network.summary).__name__ == "DeepSet" and np.isfinite(posterior.history["train_loss"]).all()


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_members_of_a_store_larger_than_memory_are_drawn_shard_by_shard_as_in_memory(tmp_path, monkeypatch, quick):
    from sbikit.runs import stream as stream_module

    monkeypatch.setenv("SBIKIT_TEST_GROUPS_RAISE", "1")  # 9 of 60 groups fail
    model = faulty.groups()
    with pytest.warns(RuntimeWarning, match="raised"):
        sbikit.simulate(model, 60, seed=0, batch_size=7, store=tmp_path / "a", **quiet())
    memory = open_store(tmp_path / "a").simulations()
    valid = memory[memory.valid]
    total = int(valid.mask.sum())
    store = open_store(tmp_path / "a")
    monkeypatch.setattr(stream_module, "memory_limit", lambda: 2_000)

    def forbidden(self):
        raise AssertionError("the store was read into memory")

    monkeypatch.setattr(type(store), "simulations", forbidden)
    assert stream_module.streamed(store) is not None
    for limit in (total, 25):  # all members, in order; 25 of them, drawn at random
        expected = stream_module.member_rows(memory, limit, seed=3)
        rows = stream_module.member_rows(store, limit, seed=3)
        assert len(rows[0]) == min(limit, total)
        for got, want in zip(rows, expected):
            assert torch.equal(got, want)
    group, member = valid.mask.nonzero().unbind(1)
    assert torch.equal(expected[2], valid.theta_local[group, member][torch.randperm(
        total, generator=torch.Generator().manual_seed(3))[:25]])
    # both estimators that train on members take them from the store without reading it whole
    joint = sbikit.HierarchicalNPE(model, training=quick, max_member_rows=25).fit(store)
    assert joint.sample_joint(3, x=valid.x[0, : int(valid.mask[0].sum())])[1].shape == (3, int(valid.mask[0].sum()), 1)
    likelihood = sbikit.NLE(model.global_prior, training=quick, max_member_rows=25).fit(store)
    assert likelihood.history["members_as_trials"] and likelihood.sample(4, theta=torch.zeros(1)).shape == (4, 1)


def test_nle_streams_a_store_larger_than_memory_and_learns_the_noise(tmp_path, monkeypatch):
    from sbikit.runs import stream as stream_module

    sbikit.simulate(faulty.noisy, PRIOR, 3000, seed=0, batch_size=100, store=tmp_path / "a", **quiet())
    store = open_store(tmp_path / "a")
    monkeypatch.setattr(stream_module, "memory_limit", lambda: 100_000)

    def forbidden(self):
        raise AssertionError("the store was read into memory")

    monkeypatch.setattr(type(store), "simulations", forbidden)
    training = sbikit.TrainConfig(batch_size=512, max_epochs=40, show_progress=False)  # 240 steps, all run
    likelihood = sbikit.NLE(PRIOR, training=training, adjust=False).fit(store)
    assert likelihood.history["epochs"] == 40 and np.isfinite(likelihood.history["validation_loss"]).all()
    # x = theta + 0.1 noise: learned from the streamed rows (without the regression adjustment, the
    # flow starts far from it), the emulator's spread at a fixed theta is the noise's
    theta = torch.tensor([0.3, -0.2, 0.5])
    fake = likelihood.sample(4000, theta=theta)
    assert torch.allclose(fake.mean(0), theta, atol=0.03) and torch.allclose(fake.std(0), torch.full((3,), 0.1), atol=0.03)


def test_one_progress_bar_shows_done_failed_and_rate(tmp_path, capsys):
    with pytest.warns(RuntimeWarning):
        sbikit.simulate(faulty.half_broken, PRIOR, 300, seed=0, batched=False, batch_size=100, store=tmp_path / "a",
                        show_progress=True)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert re.search(r"simulating: 100%.*300/300 .*sim/s.*failed=\d+", final), final
    assert err.count("simulating: 100%") == 1
