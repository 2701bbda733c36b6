r"""Misspecification: could the simulator have produced the observations, and which members of a
group are odd?

**A test in two spaces** (after Schmitt et al., 2023). The observations are compared with
simulations from the model in the space of the data's own statistics (``"observations"``: the
values, or for sets each feature's mean and standard deviation over the members), whitened by the
simulations' covariance, and, when the posterior has ``summarize(x)``, in the space of the
features it learned from them (``"learned summaries"``), standardized. In each space the squared
maximum mean discrepancy between the :math:`k` observations and :math:`R` reference simulations,

.. math::
    \mathrm{MMD}^2 = \frac{1}{k^2} \sum_{i, j} \kappa(s_i, s_j)
        - \frac{2}{k R} \sum_{i, r} \kappa(s_i, s_r) + \frac{1}{R^2} \sum_{r, r'} \kappa(s_r, s_{r'}),

with :math:`\kappa` a mixture of Gaussian kernels of widths :math:`h / 2, h, 2h` around the
median distance :math:`h` of the reference, is large when the observations lie where the model
rarely puts data. The test pairs are split in two: the first half is the reference (and fits the
standardization), and :math:`B` batches of :math:`k` draws from the second half, held out and so
distributed as well-specified observations would be, give each space's null distribution and
p-value :math:`p_j = (1 + \#\{\text{null} \geq \text{observed}\}) / (1 + B)`. The spaces are
combined by the smaller p-value, :math:`m = \min_j p_j`, calibrated on the same null draws: each
draw's p-values are ranked among the other draws and the observations, and
:math:`p = \#\{b : m_b \leq m\} / (1 + B)`, the observations counted, is the rank of one
exchangeable draw among :math:`B + 1`. Under the model it is uniform for one observation (for a
batch, up to the resampling of the held-out draws), so rejecting at :math:`p < \alpha` raises a
false alarm with probability :math:`\alpha`.

**Power, and "not detectable".** A test that is not rejected says little where it could not
have seen a misfit. The same held-out simulations give its power against a stated alternative:
each one's deviation from the least-squares linear prediction of :math:`x` from :math:`\theta`
(fitted on the reference; for sets, of each member) is multiplied by :data:`ALTERNATIVE_SCALE`
(3), so the data lie three times as far from what the model predicts at their parameters as
its own scatter does (noise :math:`\times 3` for a model linear in :math:`\theta`). Where the
share of such batches rejected at ``alpha`` is below :data:`DETECTABLE_POWER` (0.5), a result
that is not rejected reads "not detectable from one observation" (or from :math:`k`).
docs/misspecification.md gives the power on three models, and why this threshold.

**Outlying members.** For one group of members (a :class:`sbikit.MixedEffects` model, or
i.i.d. observations), new members are simulated from the posterior predictive
:math:`\theta \sim q(\theta | x_o)`, :math:`\tilde x \sim p(x | \theta)`; a kernel density
estimate of half of them (scipy's ``gaussian_kde``) scores each member by its negative log
density, and the other half calibrates the score into a p-value per member.
"""

__all__ = [
    "ALTERNATIVE_SCALE", "DETECTABLE_POWER", "MisspecificationResult", "OutlierResult", "misspecification", "outliers",
    "summaries",
]

import dataclasses
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

ALTERNATIVE_SCALE = 3.0  # the stated alternative: deviations from the model's prediction at theta, times 3
DETECTABLE_POWER = 0.5  # below this power against it, "not rejected" reads "not detectable"
_WIDTHS = (0.5, 1.0, 2.0)  # kernel widths, in units of the median distance
_MEDIAN_ROWS = 1000  # reference rows the median distance is estimated from


def _plain(x: Tensor, is_set: bool) -> Tensor:
    r"""Features of observations without a learned summary: the values, or for sets :math:`(m, M, L)`
    each feature's mean and sd over the members."""

    if not is_set:
        return x.reshape(len(x), -1)
    sd = x.std(-2) if x.shape[-2] > 1 else torch.zeros_like(x[:, 0])
    return torch.cat([x.mean(-2), sd], -1)


