r"""Posterior predictive checks: data simulated from posterior draws, compared with the observation.

With :math:`\theta_s \sim q(\theta | x_o)` and :math:`\tilde x_s \sim p(x | \theta_s)`, a
statistic :math:`T` gets the two-sided posterior predictive p-value

.. math:: p_T = 2 \min\left(P(T(\tilde x) \geq T(x_o)), P(T(\tilde x) \leq T(x_o))\right),

small when the observation is atypical of the data the fitted model produces. The statistics
are each feature of a vector or array observation (for sets, each feature's mean and
standard deviation over the members), and each feature of the posterior's learned summary
when it has one (``posterior.summarize``). Posterior predictive p-values use the data twice
and are conservative: a small one is evidence, a large one is not proof.
"""

__all__ = ["PPCResult", "ppc", "replicable", "simulate_at"]

import numpy as np
import torch

from dataclasses import dataclass
from torch import Tensor

from .. import _arviz
from .._checks import check_count
from ..data import as_float_tensor
from ..runs.chunk import run_chunk
from ..simulator import Simulator
from ._draws import check_alpha, check_posterior, sample_given
from ._plot import panels

MAX_PANELS = 12


def _is_mixed_effects(simulator: object) -> bool:
    return callable(getattr(simulator, "local_prior", None)) and callable(getattr(simulator, "member_simulator", None))


def replicable(simulator: object) -> bool:
    r"""Whether :func:`simulate_at` can run ``simulator`` at given parameters."""

    return _is_mixed_effects(simulator) or isinstance(simulator, Simulator) or (
        callable(simulator) and not hasattr(simulator, "run_chunk"))


def simulate_at(simulator: object, theta: Tensor, members: int | None = None) -> Tensor:
    r"""Simulates at given parameters :math:`(n, D)`: a :class:`sbikit.Simulator` (or a batched
    function, taken as ``Simulator(function)``) returns :math:`(n, *x\_shape)`, with NaN rows where
    a simulation failed; a mixed-effects model (with ``local_prior`` and ``member_simulator``)
    returns ``members`` members per row, :math:`(n, M, L)`, or one member per row, :math:`(n, L)`,
    when ``members`` is None. The seeds come from torch's global generator, which the caller seeds.

    Raises:
        TypeError: If ``simulator`` cannot be run at given parameters (a ``StateSpace`` model).
        sbikit.SimulatorShapeError: If it returns another number of rows than ``theta`` has.
        RuntimeError: If every simulation raised, with the first error.
    """

    with torch.no_grad():
        if _is_mixed_effects(simulator):
            g = theta if members is None else theta.repeat_interleave(members, 0)
            local = simulator.local_prior(g).sample()
            x = as_float_tensor(simulator.member_simulator(g, local), "member_simulator's output")
            x = x.reshape(len(g), -1)
            return x if members is None else x.reshape(len(theta), members, -1)
        if not replicable(simulator):
            raise TypeError(
                "simulator must be a sbikit.Simulator, a batched function theta (n, D) -> x (n, *x_shape) or a "
                f"sbikit.MixedEffects model; got {type(simulator).__name__}. For a StateSpace model, pass a "
                "function that simulates it at given parameters."
            )
        simulator = simulator if isinstance(simulator, Simulator) else Simulator(simulator)
        root = int(torch.randint(2**62, ()))
        chunk = run_chunk(simulator.function, simulator.prior, root, 0, len(theta), theta=theta, **simulator.options)
    if chunk.x is None:
        first = chunk.failures[0]
        raise RuntimeError(f"all {len(theta)} simulations raised; the first: {first.message}") from chunk.error
    return chunk.x.unsqueeze(-1) if chunk.x.ndim == 1 else chunk.x


def statistics(x: Tensor, is_set: bool) -> tuple[Tensor, list[str]]:
    r"""The checked statistics of observations :math:`(n, *x\_shape)`, :math:`(n, K)`, and their names."""

    if is_set:
        features = x.shape[-1]
        names = [f"mean x[{j}]" for j in range(features)] + [f"sd x[{j}]" for j in range(features)]
        return torch.cat([x.mean(-2), x.std(-2) if x.shape[-2] > 1 else torch.zeros_like(x[..., 0, :])], -1), names
    flat = x.reshape(len(x), -1)
    shape = x.shape[1:]
    names = ["x[" + ",".join(map(str, np.unravel_index(i, shape))) + "]" for i in range(flat.shape[1])]
    return flat, names


def predictive_p_values(replicated: np.ndarray, observed: np.ndarray) -> np.ndarray:
    r"""Two-sided posterior predictive p-values of statistics :math:`(K,)` against replicates :math:`(n, K)`."""

    above = (replicated >= observed).mean(0)
    below = (replicated <= observed).mean(0)
    return np.minimum(1.0, 2 * np.minimum(above, below))


