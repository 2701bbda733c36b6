import numpy as np
import pytest
import torch
import warnings

import sbikit

from torch.distributions import Distribution

from conftest import noisy


def test_contract_shapes_and_record(box3):
    data = sbikit.simulate(noisy, box3, num_simulations=50, seed=3, show_progress=False)
    assert isinstance(data, sbikit.Simulations)
    assert data.theta.shape == (50, 3) and data.x.shape == (50, 3)
    assert data.seed == 3 and data.num_invalid == 0 and data.failures == ()
    assert bool(box3.support.check(data.theta).all())
    assert (data.x - data.theta).abs().max() < 1.0


def test_prefix_of_a_longer_run_is_the_same(box3):
    short = sbikit.simulate(noisy, box3, 20, seed=5, batch_size=8, show_progress=False)
    long = sbikit.simulate(noisy, box3, 45, seed=5, batch_size=16, show_progress=False)
    assert torch.equal(short.x, long.x[:20])


def test_different_seeds_differ(box3):
    a = sbikit.simulate(noisy, box3, 10, seed=0, show_progress=False)
    b = sbikit.simulate(noisy, box3, 10, seed=1, show_progress=False)
    assert not torch.equal(a.theta, b.theta)


def test_seed_none_records_fresh_entropy(box3):
    data = sbikit.simulate(noisy, box3, 5, show_progress=False)
    again = sbikit.simulate(noisy, box3, 5, seed=data.seed, show_progress=False)
    assert torch.equal(data.x, again.x)


