r"""Vectorized MCMC for unnormalized densities on :math:`\mathbb{R}^D`: independence
Metropolis-Hastings with a fitted proposal, and Hamiltonian Monte Carlo where no proposal fits.

**The proposal.** Adaptive importance sampling from prior draws fits one Gaussian
(:func:`sbikit.proposals.importance_fit`); where it fits poorly (several modes, crescents), a
mixture of Student t distributions fitted by weighted EM (:func:`sbikit.proposals.mixture_fit`). With a proposal
:math:`g` close to the posterior :math:`\pi`, independence Metropolis-Hastings (propose
:math:`y \sim g`, accept with :math:`\min(1, \pi(y) g(z) / (\pi(z) g(y)))`) is a
Markov chain whose draws are nearly independent and which moves between the modes that
:math:`g` covers; its proposals do not depend on the chains, so all of them are evaluated
in a few large calls, and only the accept-reject steps run in sequence
(:meth:`HMC.sample_independent`).

**HMC.** Many chains move at once: each leapfrog step evaluates the log-density and its
gradient (torch autograd) for all chains in one call, so a network behind the
density runs once per step, whatever the number of chains. One iteration draws
momenta :math:`p \sim \mathcal{N}(0, M)`, integrates Hamilton's equations for
:math:`H(z, p) = -\log \pi(z) + \tfrac12 p^\top M^{-1} p` with :math:`L` leapfrog
steps of size :math:`\varepsilon`, and accepts the end point with probability
:math:`\min(1, e^{H_0 - H_1})`, which leaves :math:`\pi` invariant.

Warm-up adapts, from all chains pooled:

- the step size, by dual averaging (Hoffman and Gelman, 2014) of the mean
  acceptance probability towards ``target_accept``;
- a diagonal mass matrix :math:`M^{-1} = \mathrm{diag}(\mathrm{Var}\,z)`, from the
  positions of every chain over two windows (as Stan does, but pooled over chains,
  so short windows estimate it well);
- the number of leapfrog steps, :math:`L = \lceil \tau / \varepsilon \rceil`, so that
  each iteration travels a time :math:`\tau` (``trajectory``) in units where the
  posterior has unit scale; :math:`\tau \approx \pi / 2` turns a Gaussian's position
  into an independent draw. The step size is jittered by :math:`\pm 20\%` per iteration
  against periodic trajectories.

Why HMC, by measurement. The NLE posterior's density is a flow evaluated for every
(chain, trial) pair; on a CPU one call costs about as much for 10 chains as for 100,
so the sampler's cost is the number of calls. A gradient costs about three
forward passes, and HMC needs a few gradients per nearly independent draw, in any
dimension. A slice sampler, as sbi's default, needs several forward passes per
dimension per draw (10 dimensions: about 50 calls per iteration), and its draws are
correlated. With 64 chains, a short pooled warm-up and about 16 draws per chain,
1,000 posterior draws take a few hundred calls (see ``benchmarks/nle.py``).

What HMC does not do: jump between well-separated modes. Chains start from
importance-resampled prior draws, so several modes get chains; each iteration adds an
independence step from the fitted proposal, which moves chains between the modes it
covers; otherwise their shares are fixed, and :math:`\hat R` reports the disagreement
(a ``RuntimeWarning``).

Finding the modes. Where the likelihood is far narrower than the prior, a few prior draws
dominate the weights, and a Gaussian fitted near the heaviest has a high effective sample
size, because its own draws never reach the other modes. :class:`sbikit.MCMCPosterior` therefore
draws more prior draws where few carry the weight, fits a mixture wherever a point beyond
the Gaussian is as dense as the Gaussian's edge, and fits it to the particles of tempered
sequential Monte Carlo from the prior (the likelihood raised to a power that grows from 0 to 1,
with random-walk moves at each step), seeded as k-means++ does, its seeds beyond the Gaussian
moved uphill by gradient ascent before the first proposal. On a posterior with four narrow
modes of equal mass (SLCP's sign symmetry, ``tests/test_mcmc.py``), the runs that missed a mode
went from 10 of 10 seeds (before any search for modes) to 2 of 20 (the mixture from prior
draws) and 0 of 20 (from the particles). The particles cannot move between modes that separate
early, so each keeps the share that resampling left it; the importance weights that follow
correct the shares, but a mode with few particles may still get too little. Then R-hat often,
but not always, warns.

With many trials the modes are so narrow that no prior draw beyond the Gaussian is as dense as
its edge, even where another mode exists. Then 64 prior draws beyond it (the densest half and a
random half) climb the log density by gradient ascent, first on the prior draws' scale (on at
most 128 of the trials), then on the Gaussian's (on all), each stopping once it enters the
Gaussian's ellipsoid; one that ends beyond it as dense as its edge is another mode, and also
seeds the mixture. On four narrow modes of 100
and 1,000 trials with shares from 3% to 63% (``tests/test_mcmc.py``), every seed tried before
this search gave the Gaussian's mode alone, with no warning, and after it all four, with their
shares. A mode whose basin none of the 64 draws starts in is still missed, without a warning.
"""

