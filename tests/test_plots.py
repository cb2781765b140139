"""The run's training-curve figure: every stage's per-epoch panel has data (ACP's validation accuracy, LoFi's and
ACP's per-epoch training loss, the head's epoch metrics)."""
import matplotlib.pyplot as plt
import pytest

from lofi.engine import plots
from lofi.engine.logger import RunLogger


def write_run(run_dir):
    """log.jsonl and metrics.json as the trainer writes them: 5 steps per epoch, a step record with the window's mean
    loss every 2 steps and at the epoch's end, epoch records for the head only, ACP's accuracy in metrics.json.
    Returns {stage: [mean loss of each epoch's 5 steps]}."""
    log = RunLogger(run_dir, tensorboard=False, progress=False)
    means = {}
    for stage, epochs in (("acp", 2), ("lofi", 3), ("head", 2)):
        step = 0
        for epoch in range(epochs):
            losses = [10.0 * (stage == "lofi") + epoch + (step + i) ** 0.5 for i in range(5)]
            means.setdefault(stage, []).append(sum(losses) / 5)
            window = []
            for iteration, loss in enumerate(losses, 1):
                step += 1
                window.append(loss)
                if iteration % 2 == 0 or iteration == 5:
                    log.write(stage, "step", step, epoch=epoch, iteration=iteration, loss=sum(window) / len(window))
                    if (stage, epoch, iteration) == ("lofi", 2, 4):
                        resumed = (step, sum(window) / len(window))
                    window = []
            if stage == "head":
                log.write(stage, "epoch", epoch + 1, average_mAP=0.1 * (epoch + 1), mAP=[0.1, 0.2], val_loss=1.0)
    # a run resumed from a checkpoint at lofi's epoch 2, iteration 2 logs iteration 4 again: it counts once
    log.write("lofi", "step", resumed[0], epoch=2, iteration=4, loss=resumed[1])
    log.metrics("acp", {"val_accuracy": 0.75, "val_clips": 40})
    log.close()
    return means


def test_every_stage_has_per_epoch_data(tmp_path):
    means = write_run(tmp_path)
    steps, epochs = plots.curve_data(tmp_path / "log.jsonl")
    assert set(steps) == set(epochs) == {"acp", "lofi", "head"}
    for stage, per_epoch in means.items():
        x, y = zip(*epochs[stage]["train loss"])
        assert x == tuple(range(1, len(per_epoch) + 1)) and y == pytest.approx(per_epoch)
    assert epochs["acp"]["val_accuracy"] == [(2, 0.75)]  # after ACP's last epoch
    assert epochs["head"]["average_mAP"] == [(1, 0.1), (2, 0.2)] and "mAP" not in epochs["head"]


def test_curves_figure_draws_every_per_epoch_panel(tmp_path, monkeypatch):
    write_run(tmp_path)
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    out = plots.plot_curves(tmp_path / "log.jsonl", tmp_path / "curves.png")
    assert out.is_file() and out.stat().st_size > 0
    (fig,) = figures
    panels = {ax.get_title(): ax for ax in fig.axes}
    for stage in ("acp", "lofi", "head"):
        assert panels[f"{stage}: per epoch"].get_lines(), stage
        assert panels[f"{stage}: training loss"].get_lines(), stage
    assert {line.get_label() for line in panels["acp: per epoch"].get_lines()} == {"train loss", "val_accuracy"}
    plt.close(fig)
