"""tools/reproduce.py: aggregation of hand-made cell JSONs (mean/std, the seed-spread rule, RESULTS.md, plots),
skipping of finished cells, row selection, and (slow) one real cell at a toy scale."""
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce", REPO / "tools" / "reproduce.py")
R = importlib.util.module_from_spec(spec)
sys.modules["reproduce"] = R
spec.loader.exec_module(R)

TIOUS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def make_cell(row, seed, avg, slope=2.0, preset="cpu"):
    """A cell whose mAP falls linearly with tIoU around ``avg`` (so avg is exactly the mean of the curve)."""
    curve = [avg + slope * (4.5 - i) for i in range(10)]
    return {"preset": preset, "row": row, "seed": seed, "label": R.ROWS[row].label,
            "recipe": R.cell_recipe(preset, row, seed),
            "metrics": {"mAP@0.5": curve[0], "mAP@0.75": curve[5], "mAP@0.95": curve[9], "avg": avg, "mAP": curve,
                        "tiou_thresholds": TIOUS, "baseline_avg": 1.0, "num_videos": 10},
            "seconds": {"cell": 100.0 + seed}, "upstream": {}, "curves": {
                "lofi_loss": [[1, 2.0, "4x4@64x64"], [2, 1.5, "16x4@32x32"]] if "lofi" in row else [],
                "head_val_mAP": [[1, avg - 3], [2, avg]]},
            "timelines": [{"id": f"syn_{i}", "duration": 30.0,
                           "annotations": [{"segment": [2.0, 10.0], "label": "swing"}],
                           "detections": [{"label": "swing", "score": 0.9, "segment": [2.5, 9.0]}]} for i in range(2)]}


def write_cells(out, cells):
    out.mkdir(parents=True, exist_ok=True)
    for c in cells:
        R.write_json(c, R.cell_path(out, c["row"], c["seed"]))


def test_mean_std_over_seeds():
    cells = [make_cell("acp", s, v) for s, v in enumerate([10.0, 12.0, 14.0])]
    s = R.summarize(cells)["acp"]
    assert s["n"] == 3 and s["seeds"] == [0, 1, 2]
    assert s["mean"]["avg"] == pytest.approx(12.0)
    assert s["std"]["avg"] == pytest.approx(2.0)  # sample std of 10, 12, 14
    assert s["mean"]["mAP@0.5"] == pytest.approx(12.0 + 9.0)
    assert s["curve"][9][0] == pytest.approx(12.0 - 9.0) and s["curve"][9][1] == pytest.approx(2.0)
    assert R.mean_std([5.0]) == (5.0, 0.0)


def test_difference_against_seed_spread():
    acp = [make_cell("acp", s, v) for s, v in enumerate([10.0, 11.0, 12.0])]         # std 1
    big = [make_cell("long_c_lofi", s, v) for s, v in enumerate([14.0, 15.0, 16.0])]  # +4, std 1
    small = [make_cell("t_lofi", s, v) for s, v in enumerate([10.5, 12.0, 13.5])]     # +1, std 1.5
    summary = R.summarize(acp + big + small)
    v = R.versus(summary, "long_c_lofi")
    assert v["diff"] == pytest.approx(4.0) and v["spread"] == pytest.approx(2.0) and v["exceeds"] is True
    v = R.versus(summary, "t_lofi")
    assert v["diff"] == pytest.approx(1.0) and v["spread"] == pytest.approx(2.5) and v["exceeds"] is False
    assert R.versus(summary, "acp") is None and R.versus(summary, "s_lofi") is None
    one = R.summarize([make_cell("acp", 0, 10.0), make_cell("s_lofi", 0, 20.0)])
    assert R.versus(one, "s_lofi")["exceeds"] is None  # one seed: no spread to compare with


def test_deeper_encoders_are_compared_with_their_own_acp():
    cells = [make_cell(r, s, v + s) for r, v in (("acp", 10.0), ("r50_acp", 20.0), ("r50_long_c_lofi", 24.0))
             for s in range(3)]
    table = R.ours_table(R.summarize(cells), ["acp", "r50_acp", "r50_long_c_lofi"])
    r50 = next(line for line in table.splitlines() if line.startswith("| TSM-R50 ACP"))
    lofi = next(line for line in table.splitlines() if line.startswith("| TSM-R50 Long C-LoFi"))
    assert "+10.00 (spread 2.00) |" in r50  # the frozen R50 against R18 ACP
    assert "+4.00 (spread 2.00) vs TSM-R50 ACP (frozen) | yes | +4.00, +4.00, +4.00 (3 of 3 > 0) |" in lofi
    assert R.paired(R.summarize(cells[:2] + cells[4:6]), "r50_acp", "acp") == [10.0]  # seed 1: the only common one


