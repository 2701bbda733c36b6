r"""Two moons (the SBI benchmark definition of sbibm, Greenberg et al., 2019).

.. math::
    \theta \sim \mathcal{U}([-1, 1]^2), \quad a \sim \mathcal{U}(-\pi/2, \pi/2), \quad
    r \sim \mathcal{N}(0.1, 0.01^2),

.. math::
    x = \begin{pmatrix} r \cos a + 0.25 \\ r \sin a \end{pmatrix} +
        \begin{pmatrix} -|\theta_1 + \theta_2| / \sqrt{2} \\ (-\theta_1 + \theta_2) / \sqrt{2} \end{pmatrix}.

The posterior is bimodal and crescent-shaped. Since :math:`\theta \mapsto x - g(\theta)`
is two-to-one with unit Jacobian, exact posterior samples follow from drawing the
noise :math:`p = (r \cos a + 0.25, r \sin a)`, inverting for both branches of the
absolute value, and rejecting values outside the prior.
"""

__all__ = ["PARAMETER_NAMES", "prior", "simulator", "reference_posterior"]

import math
import sbikit
import torch

# as in Greenberg et al. (2019): the two shifts of the crescent
PARAMETER_NAMES = ["theta_1", "theta_2"]


def prior() -> sbikit.BoxUniform:
    return sbikit.BoxUniform(low=-torch.ones(2), high=torch.ones(2))


def _noise(n: int) -> torch.Tensor:
    a = (torch.rand(n) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n)
    return torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=-1)


def simulator(theta: torch.Tensor) -> torch.Tensor:
    r"""Batched simulator :math:`(B, 2) \to (B, 2)`."""

    p = _noise(theta.shape[0]) if theta.ndim > 1 else _noise(1)[0]
    t1, t2 = theta[..., 0], theta[..., 1]
    shift = torch.stack([-(t1 + t2).abs() / math.sqrt(2), (t2 - t1) / math.sqrt(2)], dim=-1)
    return p + shift


def reference_posterior(x: torch.Tensor, num_samples: int, seed: int = 0) -> torch.Tensor:
    r"""Exact samples :math:`(n, 2)` from :math:`p(\theta | x)` for one observation :math:`(2,)`."""

    chunks, total = [], 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while total < num_samples:
            m = 4 * num_samples
            q = x - _noise(m)
            s_abs = -math.sqrt(2) * q[:, 0]  # |theta_1 + theta_2|
            d = math.sqrt(2) * q[:, 1]  # theta_2 - theta_1
            sign = torch.where(torch.rand(m) < 0.5, -1.0, 1.0)
            s = sign * s_abs
            theta = torch.stack([(s - d) / 2, (s + d) / 2], dim=-1)
            keep = (s_abs >= 0) & (theta.abs() <= 1).all(-1)
            chunks.append(theta[keep])
            total += int(keep.sum())
    return torch.cat(chunks)[:num_samples]
