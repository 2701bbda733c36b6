r"""Misspecification: could the simulator have produced the observations, and which members of a
group are odd?

**A test in summary space** (after Schmitt et al., 2023). Observations are mapped to the
features the posterior learned from them, :math:`s(x)` (``posterior.summarize``; for a
posterior without one, the observations themselves, and for sets each feature's mean and
standard deviation over the members), standardized by simulations from the model. The
squared maximum mean discrepancy between the :math:`k` observations and :math:`R` reference
simulations,

.. math::
    \mathrm{MMD}^2 = \frac{1}{k^2} \sum_{i, j} \kappa(s_i, s_j)
        - \frac{2}{k R} \sum_{i, r} \kappa(s_i, s_r) + \frac{1}{R^2} \sum_{r, r'} \kappa(s_r, s_{r'}),

with :math:`\kappa` a mixture of Gaussian kernels of widths :math:`h / 2, h, 2h` around the
median distance :math:`h` of the reference summaries, is large when the observations lie
where the model rarely puts data. Its p-value is calibrated by simulation: the test pairs
are split in two, the first half is the reference, and the statistic of :math:`k` draws from
the second half (held out, so distributed as well-specified observations would be) gives
the null distribution, :math:`p = (1 + \#\{\text{null} \geq \text{observed}\}) / (1 + B)`.
Under the model this p-value is uniform, so rejecting at :math:`p < \alpha` raises a false
alarm with probability :math:`\alpha`.

**Outlying members.** For one group of members (a :class:`sbikit.MixedEffects` model, or
i.i.d. observations), new members are simulated from the posterior predictive
:math:`\theta \sim q(\theta | x_o)`, :math:`\tilde x \sim p(x | \theta)`; a kernel density
estimate of half of them (scipy's ``gaussian_kde``) scores each member by its negative log
density, and the other half calibrates the score into a p-value per member.
"""

__all__ = ["MisspecificationResult", "OutlierResult", "misspecification", "outliers", "summaries"]

import numpy as np
import scipy.stats
import torch

from dataclasses import dataclass
from torch import Tensor

from .._checks import check_count
from ..data import Simulations, as_float_tensor
from ._draws import check_alpha, check_posterior, groups, sample_given, test_pairs
from ._plot import panels
from .predictive import simulate_at

_WIDTHS = (0.5, 1.0, 2.0)  # kernel widths, in units of the median distance
_MEDIAN_ROWS = 1000  # reference rows the median distance is estimated from


def _plain(x: Tensor, is_set: bool) -> Tensor:
    r"""Features of observations without a learned summary: the values, or for sets :math:`(m, M, L)`
    each feature's mean and sd over the members."""

    if not is_set:
        return x.reshape(len(x), -1)
    sd = x.std(-2) if x.shape[-2] > 1 else torch.zeros_like(x[:, 0])
    return torch.cat([x.mean(-2), sd], -1)


def summaries(posterior: object, data: Simulations) -> tuple[Tensor, str]:
    r"""The features the test compares, :math:`(N, F)`, and where they come from: the posterior's
    ``summarize(x)`` when it has one, else the observations (see the module's description)."""

    summarize = getattr(posterior, "summarize", None)
    out = None
    for rows, x in groups(data):
        s = as_float_tensor(summarize(x), "posterior.summarize(x)") if callable(summarize) else None
        if s is None:
            s = _plain(x, data.mask is not None)
        if s.ndim != 2 or len(s) != len(rows):
            raise ValueError(f"summaries must be (m, F) for {len(rows)} observations, got {tuple(s.shape)}.")
        if out is None:
            out = torch.empty(len(data), s.shape[1])
        out[rows] = s
    return out, "learned summaries" if callable(summarize) else "observations"


def _kernel(a: Tensor, b: Tensor, widths: Tensor) -> Tensor:
    d2 = torch.cdist(a.double(), b.double()).square()
    return torch.exp(-d2.unsqueeze(-1) / (2 * widths**2)).mean(-1)