def test_finished_cells_are_skipped(tmp_path):
    out = tmp_path / "cpu"
    write_cells(out, [make_cell("acp", 0, 10.0)])
    R.cell_path(out, "acp", 1).write_text('{"row": "acp", "se')  # torn file from a killed run: re-run
    calls = []

    def runner(preset, row, seed, imagenet=None, fresh=False):
        calls.append((row, seed) + (("fresh",) if fresh else ()))
        if row == "s_lofi":
            raise RuntimeError("training failed")
        return make_cell(row, seed, 20.0)

    written = R.run_study("cpu", [0, 1], ["acp", "s_lofi", "long_c_lofi"], out, runner=runner, say=lambda m: None)
    assert calls == [("s_lofi", 0), ("long_c_lofi", 0), ("acp", 1), ("s_lofi", 1), ("long_c_lofi", 1)]
    assert sorted(p.name for p in written) == ["acp-seed1.json", "long_c_lofi-seed0.json", "long_c_lofi-seed1.json"]
    assert json.loads(R.cell_path(out, "acp", 0).read_text())["metrics"]["avg"] == 10.0  # untouched
    assert not R.cell_path(out, "s_lofi", 0).exists()  # a failed cell leaves no file: the next run retries it
    calls.clear()
    R.run_study("cpu", [0, 1], ["acp", "long_c_lofi"], out, runner=runner, say=lambda m: None)
    assert calls == []
    # A cell of an older definition of its row (the cpu preset re-scales short_c_lofi) is re-run, not kept.
    old = make_cell("short_c_lofi", 0, 17.0)
    assert old["label"] == "Short C-LoFi (c_s = 16)"
    write_cells(out, [old])
    said = []
    R.run_study("cpu", [0], ["short_c_lofi"], out, runner=runner, say=said.append)
    assert calls == [("short_c_lofi", 0, "fresh")] and any(m.startswith("[stale]") for m in said)
    assert json.loads(R.cell_path(out, "short_c_lofi", 0).read_text())["metrics"]["avg"] == 20.0


def test_cells_of_another_config_are_rerun(tmp_path):
    """A cell records the config keys its result depends on; a change to one of them re-runs it afresh, a change
    elsewhere (another stage's section, paths, logging) does not."""
    out = tmp_path / "cpu"
    plus, lofi = make_cell("acp_plus", 0, 10.0), make_cell("long_c_lofi", 0, 20.0)
    plus["recipe"]["acp_plus"]["fidelity"]["size"] = 224  # recorded before ACP+ followed ACP's clip fidelity
    assert "acp_plus" not in lofi["recipe"] and "acp" in lofi["recipe"] and "lofi" in lofi["recipe"]
    assert "work_dir" not in lofi["recipe"] and "weights" not in lofi["recipe"]["model"]
    write_cells(out, [plus, lofi, {k: v for k, v in make_cell("acp", 0, 5.0).items() if k != "recipe"}])
    calls, said = [], []

    def runner(preset, row, seed, imagenet=None, fresh=False):
        calls.append((row, fresh))
        return make_cell(row, seed, 30.0)

    R.run_study("cpu", [0], ["acp", "acp_plus", "long_c_lofi"], out, runner=runner, say=said.append)
    assert calls == [("acp", True), ("acp_plus", True)]
    assert any("acp_plus.fidelity.size: 224 -> 64" in m for m in said)
    assert any("records no config recipe" in m for m in said)
    calls.clear()
    R.run_study("cpu", [0], ["acp", "acp_plus", "long_c_lofi"], out, runner=runner, say=said.append)
    assert calls == []

    def wrong(preset, row, seed, imagenet=None, fresh=False):  # a run whose config is not the one asked for
        cell = make_cell(row, seed, 30.0)
        cell["recipe"]["seed"] = 7
        return cell

    R.cell_path(out, "t_lofi", 0).unlink(missing_ok=True)
    said.clear()
    assert R.run_study("cpu", [0], ["t_lofi"], out, runner=wrong, say=said.append) == []
    assert any(m.startswith("[fail]") and "seed: 0 -> 7" in m for m in said)