__all__ = ["MCMCConfig", "Chains", "HMC", "SamplingError", "StudentMixture", "importance_fit", "mixture_fit"]

import dataclasses
import math
import numpy as np
import torch

from collections.abc import Callable
from dataclasses import dataclass
from torch import Tensor

from .errors import SamplingError
from .proposals import COMPONENTS, StudentMixture, importance_fit, mixture_fit

_DIVERGENCE = 1000.0  # an energy error above this ends a trajectory as divergent
_BLOCK = 8192  # independent proposals (all chains) evaluated per call, at least 16 iterations


@dataclass(frozen=True)
class MCMCConfig:
    r"""Settings of the vectorized HMC sampler.

    Arguments:
        num_chains: The chains run in parallel; the draws of ``sample(n)`` are spread
            over them, :math:`\lceil n / C \rceil` per chain.
        warmup: Warm-up iterations (step size and mass matrix adaptation), run once,
            before the first draws; their positions are discarded.
        thin: Keep every ``thin``-th iteration. HMC draws are nearly independent,
            so 1 (no thinning) is the default.
        target_accept: The mean acceptance probability the step size is adapted to.
        trajectory: The integration time of one iteration, in units of the adapted
            posterior scale.
        max_leapfrog: The most leapfrog steps per iteration.
        num_candidates: Prior draws from which the chains' starting points are
            importance-resampled (without replacement, by the likelihood), and the draws
            per round of the importance fits. Where their weights' effective sample size is
            below 32, more prior draws are added, doubling, up to :math:`2^{17}` (draw,
            trial) pairs in all (or ``num_candidates`` draws, where that is more).
        max_rhat: Warn when any parameter's :math:`\hat R` exceeds this.
        min_ess: Warn when any parameter's bulk effective sample size is below this
            (100, the minimum Vehtari et al. (2021) give for reliable estimates).
        independence: Whether to sample with independence proposals alone (on
            ``max(4, num_chains // 8)`` chains of at least :math:`512 \min(30, \lceil 1 / s \rceil)`
            draws) where adaptive importance sampling found a usable approximation (an
            effective sample size share :math:`s` of 1% or more); False always runs HMC.
        mixture_components: Where one Gaussian fits the posterior poorly (an effective sample
            size share below 30%), adaptive importance sampling also fits a mixture of at most
            this many Student t components (:func:`mixture_fit`), and the better fit gives the
            independence proposals (of the independence sampler, or of the independence step
            that HMC adds to each iteration); 1 fits one Gaussian only.
        show_progress: Whether to show a progress bar; None shows one on a terminal.

    Example:
        >>> MCMCConfig(num_chains=8).num_chains
        8
    """

    num_chains: int = 64
    warmup: int = 50
    thin: int = 1
    target_accept: float = 0.8
    trajectory: float = 1.5
    max_leapfrog: int = 16
    num_candidates: int = 2000
    max_rhat: float = 1.01
    min_ess: int = 100
    independence: bool = True
    mixture_components: int = COMPONENTS
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        for name in ("num_chains", "warmup", "thin", "max_leapfrog", "num_candidates", "min_ess",
                     "mixture_components"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MCMCConfig.{name} must be a positive int, got {value!r}.")
        if not (isinstance(self.target_accept, float) and 0.0 < self.target_accept < 1.0):
            raise ValueError(f"MCMCConfig.target_accept must be a float in (0, 1), got {self.target_accept!r}.")
        for name in ("trajectory", "max_rhat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"MCMCConfig.{name} must be a positive number, got {value!r}.")
        if not isinstance(self.independence, bool):
            raise TypeError(f"MCMCConfig.independence must be True or False, got {self.independence!r}.")
        if self.num_candidates < self.num_chains:
            raise ValueError(
                f"MCMCConfig.num_candidates ({self.num_candidates}) must be at least num_chains ({self.num_chains})."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Chains:
    r"""The draws of :meth:`HMC.sample`: positions :math:`(C, S, D)`, their log-densities
    :math:`(C, S)`, and per iteration the acceptance probability and whether the
    trajectory diverged, :math:`(C, S)`."""

    draws: Tensor
    log_density: Tensor
    accept: Tensor
    divergent: Tensor


class _DualAveraging:
    r"""Hoffman and Gelman's (2014) step-size adaptation: :math:`\log \varepsilon_t` is
    driven by the running mean of (target - acceptance), and the iterates are averaged."""

    def __init__(self, step_size: float, target: float) -> None:
        self.mu, self.target = math.log(10 * step_size), target
        self.error, self.log_mean, self.t = 0.0, 0.0, 0
        self.log_step = math.log(step_size)

    def update(self, accept: float) -> float:
        self.t += 1
        w = 1.0 / (self.t + 10)
        self.error = (1 - w) * self.error + w * (self.target - accept)
        self.log_step = self.mu - math.sqrt(self.t) / 0.05 * self.error
        eta = self.t**-0.75
        self.log_mean = eta * self.log_step + (1 - eta) * self.log_mean
        return math.exp(self.log_step)

    @property
    def final(self) -> float:
        return math.exp(self.log_mean)


class HMC:
    r"""Vectorized HMC with a diagonal mass matrix, over :math:`C` chains in :math:`\mathbb{R}^D`.

    Arguments:
        log_density: Maps positions :math:`(C, D)` to unnormalized log-densities
            :math:`(C,)`, differentiably; :math:`-\infty` marks zero density.
        init: The chains' starting points :math:`(C, D)`, of finite log-density.
        config: The settings.
        describe: Optionally maps one position :math:`(D,)` to a text that says what
            is not finite there (used in the error when the density is NaN or
            :math:`+\infty`).
        approximation: Optionally a Gaussian approximation of the density, its mean :math:`(D,)`
            and Cholesky factor :math:`(D, D)`: the chains then move in its whitened
            coordinates, and every iteration adds an independence step (see ``proposal``).
        proposal: The independence proposal; by default, with an ``approximation``, a
            Student t around it (:class:`StudentMixture`).
        bulk: Maps many positions :math:`(B, D)` to log-densities :math:`(B,)` without
            gradients (in chunks, as the caller's memory allows); ``log_density`` by default.

    Example:
        >>> target = lambda z: -0.5 * (z**2).sum(-1)
        >>> hmc = HMC(target, torch.randn(8, 2), MCMCConfig(num_chains=8, warmup=50, show_progress=False))
        >>> hmc.warmup()
        >>> hmc.sample(10).draws.shape
        torch.Size([8, 10, 2])
    """

    def __init__(
        self,
        log_density: Callable[[Tensor], Tensor],
        init: Tensor,
        config: MCMCConfig,
        describe: Callable[[Tensor], str] | None = None,
        approximation: tuple[Tensor, Tensor] | None = None,
        proposal: StudentMixture | None = None,
        bulk: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.config, self.describe = config, describe
        dim = init.shape[-1]
        self.loc, self.tril = approximation if approximation is not None else (torch.zeros(dim), torch.eye(dim))
        if proposal is None and approximation is not None:
            proposal = StudentMixture.single(self.loc, self.tril)
        self.proposal, self.independence = proposal, proposal is not None
        self.f = lambda y: log_density(self._position(y))
        bulk = log_density if bulk is None else bulk
        self.f_bulk = lambda y: bulk(self._position(y))
        self.phase, self.iteration = "initialization", 0
        self.z = torch.linalg.solve_triangular(self.tril, (init.detach().float() - self.loc).T, upper=False).T
        self.lp, self.grad = self._value_and_grad(self.z)
        if not bool(torch.isfinite(self.lp).all()):
            chain = int((~torch.isfinite(self.lp)).nonzero()[0])
            raise SamplingError(f"chain {chain} starts where the log density is {float(self.lp[chain])}; "
                                "start every chain where the density is positive.")
        spread = self.z.var(0) if len(self.z) > 1 and approximation is None else torch.ones_like(self.z[0])
        self.inv_mass = torch.where(spread > 1e-12, spread, torch.ones_like(spread))
        self.step_size = 1.0
        self.warmed_up = False

    def _position(self, y: Tensor) -> Tensor:
        r"""Maps the sampler's whitened coordinates :math:`y` to positions :math:`z = m + L y`."""

        return self.loc + y @ self.tril.T

    def _value_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lp = self.f(z)
            (grad,) = torch.autograd.grad(lp.sum(), z)
        lp = lp.detach()
        bad = torch.isnan(lp) | (lp == math.inf)
        if bool(bad.any()):
            self._fail(z.detach(), bad, "the log density is " + ("NaN" if bool(torch.isnan(lp).any()) else "+inf"))
        finite = torch.isfinite(lp)
        if bool((finite & ~torch.isfinite(grad).all(-1)).any()):
            self._fail(z.detach(), finite & ~torch.isfinite(grad).all(-1), "the gradient of the log density is not finite")
        # -inf (zero density) ends a trajectory as divergent; its gradient is not used
        return lp, torch.where(finite.unsqueeze(-1), grad, 0.0)

    def _fail(self, z: Tensor, bad: Tensor, what: str) -> None:
        chain = int(bad.nonzero()[0])
        z = self._position(z)
        where = self.describe(z[chain]) if self.describe is not None else f"position {z[chain].tolist()}"
        raise SamplingError(
            f"{what} for chain {chain} of {len(z)} at {self.phase} iteration {self.iteration}, at {where}. "
            "The density must be finite (or -inf) wherever a chain can move; check the model where it "
            "breaks (a surrogate far from its training data, an overflowing simulator statistic)."
        )

    def _leapfrog_steps(self, step_size: float) -> int:
        return max(1, min(self.config.max_leapfrog, math.ceil(self.config.trajectory / step_size)))

    def _transition(self, step_size: float, steps: int) -> tuple[Tensor, Tensor]:
        r"""One HMC iteration for every chain; returns the acceptance probabilities and divergences."""

        z, lp, grad, inv_mass = self.z, self.lp, self.grad, self.inv_mass
        p = torch.randn_like(z) / inv_mass.sqrt()
        h0 = -lp + 0.5 * (inv_mass * p**2).sum(-1)
        diverged = torch.zeros(len(z), dtype=torch.bool)
        p = p + 0.5 * step_size * grad
        for step in range(steps):
            z = z + step_size * inv_mass * p
            lp_new, grad_new = self._value_and_grad(z)
            diverged |= ~torch.isfinite(lp_new)
            p = p + (step_size if step < steps - 1 else 0.5 * step_size) * grad_new
        h1 = -lp_new + 0.5 * (inv_mass * p**2).sum(-1)
        diverged |= ~torch.isfinite(h1) | (h1 - h0 > _DIVERGENCE)
        log_accept = torch.where(diverged, -math.inf, (h0 - h1).clamp_max(0.0))
        accept = log_accept.exp()
        take = torch.rand_like(accept) < accept
        self.z = torch.where(take.unsqueeze(-1), z, self.z)
        self.lp = torch.where(take, lp_new, self.lp)
        self.grad = torch.where(take.unsqueeze(-1), grad_new, self.grad)
        return accept, diverged

    def _whiten(self, z: Tensor) -> Tensor:
        return torch.linalg.solve_triangular(self.tril, (z - self.loc).reshape(-1, len(self.loc)).T,
                                             upper=False).T.reshape(z.shape)

    def _proposals(self, shape: tuple[int, ...]) -> Tensor:
        r"""Independent proposals :math:`(*shape[:-1], D)` in whitened coordinates."""

        return self._whiten(self.proposal.sample(shape[:-1]))

    def _log_proposal(self, y: Tensor) -> Tensor:
        r"""The proposal's log-density at whitened points, up to a constant (the whitening's Jacobian)."""

        return self.proposal.log_prob(self._position(y))

    def _accept_independent(self, y: Tensor, lp: Tensor) -> Tensor:
        r"""The Metropolis-Hastings test of independent proposals :math:`y` :math:`(C, D)`, of
        log-densities ``lp``, against the chains' states: :math:`\min(1, \pi(y) g(z) / (\pi(z) g(y)))`."""

        log_ratio = (lp - self.lp) + (self._log_proposal(self.z) - self._log_proposal(y))
        return torch.isfinite(lp) & (torch.rand_like(lp).log() < log_ratio)

    def _independence_step(self) -> Tensor:
        r"""A Metropolis-Hastings step with independent proposals around the approximation;
        returns whether each chain moved. Where the approximation is good this
        decorrelates the chains in one step, and it moves them between modes that the
        approximation covers."""

        y = self._proposals(tuple(self.z.shape))
        lp, grad = self._value_and_grad(y)
        take = self._accept_independent(y, lp)
        self.z = torch.where(take.unsqueeze(-1), y, self.z)
        self.lp = torch.where(take, lp, self.lp)
        self.grad = torch.where(take.unsqueeze(-1), grad, self.grad)
        return take

    def sample_independent(self, num_draws: int, bar=None) -> Chains:
        r"""Runs ``num_draws * config.thin`` iterations of the independence sampler alone.

        The proposals do not depend on the chains, so they are all evaluated first, without
        gradients, in a few large calls (8,192 proposals per call, through ``bulk``); the
        accept-reject steps then run in sequence, on the ratios :math:`\pi / g` computed
        beforehand. Valid, and efficient, where the proposal is close to the posterior (see
        :func:`importance_fit` and :func:`mixture_fit`)."""

        total = num_draws * self.config.thin
        proposals = self._proposals((total, *self.z.shape))
        log_g = self._log_proposal(proposals)
        block_size = max(16, _BLOCK // len(self.z))
        values = []
        with torch.no_grad():
            for start in range(0, total, block_size):
                block = proposals[start : start + block_size]
                self.phase, self.iteration = "sampling", start
                lp = self.f_bulk(block.reshape(-1, block.shape[-1])).reshape(block.shape[:-1])
                bad = torch.isnan(lp) | (lp == math.inf)
                if bool(bad.any()):
                    row = int(bad.any(-1).nonzero()[0])
                    self.iteration = start + row
                    self._fail(block[row], bad[row], "the log density is " + ("NaN" if bool(torch.isnan(lp).any()) else "+inf"))
                values.append(lp)
                if bar is not None:
                    bar.update(len(block))
        values = torch.cat(values)
        # the test min(1, pi(y) g(z) / (pi(z) g(y))) on precomputed log ratios, in numpy: a few
        # microseconds per iteration; -inf ratios (zero density) are never taken
        ratio = (values - log_g).double().numpy()
        log_u = torch.rand(total, len(self.z), dtype=torch.float64).log().numpy()
        current = (self.lp - self._log_proposal(self.z)).double().numpy()
        state = np.full(len(self.z), -1)  # -1: the state before this call; i: proposal i
        states = np.empty((total, len(self.z)), dtype=np.int64)
        taken = np.empty((total, len(self.z)), dtype=bool)
        for i in range(total):
            take = log_u[i] < ratio[i] - current
            state = np.where(take, i, state)
            current = np.where(take, ratio[i], current)
            states[i], taken[i] = state, take
        chains = torch.arange(len(self.z))
        index = torch.from_numpy(states) + 1
        positions = torch.cat([self.z[None], proposals])[index, chains]  # (total, C, D)
        lps = torch.cat([self.lp[None], values])[index, chains]
        self.z, self.lp = positions[-1], lps[-1]
        self.lp, self.grad = self._value_and_grad(self.z)  # HMC may continue from here
        keep = slice(self.config.thin - 1, None, self.config.thin)
        accept = torch.from_numpy(taken).float().T.reshape(len(self.z), num_draws, self.config.thin).mean(-1)
        draws = self._position(positions[keep]).transpose(0, 1)
        return Chains(draws, lps[keep].T, accept, torch.zeros_like(accept, dtype=torch.bool))

    def _iteration(self, step_size: float, steps: int) -> tuple[Tensor, Tensor]:
        accept, diverged = self._transition(step_size, steps)
        if self.independence:
            self._independence_step()
        return accept, diverged

    def _initial_step_size(self) -> float:
        r"""Halves or doubles a step size until one leapfrog step is accepted about half the time."""

        step, state = self.step_size, (self.z, self.lp, self.grad)
        direction = None
        for _ in range(8):
            accept, _ = self._transition(step, 1)
            self.z, self.lp, self.grad = state  # a probe, not a move
            up = float(accept.mean()) > 0.5
            if direction is not None and up != direction:
                break
            direction = up
            step = step * 2 if up else step / 2
        return step

    def _jitter(self, step_size: float) -> float:
        return step_size * (0.8 + 0.4 * float(torch.rand(())))

    def warmup(self, bar=None) -> None:
        r"""Adapts the step size and the mass matrix over ``config.warmup`` iterations."""

        config, n = self.config, self.config.warmup
        self.phase = "warm-up"
        # windows: step size alone, then two mass-matrix windows, then step size alone
        ends = sorted({max(1, int(0.4 * n)), max(1, int(0.85 * n))}) if n >= 10 else []
        start = int(0.15 * n) if n >= 10 else n
        self.step_size = self._initial_step_size()
        adapt = _DualAveraging(self.step_size, config.target_accept)
        window = []
        for i in range(n):
            self.iteration = i
            accept, _ = self._iteration(self._jitter(self.step_size), self._leapfrog_steps(self.step_size))
            self.step_size = adapt.update(float(accept.mean()))
            if i >= start:
                window.append(self.z)
            if i + 1 in ends and len(window) >= 2:
                positions = torch.cat(window)
                count = len(positions)
                variance = positions.var(0)
                self.inv_mass = (count / (count + 5)) * variance + 1e-3 * (5 / (count + 5)) * variance.mean()
                window = []
                self.step_size = self._initial_step_size()
                adapt = _DualAveraging(self.step_size, config.target_accept)
            if bar is not None:
                bar.update()
                bar.set_postfix(step=f"{self.step_size:.3g}", accept=f"{float(accept.mean()):.2f}")
        if n:
            self.step_size = adapt.final
        self.warmed_up = True

    def sample(self, num_draws: int, bar=None) -> Chains:
        r"""Runs ``num_draws * config.thin`` iterations with the adapted settings and keeps every
        ``thin``-th; returns :class:`Chains` of :math:`S` = ``num_draws`` draws per chain."""

        self.phase = "sampling"
        draws, lps, accepts, divergent = [], [], [], []
        steps = self._leapfrog_steps(self.step_size)
        acc_sum, div_sum = 0.0, 0.0
        for i in range(num_draws * self.config.thin):
            self.iteration = i
            accept, diverged = self._iteration(self._jitter(self.step_size), steps)
            acc_sum, div_sum = acc_sum + accept, div_sum + diverged.float()
            if (i + 1) % self.config.thin == 0:
                draws.append(self._position(self.z))
                lps.append(self.lp)
                accepts.append(acc_sum / self.config.thin)
                divergent.append(div_sum > 0)
                acc_sum, div_sum = 0.0, 0.0
            if bar is not None:
                bar.update()
                bar.set_postfix(step=f"{self.step_size:.3g}", accept=f"{float(accept.mean()):.2f}")
        return Chains(
            draws=torch.stack(draws, 1),
            log_density=torch.stack(lps, 1),
            accept=torch.stack(accepts, 1),
            divergent=torch.stack(divergent, 1),
        )
