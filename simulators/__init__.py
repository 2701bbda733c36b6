r"""Example simulators with reference posteriors.

Each module defines ``prior()``, ``simulator(theta)`` (batched torch), and, where
one exists, ``reference_posterior(x, num_samples, seed)`` returning exact samples.
``ricker.simulator(theta, rng)`` runs one parameter vector in numpy, drawing from ``rng``;
``ricker.batched_simulator`` is its batched torch twin.
Structured examples define ``model()`` instead, a :class:`sbikit.MixedEffects` or
:class:`sbikit.StateSpace`.
"""

__all__ = [
    "galactic_disk",
    "gaussian_linear",
    "hierarchical_gaussian",
    "lotka_volterra",
    "ornstein_uhlenbeck",
    "poisson_glm",
    "ricker",
    "sinusoid",
    "sir",
    "slcp",
    "two_moons",
]

from . import (
    galactic_disk,
    gaussian_linear,
    hierarchical_gaussian,
    lotka_volterra,
    ornstein_uhlenbeck,
    poisson_glm,
    ricker,
    sinusoid,
    sir,
    slcp,
    two_moons,
)