def test_shared_acp_encoder_is_retrained_after_its_config_changed(tmp_path, monkeypatch):
    preset, seed_dir = R.PRESETS["cpu"], tmp_path / "seed0"
    overrides = R.acp_overrides(preset, tmp_path / "shards", 0, "tsm_r18", seed_dir)
    runs = []

    def fake_run(cmd, log):  # what lofi.train leaves behind: the resolved config, the encoder, metrics
        runs.append(cmd)
        cfg = R.load_config(None, cmd[cmd.index("auto") + 1:], check_paths=False)
        run_dir = seed_dir / "_acp_tsm_r18"
        (run_dir / "acp").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(R.yaml.safe_dump(R.to_dict(cfg)))
        (run_dir / "acp" / "encoder.pt").write_bytes(b"weights")
        (run_dir / "metrics.json").write_text('{"acp": {"val_accuracy": 0.9}}')
        return 1.0

    monkeypatch.setattr(R, "run_logged", fake_run)
    said = []
    first = R.ensure_acp(preset, tmp_path / "shards", 0, "tsm_r18", seed_dir, say=said.append)
    again = R.ensure_acp(preset, tmp_path / "shards", 0, "tsm_r18", seed_dir, say=said.append)
    assert len(runs) == 1 and (first["reused"], again["reused"]) == (False, True) and not said
    assert R.acp_stale(seed_dir / "_acp_tsm_r18", overrides) is None
    changed = dataclasses.replace(preset, overrides=(*preset.overrides, "acp.epochs=3"))
    third = R.ensure_acp(changed, tmp_path / "shards", 0, "tsm_r18", seed_dir, say=said.append)
    assert len(runs) == 2 and third["reused"] is False and "acp.epochs: 8 -> 3" in said[0]


def test_presets_rescale_rows_to_their_epoch_length():
    """The cpu preset's epoch has 11 LoFi steps: its Short C-LoFi cycles every batch (the paper's c_s = 16 would
    never leave configuration I), and its cells carry that label into RESULTS.md."""
    from lofi.config import load_config
    from lofi.fidelity import Fidelity, LoFiSchedule
    row = R.preset_row("cpu", "short_c_lofi")
    assert "lofi.schedule.c_s=1" in row.overrides and "c_s = 1" in row.label
    assert R.preset_row("gpu", "short_c_lofi") is R.ROWS["short_c_lofi"]
    assert R.preset_row("cpu-v1", "short_c_lofi") is R.ROWS["short_c_lofi"]  # archived: the rows as they were
    cfg = load_config(None, list(row.overrides), stages=list(row.stages), check_paths=False)
    sched = LoFiSchedule("short_cycle", Fidelity(16, 4, 64, 64), c_s=cfg.lofi.schedule.c_s)
    assert len({sched(0, i) for i in range(11)}) == 3
    cells = [make_cell("acp", 0, 10.0), {**make_cell("short_c_lofi", 0, 12.0), "label": row.label}]
    summary = R.summarize(cells)
    assert summary["short_c_lofi"]["label"] == row.label
    assert f"| {row.label} | 1 |" in R.ours_table(summary, ["acp", "short_c_lofi"])
    with pytest.raises(ValueError, match="row short_c_lofi: cells of different definitions"):
        R.summarize(cells + [make_cell("short_c_lofi", 1, 12.0)])


def test_row_selection():
    cpu = R.PRESETS["cpu"]
    rows = R.select_rows(cpu, ["1", "2"], None, None)
    assert rows == ["icp", "acp", "acp_plus", "long_c_lofi", "s_lofi", "t_lofi", "st_lofi", "short_c_lofi"]
    true_icp = R.select_rows(cpu, ["1"], None, "/x.pt")
    assert "icp_imagenet" in true_icp and "icp" not in true_icp
    assert R.select_rows(R.PRESETS["gpu"], ["2"], None, None) == ["acp", "long_c_lofi", "t_lofi"]
    with pytest.raises(SystemExit, match="unknown row"):
        R.select_rows(cpu, ["1"], ["nope"], None)
    # Every row's overrides are valid lofi.train config keys (the config validates them before anything runs).
    from lofi.config import load_config
    for name, row in R.ROWS.items():
        load_config(None, [*row.overrides, f"model.encoder={row.encoder}"], stages=list(row.stages), check_paths=False)
    # So is every cell a preset runs, with the preset's overrides (a typo in the gpu preset would cost device time).
    for preset_name, preset in R.PRESETS.items():
        for row in R.select_rows(preset, list(preset.tables), None, None):
            assert R.cell_recipe(preset_name, row, 0)["model"]["encoder"] == R.preset_row(preset_name, row).encoder


