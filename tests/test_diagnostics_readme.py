"""The README's diagnostics contract runs as written (with short training)."""

import dataclasses

import sbikit

from conftest import readme_block, run_readme_block


def test_readme_diagnostics_contract_runs_as_written(tmp_path, monkeypatch):
    contract = readme_block("dx.check(posterior, simulator, prior, x_obs=x_obs)")

    @dataclasses.dataclass(frozen=True)
    class Quick(sbikit.TrainConfig):
        max_epochs: int | None = 20
        show_progress: bool | None = False

    monkeypatch.setattr(sbikit.estimators.npe, "TrainConfig", Quick)
    monkeypatch.chdir(tmp_path)
    namespace = run_readme_block(contract)
    dx = sbikit.diagnostics
    assert isinstance(namespace["sbc"], dx.SBCResult) and len(namespace["sbc"].p_values) == 4
    assert isinstance(namespace["cov"], dx.CoverageResult) and namespace["cov"].levels[-1] == 1
    assert isinstance(namespace["tarp"], dx.TARPResult) and isinstance(namespace["rec"], dx.RecoveryResult)
    assert {"posterior_predictive", "observed_data"} <= set(namespace["ppc"].idata.groups())
    assert 0 < namespace["mis"].p_value <= 1 and namespace["mis"].space == "learned summaries"
    report = namespace["report"]
    assert isinstance(report, dx.Report) and report.misspecification is not None and report.ppc is not None
    assert (tmp_path / "checks.png").stat().st_size > 0
    # 20 epochs of a 3-D posterior close to N(x, 0.1^2): well enough trained that the posterior's HPD
    # coverage strays at most 0.1 from the diagonal, and the recovery is nearly exact
    assert namespace["cov"].max_gap < 0.1, namespace["cov"]
    assert (namespace["rec"].r2 > 0.95).all()