@dataclass(frozen=True, repr=False)
class PPCResult:
    r"""A posterior predictive check of one observation.

    Attributes:
        samples: The posterior draws, :math:`(n, D)`.
        predictive: The data simulated from them, :math:`(n, *x\_shape)`.
        observed: The observation, :math:`(*x\_shape)`.
        names: The statistics' names, :math:`K`: features (or, for sets, each feature's
            mean and sd over members), then ``summary[i]`` for the learned summaries.
        replicated: The statistics of the simulated data, :math:`(n, K)`.
        observed_statistics: The observation's, :math:`(K,)`.
        p_values: Two-sided posterior predictive p-values, :math:`(K,)`.
        idata: An arviz InferenceData with ``posterior``, ``posterior_predictive`` and
            ``observed_data`` groups.
        alpha: The level below which a statistic is flagged.
    """

    samples: np.ndarray
    predictive: np.ndarray
    observed: np.ndarray
    names: list[str]
    replicated: np.ndarray
    observed_statistics: np.ndarray
    p_values: np.ndarray
    idata: object
    alpha: float

    @property
    def flagged(self) -> list[str]:
        r"""The statistics whose p-value is below ``alpha``."""

        return [n for n, p in zip(self.names, self.p_values) if p < self.alpha]

    def __repr__(self) -> str:
        order = np.argsort(self.p_values)[:5]
        worst = ", ".join(f"{self.names[i]}: {self.p_values[i]:.3g}" for i in order)
        return (
            f"PPCResult(num_samples={len(self.samples)}, statistics={len(self.names)}, "
            f"flagged={len(self.flagged)} at alpha={self.alpha})\n  smallest p-values: {worst}"
        )

    def plot(self, figure=None):
        r"""Histograms of the replicated statistics with the observed value (red where flagged),
        for the 12 with the smallest p-values. Returns the figure."""

        shown = np.argsort(self.p_values, kind="stable")[:MAX_PANELS]
        figure, axes = panels(len(shown), figure, size=(2.6, 2.1))
        for ax, i in zip(axes, shown):
            ax.hist(self.replicated[:, i], bins=30, color="0.7")
            ax.axvline(self.observed_statistics[i], color="C3" if self.p_values[i] < self.alpha else "C0", lw=2)
            ax.set_title(f"{self.names[i]}: p = {self.p_values[i]:.2g}", fontsize=8)
            ax.set_yticks([])
            ax.tick_params(labelsize=7)
        figure.suptitle("posterior predictive check (line: observed)", fontsize=10)
        return figure


def ppc(
    posterior: object, simulator: object, x_obs: object, num_samples: int = 500, alpha: float = 0.05, seed: int = 0
) -> PPCResult:
    r"""Simulates from posterior draws and compares the simulated data with the observation.

    Arguments:
        posterior: Anything with ``sample(n, x=x_obs)`` :math:`\to (n, D)` (or ``sample(n)`` for a
            posterior built for ``x_obs``, with ``amortized = False``, such as NLE's); with a
            ``summarize(x)`` method too, its learned summaries are checked as well.
        simulator: A :class:`sbikit.Simulator`, a batched function :math:`(n, D) \to (n, *x\_shape)`, or a
            :class:`sbikit.MixedEffects` model (then the replicated groups have as many
            members as ``x_obs``).
        x_obs: One observation :math:`(*x\_shape)`.
        num_samples: The posterior draws, one simulation each.
        alpha: The level below which a statistic is flagged.
        seed: Seeds the posterior draws and the simulations.

    Returns:
        A :class:`PPCResult`: ``p_values`` per statistic, ``flagged``, ``idata`` and ``plot()``.
    """

    check_posterior(posterior, log_prob=False)
    num_samples = check_count(num_samples, "num_samples")
    alpha = check_alpha(alpha)
    x_obs = as_float_tensor(x_obs, "x_obs")
    is_set = _is_mixed_effects(simulator) or getattr(posterior, "structure", None) == "set"
    if is_set and x_obs.ndim != 2:
        raise ValueError(f"x_obs must be one group of members (M, L), got {tuple(x_obs.shape)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theta = sample_given(posterior, num_samples, x_obs)
        x_rep = simulate_at(simulator, theta, x_obs.shape[-2] if is_set else None)
    if x_rep.shape[1:] != x_obs.shape:
        raise ValueError(
            f"the simulator returned observations of shape {tuple(x_rep.shape[1:])}, but x_obs has shape "
            f"{tuple(x_obs.shape)}; pass one observation of the simulator's shape."
        )
    valid = torch.isfinite(x_rep.reshape(num_samples, -1)).all(1)
    replicated, names = statistics(x_rep[valid], is_set)
    observed, _ = statistics(x_obs.unsqueeze(0), is_set)
    summarize = getattr(posterior, "summarize", None)
    if callable(summarize):
        replicated = torch.cat([replicated, as_float_tensor(summarize(x_rep[valid]), "summaries")], -1)
        learned = as_float_tensor(summarize(x_obs.unsqueeze(0)), "summaries")
        observed = torch.cat([observed, learned], -1)
        names = names + [f"summary[{i}]" for i in range(learned.shape[-1])]
    replicated, observed = replicated.double().numpy(), observed[0].double().numpy()
    parameter_names = getattr(posterior, "parameter_names", None) or [f"theta_{i}" for i in range(theta.shape[1])]
    idata = _arviz.predictive_to_inference_data(
        theta.numpy()[None], parameter_names, x_rep.numpy()[None], x_obs.numpy(), attrs={"check": "ppc"}
    )
    return PPCResult(
        samples=theta.numpy(),
        predictive=x_rep.numpy(),
        observed=x_obs.numpy(),
        names=names,
        replicated=replicated,
        observed_statistics=observed,
        p_values=predictive_p_values(replicated, observed),
        idata=idata,
        alpha=alpha,
    )
