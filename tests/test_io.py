import errno
import json
import os
import pickle
import pytest
import torch
import zipfile

from torch.distributions import Distribution, Independent, LogNormal, Normal, constraints

import sbikit

from sbikit.io import FORMAT_VERSION, atomic_write, prior_from_spec, prior_spec

from conftest import noisy


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    prior = sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))
    data = sbikit.simulate(noisy, prior, 300, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=3, show_progress=False)).fit(data)
    path = tmp_path_factory.mktemp("io") / "posterior.sbk"
    posterior.save(path)
    return posterior, path


@pytest.fixture(scope="module")
def saved_mapped(tmp_path_factory):  # the box mapped onto the line, as files of formats 2 to 6 all were
    prior = sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))
    data = sbikit.simulate(noisy, prior, 300, seed=0, show_progress=False)
    config = sbikit.TrainConfig(max_epochs=3, show_progress=False)
    posterior = sbikit.NPE(prior, bounds="map", training=config).fit(data)
    path = tmp_path_factory.mktemp("io") / "mapped.sbk"
    posterior.save(path)
    return posterior, path


def test_round_trip(saved):
    posterior, path = saved
    loaded = sbikit.load(path)
    theta, x = torch.zeros(4, 3), torch.tensor([0.1, 0.2, 0.3])
    assert torch.equal(loaded.log_prob(theta, x=x), posterior.log_prob(theta, x=x))
    torch.manual_seed(0)
    a = loaded.sample(10, x=x)
    torch.manual_seed(0)
    b = posterior.sample(10, x=x)
    assert torch.equal(a, b)
    assert loaded.history == posterior.history
    assert loaded.parameter_names == posterior.parameter_names


def test_file_is_a_versioned_config_and_state_dict(saved):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "sbikit" and payload["version"] == FORMAT_VERSION
    config = json.loads(payload["config"])
    assert config["kind"] == "NPE" and config["prior"]["type"] == "BoxUniform"
    assert all(torch.is_tensor(v) for v in payload["state_dict"].values())


def test_no_temporary_files_are_left(saved):
    _, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["posterior.sbk"]


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    broken = tmp_path / "broken.sbk"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(sbikit.FormatError, match="not a readable sbikit file"):
        sbikit.load(broken)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.sbk"
    text.write_text("hello")
    with pytest.raises(sbikit.FormatError, match="not a readable sbikit file"):
        sbikit.load(text)
    state = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, state)
    with pytest.raises(sbikit.FormatError, match="not an sbikit file"):
        sbikit.load(state)
    with pytest.raises(FileNotFoundError):
        sbikit.load(tmp_path / "missing.sbk")


class Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_arbitrary_pickles_are_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.sbk"
    torch.save({"format": "sbikit", "version": 1, "config": "{}", "state_dict": Exploit()}, path)
    with pytest.raises(sbikit.FormatError):
        sbikit.load(path)
    assert not (tmp_path / "PWNED").exists()


def test_newer_format_is_refused_naming_both_versions(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.sbk"
    torch.save(payload, newer)
    with pytest.raises(sbikit.FormatError, match=rf"format version {FORMAT_VERSION + 1}.*\({FORMAT_VERSION}\)"):
        sbikit.load(newer)


def test_builders_outside_sbikit_and_zuko_are_never_imported(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    config = json.loads(payload["config"])
    config["flow"] = {"target": "os:system", "kwargs": {}}
    payload["config"] = json.dumps(config)
    evil = tmp_path / "evil.sbk"
    torch.save(payload, evil)
    with pytest.raises(sbikit.FormatError, match="refusing to import 'os:system'"):
        sbikit.load(evil)


@pytest.mark.parametrize(
    "prior",
    [
        sbikit.BoxUniform(-torch.ones(2), torch.ones(2)),
        sbikit.ProductPrior([LogNormal(0.0, 1.0), Normal(1.0, 2.0)]),
        Independent(Normal(torch.zeros(3), torch.ones(3)), 1),
        torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2) * 2),
    ],
)
def test_prior_specs_rebuild_the_same_distribution(prior):
    spec = prior_spec(prior)
    assert spec is not None
    rebuilt = prior_from_spec(json.loads(json.dumps(spec)))
    theta = prior.sample((10,))
    assert torch.allclose(rebuilt.log_prob(theta), prior.log_prob(theta))


class Custom(Distribution):
    arg_constraints = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self):
        super().__init__(event_shape=torch.Size([3]), validate_args=False)

    def sample(self, shape=torch.Size()):
        return torch.randn(*shape, 3)

    def log_prob(self, value):
        return Normal(0.0, 1.0).log_prob(value).sum(-1)


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_custom_prior_must_be_passed_again(tmp_path):
    prior = Custom()
    data = sbikit.simulate(noisy, prior, 100, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=1, show_progress=False)).fit(data)
    posterior.save(tmp_path / "p.sbk")
    with pytest.raises(sbikit.FormatError, match=r"custom prior.*sbikit.load\(path, prior=...\)"):
        sbikit.load(tmp_path / "p.sbk")
    loaded = sbikit.load(tmp_path / "p.sbk", prior=prior)
    assert torch.equal(loaded.log_prob(torch.zeros(3), x=torch.zeros(3)), posterior.log_prob(torch.zeros(3), x=torch.zeros(3)))


# ---- what load says, and what it refuses -------------------------------------------------