def summaries(posterior: object, data: Simulations) -> dict[str, Tensor]:
    r"""The features the test compares, by space, each :math:`(N, F)`: ``"observations"`` (the
    data's own statistics, see the module's description) and, when the posterior has
    ``summarize(x)``, ``"learned summaries"``."""

    summarize = getattr(posterior, "summarize", None)
    out = {}
    for rows, x in groups(data):
        spaces = {"observations": _plain(x, data.mask is not None)}
        if callable(summarize):
            spaces["learned summaries"] = as_float_tensor(summarize(x), "posterior.summarize(x)")
        for name, s in spaces.items():
            if s.ndim != 2 or len(s) != len(rows):
                raise ValueError(f"summaries must be (m, F) for {len(rows)} observations, got {tuple(s.shape)}.")
            out.setdefault(name, torch.empty(len(data), s.shape[1]))[rows] = s
    return out


def _kernel(a: Tensor, b: Tensor, widths: Tensor) -> Tensor:
    d2 = torch.cdist(a.double(), b.double()).square()
    return sum(torch.exp(-d2 / (2 * width**2)) for width in widths) / len(widths)


class _Space:
    r"""One feature space, standardized on the reference rows :math:`(R, F)` (whitened by their
    covariance if ``whiten`` and there are at least :math:`4F` rows), and the MMD against them."""

    def __init__(self, reference: Tensor, whiten: bool):
        self.loc = reference.double().mean(0)
        centred = reference.double() - self.loc
        if whiten and 4 * centred.shape[1] <= len(centred):
            values, vectors = torch.linalg.eigh(centred.T @ centred / (len(centred) - 1))
            self.scale = vectors / values.clamp_min(1e-6 * float(values.max()) + 1e-300).sqrt()
        else:
            self.scale = 1 / centred.std(0).clamp_min(1e-12)
        self.reference = self(reference)
        median = torch.pdist(self.reference[:_MEDIAN_ROWS]).median().clamp_min(1e-12)
        self.widths = median * torch.tensor(_WIDTHS, dtype=torch.float64)
        self.kernel_rr = _kernel(self.reference, self.reference, self.widths).mean()

    def __call__(self, features: Tensor) -> Tensor:
        centred = features.double() - self.loc
        return centred @ self.scale if self.scale.ndim == 2 else centred * self.scale

    def mmd(self, rows: Tensor, picks: Tensor | None) -> tuple[Tensor, Tensor]:
        r"""The MMD of each standardized row alone, :math:`(n,)`, and of each batch ``rows[picks[b]]``,
        :math:`(B,)` (the rows alone again if ``picks`` is None)."""

        to_reference = _kernel(rows, self.reference, self.widths).mean(1)
        single = 1 - 2 * to_reference + self.kernel_rr  # kappa(s, s) = 1
        if picks is None:
            return single, single
        within = _kernel(rows, rows, self.widths)[picks.unsqueeze(-1), picks.unsqueeze(-2)].mean((1, 2))
        return single, within - 2 * to_reference[picks].mean(1) + self.kernel_rr


def _combine(null: Tensor, observed: Tensor) -> Tensor:
    r"""The p-values of :math:`\min_j p_j` for observed statistics :math:`(J, k)` (each column
    tested alone) under null statistics :math:`(J, B)` in :math:`J` spaces, :math:`(k,)`: each null
    draw's p-value counts the draws and the observation at or above it (see the module)."""

    ordered = null.sort(-1).values
    above = lambda v: null.shape[1] - torch.searchsorted(ordered, v.contiguous())  # noqa: E731 (#null >= v)
    rank, counts = above(null).unsqueeze(1), []  # (J, 1, B); p-values in units of 1 / (1 + B)
    for part in observed.split(256, dim=1):  # (J, <= 256) at a time: null_p is (J, 256, B)
        null_p = rank + (part.unsqueeze(-1) >= null.unsqueeze(1))
        smallest = (1 + above(part)).min(0).values.unsqueeze(-1)
        counts.append(1 + (null_p.min(0).values <= smallest).sum(-1))
    return torch.cat(counts).double() / (1 + null.shape[1])


def _widened(test: Simulations, half: int, factor: float) -> Simulations:
    r"""The held-out rows ``test[half:]``, each observation's deviation from its least-squares
    linear prediction from :math:`\theta` (fitted on ``test[:half]``) multiplied by ``factor``;
    for sets, each member's."""

    x = (test.x.reshape(len(test), 1, -1) if test.mask is None else test.x).double()
    present = torch.ones(x.shape[:2], dtype=torch.bool) if test.mask is None else test.mask
    design = torch.cat([torch.ones(len(test), 1), test.theta], 1).double().unsqueeze(1).expand(-1, x.shape[1], -1)
    fit = present.clone()
    fit[half:] = False
    predicted = design @ torch.linalg.lstsq(design[fit], x[fit]).solution
    wide = torch.where(present.unsqueeze(-1), predicted + factor * (x - predicted), x)
    return dataclasses.replace(test, x=wide.float().reshape(test.x.shape))[half:]


