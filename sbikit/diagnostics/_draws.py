r"""What the calibration diagnostics share: checked test pairs and posterior draws for all of
them, taken in a few vectorized calls.

A posterior is anything with ``sample(n, x=xs)`` returning :math:`(n, m, D)` for a batch
of :math:`m` observations and ``log_prob(theta, x=xs)`` broadcasting :math:`(n, m, D)`
against them; no class is special-cased. Sets and series with a ``mask`` are drawn one
member count at a time, since an observation is then a plain :math:`(M, L)` tensor.
"""

__all__ = [
    "MATERIAL_GAP", "Draws", "check_alpha", "check_amortized", "check_posterior", "draw", "holm", "in_words",
    "randomized_rank", "sample_given", "test_pairs",
]

import numpy as np
import torch

from dataclasses import dataclass
from torch import Tensor

from .._checks import check_count
from ..data import Simulations, as_float_tensor

MATERIAL_GAP = 0.05  # a calibration miss this large or larger is reported as one that matters (docs/design.md)


def check_posterior(posterior: object, log_prob: bool = True) -> None:
    r"""Refuses an object without the methods the diagnostics call."""

    needed = ("sample", "log_prob") if log_prob else ("sample",)
    missing = [name for name in needed if not callable(getattr(posterior, name, None))]
    if missing:
        raise TypeError(
            f"posterior must have sample(n, x=...) and log_prob(theta, x=...) methods; "
            f"{type(posterior).__name__} lacks {', '.join(missing)}."
        )


def check_amortized(posterior: object) -> None:
    r"""Refuses a posterior that says it was built for one observation (``amortized = False``, as
    an MCMC posterior of :class:`sbikit.NLE`): it cannot be drawn for many test observations."""

    if getattr(posterior, "amortized", True) is False:
        raise TypeError(
            f"{type(posterior).__name__} was built for one observation (amortized = False), so it cannot be "
            "drawn for each test simulation; calibrate an amortized posterior (sbikit.NPE), or check this one "
            "with ppc, which takes its observation."
        )


def sample_given(posterior: object, num_samples: int, x: Tensor) -> Tensor:
    r"""Draws :math:`(n, D)` from the posterior of one observation ``x``: ``sample(n, x=x)``, or
    ``sample(n)`` for a posterior built for its observation (``amortized = False``)."""

    if getattr(posterior, "amortized", True) is False:
        samples = posterior.sample(num_samples)
    else:
        samples = posterior.sample(num_samples, x=x)
    samples = as_float_tensor(samples, "posterior.sample")
    if samples.ndim != 2 or len(samples) != num_samples:
        raise ValueError(
            f"posterior.sample(n, x=x_obs) must return (n, D) = ({num_samples}, D) for one observation, got "
            f"{tuple(samples.shape)}; pass one observation."
        )
    return samples


def check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}.")
    return float(alpha)


def test_pairs(test: object, name: str = "test") -> Simulations:
    r"""Returns the finite rows of simulated pairs: a :class:`sbikit.Simulations` or a tuple
    ``(theta, x)`` of :math:`(N, D)` and :math:`(N, *x\_shape)`."""

    if isinstance(test, tuple) and len(test) == 2:
        test = Simulations(theta=test[0], x=test[1])
    if not isinstance(test, Simulations):
        raise TypeError(
            f"{name} must be sbikit.Simulations (from sbikit.simulate) or a tuple (theta, x), "
            f"got {type(test).__name__}."
        )
    test = test.dropna()
    if len(test) < 2:
        raise ValueError(f"{name} needs at least 2 finite simulated pairs, got {len(test)}.")
    return test


def groups(data: Simulations) -> list[tuple[Tensor, Tensor]]:
    r"""Splits the observations into batches that one ``sample`` call takes: a list of
    (row indices, observations :math:`(m, *x\_shape)`); sets and series of one member count
    each, with the absent members dropped."""

    if data.mask is None:
        return [(torch.arange(len(data)), data.x)]
    counts = data.mask.sum(1)
    out = []
    for count in counts.unique().tolist():
        rows = torch.nonzero(counts == count).squeeze(1)
        x = data.x[rows][data.mask[rows]].reshape(len(rows), count, data.x.shape[-1])
        out.append((rows, x))
    return out