def test_a_different_prior_is_refused_showing_both(saved):
    _, path = saved
    wider = sbikit.BoxUniform(low=-5 * torch.ones(3), high=5 * torch.ones(3))
    with pytest.raises(ValueError, match=r"BoxUniform\(low=\[-5\.0.*differs from the prior.*BoxUniform\(low=\[-2\.0.*support"):
        sbikit.load(path, prior=wider)
    same = sbikit.BoxUniform(low=-2 * torch.ones(3), high=2 * torch.ones(3))
    assert sbikit.load(path, prior=same).prior is same


def test_a_prior_of_another_dimension_is_blamed_on_the_prior(saved):
    _, path = saved
    with pytest.raises(ValueError, match=r"event shape is \(2,\), not \(3,\)"):
        sbikit.load(path, prior=sbikit.BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2)))


@pytest.mark.filterwarnings("ignore::sbikit.SmallDataWarning")  # plumbing, on few simulations
def test_a_custom_prior_with_other_parameters_is_refused(tmp_path):
    class Shifted(Custom):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def log_prob(self, value):
            return Normal(self.shift, 1.0).log_prob(value).sum(-1)

    prior = Shifted(0.0)
    data = sbikit.simulate(noisy, prior, 100, seed=0, show_progress=False)
    posterior = sbikit.NPE(prior, training=sbikit.TrainConfig(max_epochs=1, show_progress=False)).fit(data)
    posterior.save(tmp_path / "p.sbk")
    with pytest.raises(ValueError, match="log-density at the saved probe points"):
        sbikit.load(tmp_path / "p.sbk", prior=Shifted(1.0))
    sbikit.load(tmp_path / "p.sbk", prior=Shifted(0.0))


def test_an_empty_file_says_it_is_empty(tmp_path):
    (tmp_path / "empty.sbk").write_bytes(b"")
    with pytest.raises(sbikit.FormatError, match=r"is empty \(0 bytes\)"):
        sbikit.load(tmp_path / "empty.sbk")


def test_a_pickled_file_says_what_it_is_without_escape_codes(tmp_path):
    path = tmp_path / "objects.sbk"
    torch.save({"format": "sbikit", "model": Custom()}, path)
    with pytest.raises(sbikit.FormatError, match="holds Python objects other than tensors") as error:
        sbikit.load(path)
    assert "\x1b" not in str(error.value)


def test_a_directory_and_a_missing_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        sbikit.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no file at"):
        sbikit.load(tmp_path / "missing.sbk")


def test_unknown_components_are_refused(saved):
    _, path = saved
    with pytest.raises(TypeError, match=r"'priors'.*takes 'prior', 'summary', 'flow'"):
        sbikit.load(path, priors=None)


def test_saved_files_follow_the_umask(saved, tmp_path):
    import os
    import stat

    posterior, _ = saved
    old = os.umask(0o022)
    try:
        posterior.save(tmp_path / "shared.sbk")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.sbk").stat().st_mode) == 0o644


def test_files_of_format_3_keep_tails_on_five_percent_of_each_interval(saved_mapped, tmp_path):
    posterior, path = saved_mapped
    payload = torch.load(path, weights_only=True)
    config = json.loads(payload["config"])
    config["intervals"] = "linear"  # what format 3 wrote
    payload["config"], payload["version"] = json.dumps(config), 3
    torch.save(payload, tmp_path / "old.sbk")
    old = sbikit.load(tmp_path / "old.sbk")
    # theta = 1.95 on (-2, 2) sits at 0.9875 of the interval: in the 5% tail, past the 1% one
    theta = torch.tensor([[1.95, 0.0, -1.0]], dtype=torch.float64)
    s = (theta + 2) / 4
    for model, eps in ((old, 0.05), (posterior, 0.01), (sbikit.load(path), 0.01)):
        torch.testing.assert_close(model.transform.inv(theta), sbikit.priors.LinearTailsTransform(eps).inv(s))
    assert float(old.transform.inv(theta)[0, 0]) != pytest.approx(float(posterior.transform.inv(theta)[0, 0]))
    # the same flow, with the density of the map it was trained with
    assert not torch.allclose(old.log_prob(theta.float(), x=torch.zeros(3)), posterior.log_prob(theta.float(), x=torch.zeros(3)))


def test_files_of_format_2_keep_the_logistic_map_of_intervals(saved_mapped, tmp_path):
    posterior, path = saved_mapped
    payload = torch.load(path, weights_only=True)
    config = json.loads(payload["config"])
    assert config["intervals"] == "linear-0.01"
    del config["intervals"]
    payload["config"], payload["version"] = json.dumps(config), 2
    torch.save(payload, tmp_path / "old.sbk")
    old = sbikit.load(tmp_path / "old.sbk")
    # the same flow, read through the map the file was trained with
    theta = torch.tensor([[1.5, -1.0, 0.5]])
    x = torch.tensor([0.1, 0.2, 0.3])
    u = torch.logit((theta.double() + 2) / 4)
    expected = old.network(x).log_prob(((u - old.network.theta_loc.double()) / old.network.theta_scale.double()).float())
    jacobian = (old.network.theta_scale.double().log().sum() + torch.log(4 * torch.sigmoid(u) * torch.sigmoid(-u)).sum())
    torch.testing.assert_close(old.log_prob(theta, x=x).double(), expected.double() - jacobian, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(old.log_prob(theta, x=x), posterior.log_prob(theta, x=x))


def test_keep_existing_write_works_without_hard_links(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")  # what vfat answers

    monkeypatch.setattr(os, "link", refuse)
    target = tmp_path / "manifest.json"
    assert atomic_write(target, b"first", replace=False)
    assert not atomic_write(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", fail)  # any other error still surfaces
    with pytest.raises(OSError, match="Input/output"):
        atomic_write(tmp_path / "other.json", b"x", replace=False)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
