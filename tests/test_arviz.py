import numpy as np
import pytest
import torch

import sbikit

from sbikit import _arviz

from conftest import noisy


@pytest.fixture(scope="module")
def posterior():
    prior = sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))
    data = sbikit.simulate(noisy, prior, 300, seed=0, show_progress=False)
    config = sbikit.TrainConfig(max_epochs=3, show_progress=False)
    return sbikit.NPE(prior, training=config, parameter_names=["mass", "radius", "tilt"]).fit(data)


def test_inference_data_groups_and_names(posterior, tmp_path):
    x = torch.tensor([0.5, -0.2, 1.0])
    idata = posterior.to_arviz(x, num_samples=1000)
    assert {"posterior", "observed_data"} <= set(idata.groups())
    assert list(idata.posterior.data_vars) == ["mass", "radius", "tilt"]
    assert idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"] == 1000
    np.testing.assert_allclose(idata.observed_data["x"].values, x.numpy())
    table = _arviz.summary(idata)
    assert list(table.index) == ["mass", "radius", "tilt"] and "r_hat" in table.columns
    path = _arviz.to_netcdf(idata, tmp_path / "idata.nc")
    assert (tmp_path / "idata.nc").stat().st_size > 0 and path


def test_to_arviz_rejects_bad_arguments(posterior):
    with pytest.raises(ValueError, match="multiple of num_chains"):
        posterior.to_arviz(torch.zeros(3), num_samples=1001)
    with pytest.raises(ValueError, match="one observation"):
        posterior.to_arviz(torch.zeros(2, 3))
