r"""Every call into arviz lives here, because arviz 1.x changed its API.

Only arviz 0.x (``InferenceData``) is used today; a port to 1.x touches this
module alone.
"""

__all__ = [
    "convergence",
    "ecdf_band",
    "members_to_inference_data",
    "posterior_to_inference_data",
    "predictive_to_inference_data",
    "summary",
    "to_netcdf",
]

import numpy as np
import warnings

from collections.abc import Sequence


def _arviz():
    with warnings.catch_warnings():  # arviz 0.2x announces its 1.x refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def posterior_to_inference_data(
    samples: np.ndarray,
    names: Sequence[str],
    observed: np.ndarray,
    attrs: dict | None = None,
    sample_stats: dict[str, np.ndarray] | None = None,
):
    r"""Builds an InferenceData from samples :math:`(C, S, D)` and one observation, and
    optionally per-draw sampler statistics :math:`(C, S)` (arviz's names: ``lp``,
    ``acceptance_rate``, ``diverging``)."""

    az = _arviz()

    posterior = {name: samples[..., i] for i, name in enumerate(names)}
    x = np.asarray(observed)
    dims = {"x": [f"x_dim_{i}" for i in range(x.ndim)]}
    return az.from_dict(
        posterior=posterior,
        sample_stats=sample_stats,
        observed_data={"x": x},
        dims=dims,
        attrs={"created_by": "sbikit", **(attrs or {})},
    )


def convergence(samples: np.ndarray) -> dict[str, np.ndarray]:
    r"""Returns arviz's rank-normalized split-:math:`\hat{R}` and bulk and tail effective
    sample sizes of chains :math:`(C, S, D)`, each :math:`(D,)`, under the keys
    ``r_hat``, ``ess_bulk`` and ``ess_tail``."""

    az = _arviz()

    data = az.convert_to_dataset({"theta": samples})
    return {
        "r_hat": np.asarray(az.rhat(data)["theta"]),
        "ess_bulk": np.asarray(az.ess(data, method="bulk")["theta"]),
        "ess_tail": np.asarray(az.ess(data, method="tail")["theta"]),
    }


def members_to_inference_data(
    globals_: np.ndarray,
    names: Sequence[str],
    locals_: np.ndarray,
    local_names: Sequence[str],
    observed: np.ndarray,
    attrs: dict | None = None,
):
    r"""Builds an InferenceData from global samples :math:`(C, S, G)` and local samples
    :math:`(C, S, M, K)` of one group of :math:`M` members, which get a "member" dimension."""

    az = _arviz()

    posterior = {name: globals_[..., i] for i, name in enumerate(names)}
    posterior.update({name: locals_[..., k] for k, name in enumerate(local_names)})
    x = np.asarray(observed)
    dims = {name: ["member"] for name in local_names}
    dims["x"] = ["member", "x_feature"]
    return az.from_dict(
        posterior=posterior,
        observed_data={"x": x},
        dims=dims,
        coords={"member": np.arange(x.shape[0])},
        attrs={"created_by": "sbikit", **(attrs or {})},
    )


def ecdf_band(num: int, points: np.ndarray, prob: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    r"""Returns arviz's simultaneous ``prob`` band (Säilynoja et al., 2022) of the ECDF of ``num``
    independent uniform draws on :math:`[0, 1]`, evaluated at ``points``: lower and upper,
    each shaped like ``points``. A uniform sample's ECDF stays inside it at every point with
    probability ``prob``."""

    _arviz()
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    points = np.asarray(points, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        lower, upper = ecdf_confidence_band(num, points, points, prob=prob, method="optimized")
    return np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)


def predictive_to_inference_data(
    samples: np.ndarray,
    names: Sequence[str],
    predictive: np.ndarray,
    observed: np.ndarray,
    attrs: dict | None = None,
):
    r"""Builds an InferenceData from posterior samples :math:`(C, S, D)`, the data simulated from
    each of them :math:`(C, S, *x\_shape)` (the ``posterior_predictive`` group) and the observation
    :math:`(*x\_shape)` (``observed_data``), with the same dimension names for both."""

    az = _arviz()

    x = np.asarray(observed)
    dims = {"x": [f"x_dim_{i}" for i in range(x.ndim)]}
    return az.from_dict(
        posterior={name: samples[..., i] for i, name in enumerate(names)},
        posterior_predictive={"x": np.asarray(predictive)},
        observed_data={"x": x},
        dims=dims,
        attrs={"created_by": "sbikit", **(attrs or {})},
    )


def summary(idata, **kwargs):
    r"""Returns arviz's summary table (mean, sd, HDI, ESS, :math:`\hat{R}`)."""

    az = _arviz()

    return az.summary(idata, **kwargs)


def to_netcdf(idata, path: str) -> str:
    r"""Writes the InferenceData to a netCDF file."""

    return idata.to_netcdf(str(path))