@dataclass(frozen=True, repr=False)
class MisspecificationResult:
    r"""An MMD test of whether the model could have produced the observations.

    Attributes:
        statistic: :math:`\mathrm{MMD}^2` between the observations and the reference.
        p_value: Its p-value under the model, calibrated by simulation.
        null: The null distribution of the statistic for as many observations, :math:`(B,)`.
        observation_p_values: Each observation's p-value on its own, :math:`(k,)`.
        alpha: The level of the test.
        space: ``"learned summaries"`` or ``"observations"``.
        observed: The observations' standardized features, :math:`(k, F)`.
        reference: The reference simulations' standardized features, :math:`(R, F)`.
    """

    statistic: float
    p_value: float
    null: np.ndarray
    observation_p_values: np.ndarray
    alpha: float
    space: str
    observed: np.ndarray
    reference: np.ndarray

    @property
    def rejected(self) -> bool:
        r"""Whether "the simulator produced these observations" is rejected at ``alpha``."""

        return self.p_value < self.alpha

    def __repr__(self) -> str:
        verdict = "rejected" if self.rejected else "not rejected"
        return (
            f"MisspecificationResult(observations={len(self.observed)}, MMD^2={self.statistic:.4g}, "
            f"p_value={self.p_value:.3g}, {verdict} at alpha={self.alpha})\n  in the space of {self.space} "
            f"({self.observed.shape[1]} features), against {len(self.reference)} simulations; "
            f"null from {len(self.null)} draws"
        )

    def plot(self, figure=None):
        r"""Plots the null distribution with the observed statistic, and the observations over the
        reference in the first two principal components of the features. Returns the figure."""

        figure, (left, right) = panels(2, figure, size=(3.6, 3.2))
        left.hist(self.null, bins=40, color="0.7")
        left.axvline(self.statistic, color="C3" if self.rejected else "C0", lw=2)
        left.set_xlabel("MMD$^2$ under the model")
        left.set_title(f"p = {self.p_value:.3g}", fontsize=10)
        left.set_yticks([])
        reference = self.reference - self.reference.mean(0)
        _, _, vt = np.linalg.svd(reference, full_matrices=False)
        axes = vt[: min(2, len(vt))].T
        project = lambda s: np.pad(s @ axes, ((0, 0), (0, 2 - axes.shape[1])))  # noqa: E731
        ref, obs = project(reference), project(self.observed - self.reference.mean(0))
        right.scatter(ref[:, 0], ref[:, 1], s=4, color="0.6", label="simulations")
        right.scatter(obs[:, 0], obs[:, 1], s=18, color="C3", label="observed")
        right.set_title(f"{self.space}, principal components", fontsize=9)
        right.legend(fontsize=8)
        return figure