@dataclass(frozen=True, repr=False)
class MisspecificationResult:
    r"""The test of whether the model could have produced the observations, in one or two spaces.

    Attributes:
        statistic: :math:`\mathrm{MMD}^2` between the observations and the reference, in ``space``.
        p_value: The combined p-value under the model (the smaller of ``p_values``, calibrated).
        null: The null distribution of ``statistic`` for as many observations, :math:`(B,)`.
        observation_p_values: Each observation's combined p-value on its own, :math:`(k,)`.
        alpha: The level of the test.
        space: The space of ``statistic``, ``null``, ``observed`` and ``reference``:
            ``"learned summaries"`` where the posterior has them, else ``"observations"``.
        observed: The observations' standardized features there, :math:`(k, F)`.
        reference: The reference simulations' standardized features there, :math:`(R, F)`.
        p_values: Each space's own p-value, by name: ``{"observations": ..., "learned summaries": ...}``.
        power: The share of batches of the stated alternative (see the module) rejected at ``alpha``.
    """

    statistic: float
    p_value: float
    null: np.ndarray
    observation_p_values: np.ndarray
    alpha: float
    space: str
    observed: np.ndarray
    reference: np.ndarray
    p_values: dict[str, float]
    power: float

    @property
    def rejected(self) -> bool:
        r"""Whether "the simulator produced these observations" is rejected at ``alpha``."""

        return self.p_value < self.alpha

    @property
    def detectable(self) -> bool:
        r"""Whether the test had the power (at least :data:`DETECTABLE_POWER`) to see the stated alternative."""

        return self.power >= DETECTABLE_POWER

    @property
    def verdict(self) -> str:
        r"""``"rejected"``, ``"not rejected"``, or ``"not detectable from one observation"`` (or
        from :math:`k`) where the test is not rejected and lacked the power to be."""

        if self.rejected or self.detectable:
            return "rejected" if self.rejected else "not rejected"
        count = len(self.observed)
        return f"not detectable from {'one observation' if count == 1 else f'{count} observations'}"

    def __repr__(self) -> str:
        spaces = ", ".join(f"{name} {p:.3g}" for name, p in self.p_values.items())
        return (
            f"MisspecificationResult(observations={len(self.observed)}, p_value={self.p_value:.3g}, "
            f"{self.verdict} at alpha={self.alpha})\n  p-values by space: {spaces}"
            + (" (the smaller, calibrated)" if len(self.p_values) > 1 else "")
            + f"\n  power {self.power:.2f} against deviations from the model x {ALTERNATIVE_SCALE:g}"
            + ("" if self.detectable or self.rejected else f" (below {DETECTABLE_POWER}: it would likely go unseen)")
            + f"\n  MMD^2={self.statistic:.4g} in the space of {self.space} ({self.observed.shape[1]} features), "
            f"against {len(self.reference)} simulations; null from {len(self.null)} draws"
        )

    def plot(self, figure=None):
        r"""Plots the null distribution with the observed statistic, and the observations over the
        reference in the first two principal components of the features. Returns the figure."""

        figure, (left, right) = panels(2, figure, size=(3.6, 3.2))
        left.hist(self.null, bins=40, color="0.7")
        left.axvline(self.statistic, color="C3" if self.rejected else "C0", lw=2)
        left.set_xlabel("MMD$^2$ under the model")
        left.set_title(f"p = {self.p_value:.3g} ({self.space}: {self.p_values[self.space]:.3g})", fontsize=10)
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