def test_results_markdown_and_plots(tmp_path):
    root = tmp_path / "results"
    cells = [make_cell(r, s, base + s) for r, base in (("acp", 10.0), ("long_c_lofi", 15.0), ("icp", 5.0))
             for s in range(3)]
    for c in cells:
        if c["row"] != "icp":
            c["upstream"] = {"acp_seconds": 300.0, "acp_val_accuracy": 0.9 + c["seed"] / 100}
    write_cells(root / "cpu", cells)
    (root / "cpu" / "NOTES.md").write_text("LoFi gradients reach the encoder (checked).")
    gib = 2 ** 30
    memory = {"budget_gib": 32.0, "device": "cpu", "sgalign_path": "compiled kernel", "budget": [
        {"config": c, "encoder": "tsm_r18", "fidelity": f, "per_video_bytes": b * gib, "model_state_bytes": 0,
         "max_batch": int(32 // b)}
        for c, f, b in (("full", "100x8x224²", 20.0), ("S-LoFi", "100x8x112²", 5.0), ("T-LoFi", "25x8x224²", 5.1),
                        ("ST-LoFi", "50x8x158²", 5.05))]}
    (root / "cpu" / "memory.json").write_text(json.dumps(memory))
    doc = tmp_path / "RESULTS.md"
    text = R.write_results(root, doc)
    assert doc.read_text() == text
    assert "ActivityNet-1.3 / HACS-1.1" in text and "not ours" in text
    acp_line = next(line for line in text.splitlines() if line.startswith("| ACP (frozen) | 3 |"))
    assert "11.00 ± 1.00" in acp_line  # avg mAP of seeds 10, 11, 12
    lofi_line = next(line for line in text.splitlines() if line.startswith("| LoFi = Long C-LoFi (c_l = 1) | 3 |"))
    assert "+5.00 (spread 2.00) | yes | +5.00, +5.00, +5.00 (3 of 3 > 0) |" in lofi_line
    assert "| ACP (frozen) | 49.64 | 34.16 | 7.68 | 33.59 | 35.68 | 22.79 | 6.51 | 23.00 |" in text  # paper, Table 1
    assert "--preset cpu --rows long_c_lofi --seeds 0,1,2" in text
    assert "Table 2 analogue" in text and "Not run on this preset" in text  # only ACP + LoFi of Table 2... and 6
    assert "LoFi gradients reach the encoder (checked)." in text
    assert "took 300 s. Its validation accuracy on the source clips: 90.0% (tsm_r18 seed 0), 91.0% (tsm_r18 seed 1), 92.0% (tsm_r18 seed 2)." in text
    c_lofi = next(line for line in text.splitlines() if line.startswith("| C-LoFi"))
    assert "| 5.10 | 0.26 | 6 |" in c_lofi  # the largest of S/T/ST per video, the smallest batch
    assert "full (tsm_r18): 4 videos on 4 GPUs (does not fit the paper's batch 16)" in text
    assert "S-LoFi (tsm_r18): 24 videos on 4 GPUs (fits" in text
    for name in ("map_vs_tiou", "memory", "training_curves", "timelines_acp", "timelines_long_c_lofi"):
        png = root / "cpu" / f"{name}.png"
        assert png.is_file() and 0 < png.stat().st_size < 200_000, name
        assert f"(results/cpu/{name}.png)" in text


def test_archived_cells_are_reported_without_commands(tmp_path):
    # A results folder that is no current preset (cells of an earlier recipe): shown with its notes and plots, but
    # with no re-run commands, which would run the current recipe instead.
    root = tmp_path / "results"
    write_cells(root / "cpu-v1", [make_cell(r, 0, 5.0) for r in ("acp", "long_c_lofi")])
    (root / "cpu-v1" / "NOTES.md").write_text("The old recipe's ACP was at chance.")
    text = R.write_results(root, tmp_path / "RESULTS.md")
    section = text.split("## Preset `cpu-v1`", 1)[1]
    assert "Archived" in section and "The old recipe's ACP was at chance." in section
    assert "--preset cpu-v1" not in text and "### Commands" not in section
    assert "(results/cpu-v1/map_vs_tiou.png)" in section


@pytest.mark.slow
def test_one_real_cell_at_toy_scale(tmp_path, monkeypatch):
    """ACP (shared) + one LoFi cell through python -m lofi.train on 8 tiny videos; several minutes on 2 busy cores."""
    toy = R.Preset(description="toy", work_root=str(tmp_path / "work"), overrides=(
        "data.synthetic.num_videos=8", "data.synthetic.num_clips=24", "data.num_workers=0", "fidelity.L=8",
        "fidelity.stride=null",
        "fidelity.size=32", "acp.fidelity.size=32", "acp.epochs=1", "acp.batch_size=8", "lofi.epochs=1",
        "lofi.batch_size=2", "head.epochs=2", "head.batch_size=2"))
    monkeypatch.setitem(R.PRESETS, "toy", toy)
    out = tmp_path / "results" / "toy"
    R.run_study("toy", [0], ["long_c_lofi"], out, say=print)
    cell = json.loads(R.cell_path(out, "long_c_lofi", 0).read_text())
    assert 0 <= cell["metrics"]["avg"] <= 100 and len(cell["metrics"]["mAP"]) == 10
    assert cell["upstream"]["reused"] is False and Path(cell["upstream"]["encoder_file"]).is_file()
    assert {f for _, _, f in cell["curves"]["lofi_loss"]} <= {"8x4@16x16", "2x4@32x32", "4x4@23x23"}
    assert len(cell["curves"]["head_val_mAP"]) == 2 and cell["timelines"][0]["detections"]
    assert not math.isnan(cell["seconds"]["cell"])


def test_time_budget_stops_before_a_cell_that_would_overrun(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(R.time, "perf_counter", lambda: clock[0])

    def runner(preset, row, seed, imagenet=None):
        clock[0] += 120.0  # every cell takes two minutes
        return make_cell(row, seed, 10.0, preset=preset)

    written = R.run_study("gpu", [0], ["acp", "long_c_lofi", "t_lofi"], tmp_path, runner=runner, say=lambda m: None,
                          max_minutes=5)
    assert [p.name for p in written] == ["acp-seed0.json", "long_c_lofi-seed0.json"]  # 4 min used + 2 > 5


def test_encoder_change(tmp_path):
    import torch
    before = {"backbone.conv1.weight": torch.ones(2, 1, 3, 3), "backbone.bn1.weight": torch.ones(2),
              "backbone.bn1.running_var": torch.ones(2)}
    after = {"backbone.conv1.weight": 1.1 * torch.ones(2, 1, 3, 3), "backbone.bn1.weight": torch.ones(2),
             "backbone.bn1.running_var": torch.tensor([1.0, 3.0])}
    torch.save(before, tmp_path / "a.pt")
    torch.save(after, tmp_path / "b.pt")
    ch = R.encoder_change(str(tmp_path / "a.pt"), str(tmp_path / "b.pt"))
    assert ch["conv_weight"] == pytest.approx(0.1) and ch["bn_weight"] == 0.0
    assert ch["bn_running_var"] == pytest.approx(2 / math.sqrt(2))


def test_claim_is_exclusive_and_takes_over_stale_locks(tmp_path):
    lock = tmp_path / "cell.lock"
    with R.claim(lock) as first:
        assert first and lock.read_text() == str(__import__("os").getpid())
        with R.claim(lock) as second:
            assert second is False  # held by a live process (this one)
    assert not lock.exists()
    lock.write_text("999999999")  # no such process: stale
    with R.claim(lock) as mine:
        assert mine
    assert not lock.exists() and not list(tmp_path.iterdir())


def test_deeper_encoders_have_their_own_bn_control(tmp_path):
    cells = [make_cell(r, s, base + s) for r, base in (("r50_acp", 8.0), ("r50_acp_bn_only", 9.0),
                                                      ("r50_long_c_lofi", 14.0)) for s in range(3)]
    assert all(R.ROWS[r].encoder == "tsm_r50" for r in ("r50_acp_bn_only", "r50_long_c_lofi"))
    assert R.ROWS["r50_acp_bn_only"].overrides == R.ROWS["acp_bn_only"].overrides
    write_cells(tmp_path / "results" / "cpu", cells)
    text = R.write_results(tmp_path / "results", tmp_path / "RESULTS.md")
    section = text[text.index("### The same control for the deeper encoders"):]
    section = section[:section.index("\n### ", 1)]
    assert "not ours" not in section  # no paper table for our control
    line = next(x for x in section.splitlines() if x.startswith("| control: TSM-R50 ACP + target BN"))
    assert "+1.00 (spread 2.00) vs TSM-R50 ACP (frozen) | no | +1.00, +1.00, +1.00 (3 of 3 > 0) |" in line
    assert "--tables 1,2,6" not in text and "--rows r50_acp_bn_only --seeds 0,1,2" in text