def misspecification(
    posterior: object,
    test: object,
    x_obs: object,
    num_null: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> MisspecificationResult:
    r"""Tests whether the simulator could have produced ``x_obs``, by the MMD in summary space.

    Arguments:
        posterior: A posterior; its ``summarize(x)`` :math:`\to (m, F)`, when it has one, gives
            the features (an NPE posterior's summary network and regression adjustment).
        test: Simulations from the model, :class:`sbikit.Simulations` or ``(theta, x)``, not
            the training data; half are the reference and half calibrate the p-value, so a
            few hundred or more are needed.
        x_obs: One observation :math:`(*x\_shape)` or a batch :math:`(k, *x\_shape)` of
            observations from the same source, tested together.
        num_null: The draws of the null distribution (for one observation, each held-out
            simulation once).
        alpha: The level of the test.
        seed: Seeds the split's null draws.

    Returns:
        A :class:`MisspecificationResult`: ``p_value``, ``rejected``, per-observation
        ``observation_p_values`` and ``plot()``.
    """

    num_null = check_count(num_null, "num_null")
    alpha = check_alpha(alpha)
    test = test_pairs(test)
    if len(test) < 20:
        raise ValueError(f"test needs at least 20 simulations to calibrate the test, got {len(test)}.")
    x_obs = as_float_tensor(x_obs, "x_obs")
    x_shape = test.x_shape if test.mask is None else test.x_shape[-1:]
    k = len(x_shape) if test.mask is None else 2
    if x_obs.ndim not in (k, k + 1) or x_obs.shape[x_obs.ndim - len(x_shape) :] != x_shape:
        expected = f"({', '.join(map(str, x_shape))})" if test.mask is None else f"(M, {x_shape[0]})"
        raise ValueError(
            f"x_obs has shape {tuple(x_obs.shape)}; pass one observation {expected} or a batch (k, ...) of them, "
            "as the test simulations."
        )
    if not bool(torch.isfinite(x_obs).all()):
        raise ValueError("x_obs must be finite.")
    x_obs = x_obs if x_obs.ndim == k + 1 else x_obs.unsqueeze(0)
    mask = None if test.mask is None else torch.ones(x_obs.shape[:2], dtype=torch.bool)
    observed_data = Simulations(theta=torch.zeros(len(x_obs), 1), x=x_obs, structure=test.structure, mask=mask)
    simulated, space = summaries(posterior, test)
    observed, _ = summaries(posterior, observed_data)
    loc, scale = simulated.mean(0), simulated.std(0).clamp_min(1e-12)
    simulated, observed = (simulated - loc) / scale, (observed - loc) / scale
    half = len(simulated) // 2
    reference, pool = simulated[:half], simulated[half:]
    median = torch.pdist(reference[:_MEDIAN_ROWS].double()).median().clamp_min(1e-12)
    widths = median * torch.tensor(_WIDTHS, dtype=torch.float64)
    kernel_rr = _kernel(reference, reference, widths).mean()
    pool_ref = _kernel(pool, reference, widths).mean(1)  # (P,)
    obs_ref = _kernel(observed, reference, widths).mean(1)  # (k,)
    count = len(observed)
    statistic = _kernel(observed, observed, widths).mean() - 2 * obs_ref.mean() + kernel_rr
    single_null = 1 - 2 * pool_ref + kernel_rr  # kappa(s, s) = 1
    if count == 1:
        null = single_null
    else:
        if count > len(pool):
            raise ValueError(
                f"x_obs has {count} observations but only {len(pool)} held-out simulations calibrate the "
                f"test; pass at least {2 * count} test simulations."
            )
        generator = torch.Generator().manual_seed(seed)
        picks = torch.stack([torch.randperm(len(pool), generator=generator)[:count] for _ in range(num_null)])
        pool_pool = _kernel(pool, pool, widths)
        within = pool_pool[picks.unsqueeze(-1), picks.unsqueeze(-2)].mean((1, 2))
        null = within - 2 * pool_ref[picks].mean(1) + kernel_rr
    single = 1 - 2 * obs_ref + kernel_rr
    p_value = (1 + (null >= statistic).sum()) / (1 + len(null))
    each = (1 + (single_null.unsqueeze(0) >= single.unsqueeze(1)).sum(1)) / (1 + len(single_null))
    return MisspecificationResult(
        statistic=float(statistic),
        p_value=float(p_value),
        null=null.numpy(),
        observation_p_values=each.double().numpy(),
        alpha=alpha,
        space=space,
        observed=observed.double().numpy(),
        reference=reference.double().numpy(),
    )


@dataclass(frozen=True, repr=False)
class OutlierResult:
    r"""Which members of a group are atypical under the fitted model.

    Attributes:
        scores: Each member's negative log predictive density (estimated), :math:`(M,)`.
        p_values: Each member's p-value under the posterior predictive, :math:`(M,)`.
        flagged: Whether each member's p-value is below ``alpha``, :math:`(M,)` booleans. Each
            clean member is flagged with probability about ``alpha``; for a family-wise
            guarantee over the group, compare ``p_values`` with ``alpha / M``.
        alpha: The level.
        members: The members, :math:`(M, L)`.
        replicated: The simulated members that calibrated the p-values, :math:`(R, L)`.
    """

    scores: np.ndarray
    p_values: np.ndarray
    alpha: float
    members: np.ndarray
    replicated: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        return self.p_values < self.alpha

    def __repr__(self) -> str:
        index = np.flatnonzero(self.flagged)
        shown = ", ".join(f"{i} (p={self.p_values[i]:.2g})" for i in index[np.argsort(self.p_values[index])][:8])
        return (
            f"OutlierResult(members={len(self.members)}, flagged={len(index)} at alpha={self.alpha}, "
            f"expected by chance={self.alpha * len(self.members):.1f})" + (f"\n  flagged: {shown}" if shown else "")
        )

    def plot(self, figure=None):
        r"""Plots each member's p-value, and the members over the posterior predictive (the first
        feature, or the first two). Returns the figure."""

        figure, (left, right) = panels(2, figure, size=(3.6, 3.2))
        colors = np.where(self.flagged, "C3", "C0")
        left.scatter(np.arange(len(self.p_values)), self.p_values, s=10, c=colors)
        left.axhline(self.alpha, color="0.4", lw=0.8)
        left.set_yscale("log")
        left.set_xlabel("member")
        left.set_ylabel("p-value")
        if self.members.shape[1] == 1:
            right.hist(self.replicated[:, 0], bins=40, color="0.7", density=True)
            for value, color in zip(self.members[:, 0], colors):
                right.axvline(value, color=color, lw=0.8, alpha=0.8)
            right.set_xlabel("x[0]")
        else:
            right.scatter(self.replicated[:, 0], self.replicated[:, 1], s=3, color="0.7")
            right.scatter(self.members[:, 0], self.members[:, 1], s=12, c=colors)
            right.set_xlabel("x[0]")
            right.set_ylabel("x[1]")
        right.set_title("members over the posterior predictive", fontsize=9)
        return figure


def outliers(
    posterior: object, simulator: object, x_obs: object, num_samples: int = 2000, alpha: float = 0.05, seed: int = 0
) -> OutlierResult:
    r"""Scores each member of one group against the posterior predictive of a new member.

    Arguments:
        posterior: Anything with ``sample(n, x=x_obs)`` :math:`\to (n, D)` for the group (or
            ``sample(n)`` for a posterior built for it, with ``amortized = False``).
        simulator: A :class:`sbikit.MixedEffects` model (a new member draws its locals from
            ``local_prior`` and its data from ``member_simulator``), or a batched function
            :math:`\theta` :math:`(n, D) \to` one member each :math:`(n, L)` for sets of i.i.d.
            members.
        x_obs: One group of members, :math:`(M, L)`.
        num_samples: The simulated members that fit the density, and as many that calibrate it.
        alpha: The level below which a member is flagged.
        seed: Seeds the posterior draws and the simulations.

    Returns:
        An :class:`OutlierResult`: ``scores``, ``p_values``, ``flagged`` and ``plot()``.
    """

    check_posterior(posterior, log_prob=False)
    num_samples = check_count(num_samples, "num_samples")
    alpha = check_alpha(alpha)
    x_obs = as_float_tensor(x_obs, "x_obs")
    if x_obs.ndim != 2 or len(x_obs) < 1:
        raise ValueError(f"x_obs must be one group of members (M, L), got {tuple(x_obs.shape)}.")
    if not bool(torch.isfinite(x_obs).all()):
        raise ValueError("x_obs must be finite.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theta = sample_given(posterior, 2 * num_samples, x_obs)
        replicated = simulate_at(simulator, theta).reshape(len(theta), -1)
    if replicated.shape[1] != x_obs.shape[1]:
        raise ValueError(
            f"simulated members have {replicated.shape[1]} features but x_obs has {x_obs.shape[1]}; pass the "
            "group's members (M, L)."
        )
    replicated = replicated[torch.isfinite(replicated).all(1)].double().numpy()
    loc, scale = replicated.mean(0), replicated.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    fit, calibrate = replicated[::2], replicated[1::2]
    density = scipy.stats.gaussian_kde(((fit - loc) / scale).T)
    score = lambda x: -density.logpdf(((x - loc) / scale).T)  # noqa: E731
    members = x_obs.double().numpy()
    scores, null = score(members), score(calibrate)
    p_values = (1 + (null[None, :] >= scores[:, None]).sum(1)) / (1 + len(null))
    return OutlierResult(scores=scores, p_values=p_values, alpha=alpha, members=members, replicated=calibrate)
