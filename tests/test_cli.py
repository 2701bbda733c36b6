import pytest

from sbikit.cli import main


@pytest.mark.tutorials  # an end-to-end run: after the default suite
def test_demo_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--num-simulations", "400", "--num-samples", "400", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "r_hat" in text and "theta_1" in text and "theta_2" in text and str(out) in text
    for name in ("pair_plot.png", "posterior.nc", "posterior.sbk"):
        assert (out / name).stat().st_size > 0
    assert (out / "pair_plot.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_command():
    with pytest.raises(SystemExit):
        main(["nope"])


def test_version(capsys):
    import sbikit

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"sbikit {sbikit.__version__}"


def test_every_demo_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    # each of the six options has a help line, which ends with its default
    assert text.count("(default:") == 6
