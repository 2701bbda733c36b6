import math
import pytest
import runpy

from pathlib import Path

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
pytestmark = pytest.mark.tutorials  # run after the default suite: pytest -m tutorials


def test_custom_simulator_tutorial(tmp_path):
    module = runpy.run_path(str(TUTORIALS / "custom_simulator.py"))
    samples = module["main"](num_simulations=600, out=str(tmp_path))
    assert samples.shape == (2000, 4, 3)
    assert bool((samples[..., 0] > 0).all()) and bool(((samples[..., 1] > 0) & (samples[..., 1] < 1)).all())
    assert (tmp_path / "oscillator.png").stat().st_size > 0


def test_mixed_effects_tutorial(tmp_path):
    module = runpy.run_path(str(TUTORIALS / "mixed_effects.py"))
    result = module["main"](num_simulations=300, out=str(tmp_path))
    members = result["levels"].shape[1]
    assert result["globals"].shape == (2000, 2) and result["levels"].shape == (2000, members, 1)
    assert bool((result["globals"][:, 1] > 0).all())
    assert result["idata"].posterior.sizes["member"] == members
    assert (tmp_path / "clinic.png").stat().st_size > 0


# at this budget the tutorial's outbreak peaks above every one of the 300 training epidemics
@pytest.mark.filterwarnings("ignore::sbikit.OutOfRangeWarning")
def test_time_series_tutorial(tmp_path):
    module = runpy.run_path(str(TUTORIALS / "time_series.py"))
    result = module["main"](num_simulations=300, out=str(tmp_path))
    assert result["early"].shape == (2000, 2) and result["full"].shape == (2000, 2)
    assert bool((result["early"] > 0).all()) and bool((result["full"] > 0).all())
    # 300 epidemics teach the network little (recovery is measured by benchmarks/structured.py);
    # this runs the tutorial's recovery check end to end
    assert len(result["correlation"]) == 2 and all(math.isfinite(c) for c in result["correlation"])
    assert (tmp_path / "epidemic.png").stat().st_size > 0
