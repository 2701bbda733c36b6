import torch

from sbikit.plots import pair_plot


def test_the_truth_is_inside_every_panel_and_the_title_is_shown():
    samples = torch.randn(2_000, 3)
    truth = torch.tensor([4.0, -5.0, 0.0])  # far outside the samples' range
    figure = pair_plot(samples, ["a", "b", "c"], truth=truth, title="a posterior")
    axes = figure.axes
    for i in range(3):
        for j in range(i + 1):
            ax = axes[3 * i + j]
            low, high = ax.get_xlim()
            assert low < truth[j] < high
            if i != j:
                low, high = ax.get_ylim()
                assert low < truth[i] < high
    assert figure._suptitle.get_text() == "a posterior"
    assert [axes[6].get_xlabel(), axes[7].get_xlabel(), axes[8].get_xlabel()] == ["a", "b", "c"]