class _Calibration:
    r"""The test for batches of ``count`` observations, calibrated once on ``test``: each space's
    reference and null, and the power against the stated alternative. ``self(x_obs)`` tests a
    batch :math:`(count, *x\_shape)` (or :math:`(count, M, L)` for sets)."""

    def __init__(self, posterior: object, test: Simulations, count: int, num_null: int, alpha: float, seed: int):
        half = len(test) // 2
        if count > 1 and 20 * count > len(test) - half:  # null batches drawn from fewer are too alike
            raise ValueError(
                f"x_obs has {count} observations but only {len(test) - half} held-out simulations calibrate the "
                f"test, and a batch needs 20 per observation; pass at least {40 * count} test simulations."
            )
        generator = torch.Generator().manual_seed(seed)
        picks = None if count == 1 else torch.stack(  # one observation: each held-out simulation once
            [torch.randperm(len(test) - half, generator=generator)[:count] for _ in range(num_null)]
        )
        wide = summaries(posterior, _widened(test, half, ALTERNATIVE_SCALE))
        self.posterior, self.test, self.alpha, self.spaces = posterior, test, alpha, {}
        null, single, alternative = [], [], []
        for name, features in summaries(posterior, test).items():
            space = self.spaces[name] = _Space(features[:half], whiten=name == "observations")
            each, batches = space.mmd(space(features[half:]), picks)
            single.append(each)
            null.append(batches)
            alternative.append(space.mmd(space(wide[name]), picks)[1])
        self.null, self.single_null = torch.stack(null), torch.stack(single)  # (J, B), (J, P)
        self.power = float((_combine(self.null, torch.stack(alternative)) < alpha).double().mean())

    def __call__(self, x_obs: Tensor) -> MisspecificationResult:
        mask = None if self.test.mask is None else torch.ones(x_obs.shape[:2], dtype=torch.bool)
        data = Simulations(theta=torch.zeros(len(x_obs), 1), x=x_obs, structure=self.test.structure, mask=mask)
        features = summaries(self.posterior, data)
        observed = {name: space(features[name]) for name, space in self.spaces.items()}
        batch = torch.arange(len(x_obs)).unsqueeze(0)
        pairs = [space.mmd(observed[name], batch) for name, space in self.spaces.items()]
        single, statistic = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])  # (J, k), (J, 1)
        names = list(self.spaces)
        j = names.index("learned summaries") if "learned summaries" in names else 0
        p_values = (1 + (self.null >= statistic).sum(1)).double() / (1 + self.null.shape[1])
        return MisspecificationResult(
            statistic=float(statistic[j, 0]),
            p_value=float(_combine(self.null, statistic)[0]),
            null=self.null[j].numpy(),
            observation_p_values=_combine(self.single_null, single).numpy(),
            alpha=self.alpha,
            space=names[j],
            observed=observed[names[j]].numpy(),
            reference=self.spaces[names[j]].reference.numpy(),
            p_values=dict(zip(names, p_values.tolist())),
            power=self.power,
        )


def misspecification(
    posterior: object,
    test: object,
    x_obs: object,
    num_null: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> MisspecificationResult:
    r"""Tests whether the simulator could have produced ``x_obs``, in the data's own statistics and
    in the posterior's learned summaries, and says how much power the test had.

    Arguments:
        posterior: A posterior; its ``summarize(x)`` :math:`\to (m, F)`, when it has one, gives
            the second space (an NPE posterior's summary network and regression adjustment).
        test: Simulations from the model, :class:`sbikit.Simulations` or ``(theta, x)``, not
            the training data; half are the reference and half calibrate the p-value and the
            power, so a few hundred or more are needed, and :math:`40 k` for a batch of :math:`k`.
        x_obs: One observation :math:`(*x\_shape)` or a batch :math:`(k, *x\_shape)` of
            observations from the same source, tested together.
        num_null: The draws of the null distribution (for one observation, each held-out
            simulation once).
        alpha: The level of the test.
        seed: Seeds the null draws.

    Returns:
        A :class:`MisspecificationResult`: ``p_value``, ``rejected``, ``p_values`` by space,
        ``power``, ``verdict`` ("rejected", "not rejected" or "not detectable from one
        observation"), per-observation ``observation_p_values`` and ``plot()``.

    Example:
        >>> prior = sbikit.BoxUniform(-2 * torch.ones(3), 2 * torch.ones(3))
        >>> test = sbikit.simulate(lambda t: t + 0.1 * torch.randn_like(t), prior, 1000, seed=1)
        >>> posterior = object()  # without summarize(x): the data's own statistics only
        >>> result = misspecification(posterior, test, torch.tensor([0.5, -0.2, 1.0]))
        >>> result.p_values.keys(), result.verdict  # noise x 3 inside the box would go unseen
        (dict_keys(['observations']), 'not detectable from one observation')
        >>> misspecification(posterior, test, torch.tensor([0.5, -0.2, 3.0])).rejected
        True
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
    return _Calibration(posterior, test, len(x_obs), num_null, alpha, seed)(x_obs)


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