@dataclass(frozen=True)
class Draws:
    r"""Posterior draws for test pairs.

    Attributes:
        theta: The true parameters, :math:`(N, D)`.
        samples: The posterior draws, :math:`(L, N, D)`.
        log_prob_truth: :math:`\log q(\theta_i | x_i)`, :math:`(N,)`, or None.
        log_prob_samples: :math:`\log q(\theta_{li} | x_i)`, :math:`(L, N)`, or None.
        seed: The seed of the draws, which also seeds the randomized ranks.
    """

    theta: Tensor
    samples: Tensor
    log_prob_truth: Tensor | None
    log_prob_samples: Tensor | None
    seed: int


def draw(posterior: object, test: Simulations, num_samples: int, seed: int, log_prob: bool = True) -> Draws:
    r"""Draws ``num_samples`` posterior samples for every test observation, and their
    log-densities and the truth's when ``log_prob``."""

    check_posterior(posterior, log_prob)
    check_amortized(posterior)
    num_samples = check_count(num_samples, "num_samples")
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}.")
    dim = test.theta.shape[1]
    samples = torch.empty(num_samples, len(test), dim)
    lp_truth = torch.empty(len(test)) if log_prob else None
    lp_samples = torch.empty(num_samples, len(test)) if log_prob else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for rows, x in groups(test):
            s = as_float_tensor(posterior.sample(num_samples, x=x), "posterior.sample(n, x=xs)")
            if s.shape != (num_samples, len(rows), dim):
                raise ValueError(
                    f"posterior.sample(n, x=xs) must return (n, m, D) = ({num_samples}, {len(rows)}, {dim}) for "
                    f"{len(rows)} observations, got {tuple(s.shape)}."
                )
            samples[:, rows] = s
            if log_prob:
                lp_samples[:, rows] = as_float_tensor(posterior.log_prob(s, x=x), "log_prob").reshape(num_samples, -1)
                lp_truth[rows] = as_float_tensor(posterior.log_prob(test.theta[rows], x=x), "log_prob").reshape(-1)
    return Draws(test.theta, samples, lp_truth, lp_samples, seed)


def randomized_rank(below: Tensor, ties: Tensor, total: int, generator: np.random.Generator) -> np.ndarray:
    r"""The rank of a value among ``total`` draws, as a number in :math:`(0, 1)` that is exactly
    uniform when the value is distributed as the draws: :math:`(b + V (t + 1)) / (L + 1)` for
    :math:`b` draws below, :math:`t` tied and :math:`V \sim U(0, 1)` (ties broken at random)."""

    below, ties = below.double().numpy(), ties.double().numpy()
    return (below + generator.uniform(size=below.shape) * (ties + 1)) / (total + 1)


def holm(p_values: np.ndarray) -> np.ndarray:
    r"""Holm's step-down adjustment of :math:`k` p-values, which controls the chance of any false
    rejection at the level :math:`\alpha` (and is never less powerful than Bonferroni's)."""

    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def in_words(passed: bool, gap: float, what: str) -> str:
    r"""A calibration result in words: whether a miss was detected, and whether its size, ``gap``
    (a share of probability, for example coverage minus credibility), reaches ``MATERIAL_GAP``.
    ``what`` says where the gap is measured, for example ``"coverage 0.84 at level 0.90"``."""

    if passed:
        return f"no miss detected (largest gap {gap:.3f}: {what})"
    if gap < MATERIAL_GAP:
        return (f"a small miss: largest gap {gap:.3f} ({what}), detectable with this many test "
                f"simulations but under {MATERIAL_GAP:.2f}, so credible regions are nearly right")
    return (f"a miss that matters: largest gap {gap:.3f} ({what}), at least {MATERIAL_GAP:.2f}, so "
            "credible regions hold the truth noticeably more or less often than they claim")