def test_global_rng_is_left_alone(box3):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sbikit.simulate(noisy, box3, 10, seed=0, show_progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_unbatched_function_loops_and_is_reproducible(box3):
    calls = []

    def one(theta):
        calls.append(theta.shape)
        return torch.stack([theta.sum() + torch.randn(()), theta.prod()])

    a = sbikit.simulate(one, box3, 12, seed=2, batched=False, batch_size=5, show_progress=False)
    b = sbikit.simulate(one, box3, 12, seed=2, batched=False, batch_size=12, show_progress=False)
    assert set(calls) == {torch.Size([3])}
    assert a.x.shape == (12, 2)
    assert torch.equal(a.x, b.x)


def test_numpy_function(box3):
    def one(theta):
        assert isinstance(theta, np.ndarray)
        return theta ** 2 + np.random.normal(size=3)

    def many(theta):
        assert isinstance(theta, np.ndarray) and theta.ndim == 2
        return theta * 2.0

    a = sbikit.simulate(one, box3, 9, seed=4, batched=False, numpy=True, batch_size=2, show_progress=False)
    b = sbikit.simulate(one, box3, 9, seed=4, batched=False, numpy=True, batch_size=9, show_progress=False)
    assert a.x.dtype == torch.float32 and torch.equal(a.x, b.x)
    c = sbikit.simulate(many, box3, 9, seed=4, numpy=True, show_progress=False)
    assert torch.allclose(c.x, 2 * c.theta)


def test_scalar_outputs_become_one_feature(box3):
    data = sbikit.simulate(lambda t: t.sum(-1), box3, 6, seed=0, show_progress=False)
    assert data.x.shape == (6, 1)


def test_structured_outputs_keep_their_shape(box3):
    data = sbikit.simulate(lambda t: t.unsqueeze(1).expand(-1, 5, -1), box3, 4, seed=0, show_progress=False)
    assert data.x_shape == (5, 3)


def failing(theta):
    x = theta.clone()
    x[theta[:, 0] > 1.0, 1] = torch.nan
    x[theta[:, 0] < -1.0, 2] = torch.inf
    if (theta[:, 1] > 1.5).any():
        raise RuntimeError("solver diverged")
    return x


def test_failures_are_recorded_and_counted(box3):
    with pytest.warns(RuntimeWarning, match=r"of 300 simulations failed .* raised, .* NaN, .* inf") as record:
        data = sbikit.simulate(failing, box3, 300, seed=0, batch_size=50, show_progress=False)
    kinds = {f.kind for f in data.failures}
    assert kinds == {"nan", "inf", "exception"}
    raised = [f for f in data.failures if f.kind == "exception"]
    assert all("solver diverged" in f.message for f in raised)
    expected = (data.theta[:, 1] > 1.5) | (data.theta[:, 0] > 1.0) | (data.theta[:, 0] < -1.0)
    assert data.num_invalid == int(expected.sum()) == len(data.failures)
    assert torch.equal(~data.valid, expected)
    assert str(data.num_invalid) in str(record[0].message)
    # rows that did not fail are exactly what a batch without failures gives
    clean = sbikit.simulate(noisy, box3, 300, seed=0, batch_size=50, show_progress=False)
    assert torch.equal(clean.theta, data.theta)


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_failed_rows_are_never_trained_on(box3, quick):
    with pytest.warns(RuntimeWarning):
        data = sbikit.simulate(failing, box3, 300, seed=0, show_progress=False)
    with pytest.warns(RuntimeWarning, match=f"excluding {data.num_invalid} of 300"):
        posterior = sbikit.NPE(box3, training=quick).fit(data)
    assert all(np.isfinite(posterior.history["train_loss"]))


def test_wrong_number_of_rows_is_an_error(box3):
    with pytest.raises(ValueError, match=r"returned 9 rows .* batch of 10"):
        sbikit.simulate(lambda t: t[:-1], box3, 10, seed=0, batch_size=10, show_progress=False)


def test_inconsistent_output_shapes_are_an_error(box3):
    def ragged(theta):
        return torch.zeros(2 if theta[0] > 0 else 3)

    with pytest.raises(ValueError, match="same shape"):
        sbikit.simulate(ragged, box3, 40, seed=0, batched=False, show_progress=False)


@pytest.mark.parametrize("n, error", [(0, ValueError), (-5, ValueError), (2.5, TypeError), (True, TypeError)])
def test_num_simulations_must_be_positive_int(box3, n, error):
    with pytest.raises(error, match="num_simulations"):
        sbikit.simulate(noisy, box3, n, seed=0)


def test_simulator_must_be_callable(box3):
    with pytest.raises(TypeError, match="simulator must be callable"):
        sbikit.simulate("not a function", box3, 10)


def test_negative_seed(box3):
    with pytest.raises(ValueError, match="seed"):
        sbikit.simulate(noisy, box3, 10, seed=-1)


def test_all_failing_raises(box3):
    def broken(theta):
        raise KeyError("nope")

    with pytest.raises(RuntimeError, match="all 5 simulations raised"):
        sbikit.simulate(broken, box3, 5, seed=0, show_progress=False)


class NoSupport(Distribution):
    arg_constraints = {}

    def __init__(self):
        super().__init__(event_shape=torch.Size([2]), validate_args=False)

    def sample(self, shape=torch.Size()):
        return torch.zeros(*shape, 2)


def test_prior_without_support_is_an_error():
    with pytest.raises(ValueError, match="has no 'support'"):
        sbikit.simulate(noisy, NoSupport(), 10)
    with pytest.raises(ValueError, match="has no 'support'"):
        sbikit.NPE(NoSupport())


def test_draws_without_a_batch_dimension_warn(box3):
    def time_major(theta):
        return theta + torch.randn(3, theta.shape[0]).T

    with pytest.warns(RuntimeWarning, match="reproducible for this batch size only"):
        sbikit.simulate(time_major, box3, 8, seed=0, show_progress=False)


def test_no_progress_output_when_not_a_terminal(box3, capsys):
    with warnings.catch_warnings():
        sbikit.simulate(noisy, box3, 20, seed=0)
    assert capsys.readouterr().err == ""


def test_the_failure_warning_names_the_most_common_errors(box3):
    def buggy(theta):
        if theta[0] > 1.0:
            return undefined_name  # noqa: F821 - the bug the warning must show
        if theta[0] < -1.5:
            raise ValueError("solver diverged\nat step 17")
        return theta

    with pytest.warns(RuntimeWarning) as record:
        data = sbikit.simulate(buggy, box3, 400, seed=0, batched=False, show_progress=False)
    message = str(record[0].message)
    names = sum("NameError" in f.message for f in data.failures)
    diverged = sum("diverged" in f.message for f in data.failures)
    assert names > diverged > 0
    assert f"{names} x NameError: name 'undefined_name' is not defined" in message
    assert f"{diverged} x ValueError: solver diverged." in message and "step 17" not in message
