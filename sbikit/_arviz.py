r"""Every call into arviz lives here, because arviz 1.x changed its API.

Only arviz 0.x (``InferenceData``) is used today; a port to 1.x touches this
module alone.
"""

__all__ = ["posterior_to_inference_data", "summary", "to_netcdf"]

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
):
    r"""Builds an InferenceData from samples :math:`(C, S, D)` and one observation."""

    az = _arviz()

    posterior = {name: samples[..., i] for i, name in enumerate(names)}
    x = np.asarray(observed)
    dims = {"x": [f"x_dim_{i}" for i in range(x.ndim)]}
    return az.from_dict(
        posterior=posterior,
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
