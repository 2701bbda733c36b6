r"""Example simulators with reference posteriors.

Each module defines ``prior()``, ``simulator(theta)`` (batched torch), and, where
one exists, ``reference_posterior(x, num_samples, seed)`` returning exact samples.
"""

__all__ = ["gaussian_linear", "poisson_glm", "sinusoid", "two_moons"]

from . import gaussian_linear, poisson_glm, sinusoid, two_moons
