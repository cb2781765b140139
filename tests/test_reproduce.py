"""The reproduction study: every row config validates, alone and as each preset's cells with their full override
lists (lofi.study); the tables and plots from hand-made cell JSONs (lofi.study_report); and (slow) the runner
tools/reproduce.py through its command line: a tiny cell runs, is skipped or resumed, and is re-run afresh with
--overwrite when its config changed under its checkpoints."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lofi import study as S
from lofi import study_report as SR
from lofi.atomic import write_json
from lofi.config import load_config

REPO = Path(__file__).resolve().parents[1]
TIOUS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def make_cell(row, seed, avg, slope=2.0, preset="cpu", encoder="tsm_r18"):
    """A cell whose mAP falls linearly with tIoU around ``avg`` (so avg is exactly the mean of the curve)."""
    curve = [avg + slope * (4.5 - i) for i in range(10)]
    return {"preset": preset, "row": row, "seed": seed, "label": S.label(preset, row),
            "config": {"model": {"encoder": encoder}},
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
        write_json(c, S.cell_path(out, c["row"], c["seed"]))


# ---------------------------------------------------------------------------------------------------------- configs

def test_every_row_config_validates_and_names_its_row():
    for preset in S.PRESETS:
        folder = S.STUDY_DIR / preset
        rows = S.row_configs(folder)
        assert rows and "_base" not in rows
        load_config(folder / "_base.yaml", check_paths=False)
        for row, path in rows.items():
            cfg = load_config(path, check_paths=False)
            assert cfg.name == row and row in S.ROWS, path
            assert cfg.work_dir == load_config(folder / "_base.yaml", check_paths=False).work_dir


def test_presets_cells_validate_with_their_full_override_lists():
    """Every cell a preset runs, and its shared ACP run, validates with the overrides the runner gives it (a typo in
    the gpu preset would cost device time); rows of a seed and encoder start from one ACP encoder."""
    for name, preset in S.PRESETS.items():
        folder = S.STUDY_DIR / name
        rows = S.select_rows(preset, folder, list(preset.tables), None, None)
        assert rows
        for seed in preset.seeds[:2]:
            weights = {}
            for row in rows:
                cell = S.Cell(row, seed, S.row_configs(folder)[row])
                cfg = load_config(cell.config, cell.overrides(), check_paths=False)
                assert (cfg.seed, cfg.name, cfg.log.progress) == (seed, row, False)
                assert Path(cfg.work_dir) == cell.seed_dir() and cell.seed_dir().name == f"seed{seed}"
                if "acp" in cell.base().stages:
                    assert "acp" not in cfg.stages and cfg.stages[-1] == "eval"
                    acp = load_config(cell.config, cell.acp_overrides(), check_paths=False)
                    assert acp.stages == ["acp"] and acp.name == f"_acp_{cfg.model.encoder}" and acp.seed == seed
                    assert cfg.model.weights == str(Path(acp.work_dir) / acp.name / "acp" / "encoder.pt")
                    weights.setdefault(cfg.model.encoder, set()).add(cfg.model.weights)
                else:
                    assert cfg.model.weights is None and cell.acp_dir() is None
            assert all(len(w) == 1 for w in weights.values())  # one shared ACP per (seed, encoder)
    icp = S.Cell("icp_imagenet", 0, S.STUDY_DIR / "cpu" / "icp_imagenet.yaml", imagenet="/x/imagenet.pt")
    assert "model.weights=/x/imagenet.pt" in icp.overrides()


def test_cpu_short_c_lofi_cycles_within_an_epoch():
    """The cpu preset's epoch has 11 LoFi steps: its Short C-LoFi cycles every batch (the paper's c_s = 16 would
    never leave configuration I), and its cells carry that label; the gpu preset keeps the paper's label."""
    from lofi.fidelity import Fidelity, LoFiSchedule
    cfg = load_config(S.STUDY_DIR / "cpu" / "short_c_lofi.yaml", check_paths=False)
    sched = LoFiSchedule(cfg.lofi.schedule.mode, Fidelity(16, 4, 64, 64), c_s=cfg.lofi.schedule.c_s)
    assert len({sched(0, i) for i in range(11)}) == 3
    assert "c_s = 1" in S.label("cpu", "short_c_lofi") and S.label("gpu", "short_c_lofi") == "Short C-LoFi (c_s = 16)"
    assert S.label("cpu-v1", "short_c_lofi") == "Short C-LoFi (c_s = 16)"


def test_row_selection():
    cpu, folder = S.PRESETS["cpu"], S.STUDY_DIR / "cpu"
    rows = S.select_rows(cpu, folder, ["1", "2"], None, None)
    assert rows == ["icp", "acp", "acp_plus", "long_c_lofi", "s_lofi", "t_lofi", "st_lofi", "short_c_lofi"]
    true_icp = S.select_rows(cpu, folder, ["1"], None, "/x.pt")
    assert "icp_imagenet" in true_icp and "icp" not in true_icp
    assert S.select_rows(S.PRESETS["gpu"], S.STUDY_DIR / "gpu", ["2"], None, None) == [
        "acp", "long_c_lofi", "t_lofi", "bmn_acp", "bmn_long_c_lofi", "actionformer_acp", "actionformer_long_c_lofi"]
    assert S.select_rows(cpu, folder, ["heads"], None, None) == [
        "acp", "long_c_lofi", "bmn_acp", "bmn_long_c_lofi", "actionformer_acp", "actionformer_long_c_lofi"]
    with pytest.raises(ValueError, match="unknown row"):
        S.select_rows(cpu, folder, ["1"], ["nope"], None)
    with pytest.raises(ValueError, match="unknown table"):
        S.select_rows(cpu, folder, ["8"], None, None)


# ---------------------------------------------------------------------------------------------------------- report

def test_mean_std_over_seeds():
    cells = [make_cell("acp", s, v) for s, v in enumerate([10.0, 12.0, 14.0])]
    s = SR.summarize(cells)["acp"]
    assert s["n"] == 3 and s["seeds"] == [0, 1, 2]
    assert s["mean"]["avg"] == pytest.approx(12.0)
    assert s["std"]["avg"] == pytest.approx(2.0)  # sample std of 10, 12, 14
    assert s["mean"]["mAP@0.5"] == pytest.approx(12.0 + 9.0)
    assert s["curve"][9][0] == pytest.approx(12.0 - 9.0) and s["curve"][9][1] == pytest.approx(2.0)
    assert SR.mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="row acp: cells of different definitions"):
        SR.summarize(cells + [{**make_cell("acp", 3, 1.0), "label": "another ACP"}])


def test_difference_against_seed_spread():
    acp = [make_cell("acp", s, v) for s, v in enumerate([10.0, 11.0, 12.0])]         # std 1
    big = [make_cell("long_c_lofi", s, v) for s, v in enumerate([14.0, 15.0, 16.0])]  # +4, std 1
    small = [make_cell("t_lofi", s, v) for s, v in enumerate([10.5, 12.0, 13.5])]     # +1, std 1.5
    summary = SR.summarize(acp + big + small)
    v = SR.versus(summary, "long_c_lofi")
    assert v["diff"] == pytest.approx(4.0) and v["spread"] == pytest.approx(2.0) and v["exceeds"] is True
    v = SR.versus(summary, "t_lofi")
    assert v["diff"] == pytest.approx(1.0) and v["spread"] == pytest.approx(2.5) and v["exceeds"] is False
    assert SR.versus(summary, "acp") is None and SR.versus(summary, "s_lofi") is None
    one = SR.summarize([make_cell("acp", 0, 10.0), make_cell("s_lofi", 0, 20.0)])
    assert SR.versus(one, "s_lofi")["exceeds"] is None  # one seed: no spread to compare with


def test_paired_delta_table_from_hand_made_cells():
    """The Δ table: a deeper encoder's LoFi row against the frozen ACP of its own encoder, paired per seed."""
    cells = [make_cell(r, s, v + s + (s == 2) * (r == "r50_long_c_lofi"))
             for r, v in (("acp", 10.0), ("r50_acp", 20.0), ("r50_long_c_lofi", 24.0)) for s in range(3)]
    table = SR.ours_table(SR.summarize(cells), ["acp", "r50_acp", "r50_long_c_lofi"])
    r50 = next(line for line in table.splitlines() if line.startswith("| TSM-R50 ACP"))
    lofi = next(line for line in table.splitlines() if line.startswith("| TSM-R50 Long C-LoFi"))
    assert "+10.00 (spread 2.00) | yes | +10.00, +10.00, +10.00 (3 of 3 > 0) |" in r50  # vs R18 ACP
    assert "vs TSM-R50 ACP (frozen) | yes | +4.00, +4.00, +5.00 (3 of 3 > 0) |" in lofi
    assert "+4.33 (spread 2.53)" in lofi
    assert SR.paired(SR.summarize(cells[:2] + cells[4:6]), "r50_acp", "acp") == [10.0]  # seed 1: the only common one


def test_clip_accuracy_table_from_hand_made_cells():
    cells = [make_cell(r, s, 10.0) for r in ("acp", "arrow", "acp_arrow") for s in range(2)]
    for c in cells[2:4]:  # arrow: pretext accuracy, overall and per source class
        c["clip_accuracy"] = {"arrow": {"val_pretext_accuracy": 0.5 + c["seed"] / 10, "val_clips": 300,
                                        "val_pretext_accuracy/rise": 1.0, "val_pretext_accuracy/bounce": 0.5}}
    for c in cells[4:]:  # ACP + arrow: ACP's class accuracy too
        c["clip_accuracy"] = {"arrow": {"val_pretext_accuracy": 0.6, "val_accuracy": 0.9, "val_clips": 300}}
    summary = SR.summarize(cells)
    assert summary["acp"]["clip_accuracy"] == {}
    assert summary["arrow"]["clip_accuracy"]["arrow"]["val_pretext_accuracy"] == pytest.approx((0.55, 0.0707, 2), 1e-3)
    lines = SR.clip_accuracy_table(summary, ["acp", "arrow", "acp_arrow"]).splitlines()
    assert len(lines) == 4  # header, rule, one line per row with a clip stage (acp's ACP is shared: not the cell's)
    assert lines[2] == (f"| {summary['arrow']['label']} | `arrow` | 2 | — | 55.00 ± 7.07 | bounce 50.00 ± 0.00, "
                        "rise 100.00 ± 0.00 |")
    assert lines[3] == f"| {summary['acp_arrow']['label']} | `arrow` | 2 | 90.00 ± 0.00 | 60.00 ± 0.00 | — |"
    assert SR.clip_accuracy_table(summary, ["acp"]) is None


def test_results_markdown_and_plots(tmp_path):
    root = tmp_path / "results"
    cells = [make_cell(r, s, base + s) for r, base in (("acp", 10.0), ("long_c_lofi", 15.0), ("icp", 5.0))
             for s in range(3)]
    for c in cells:
        if c["row"] != "icp":
            c["upstream"] = {"acp_seconds": 300.0, "acp_val_accuracy": 0.9 + c["seed"] / 100}
    cells[0].pop("config")
    cells[0]["recipe"] = {"model": {"encoder": "tsm_r18"}}  # a cell of the earlier runner
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
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "report_study.py"), "--results", str(root),
                           "--doc", str(doc)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = doc.read_text()
    assert "ActivityNet-1.3 / HACS-1.1" in text and "not ours" in text and "PAPER.md" not in text
    acp_line = next(line for line in text.splitlines() if line.startswith("| ACP (frozen) | 3 |"))
    assert "11.00 ± 1.00" in acp_line  # avg mAP of seeds 10, 11, 12
    lofi_line = next(line for line in text.splitlines() if line.startswith("| LoFi = Long C-LoFi (c_l = 1) | 3 |"))
    assert "+5.00 (spread 2.00) | yes | +5.00, +5.00, +5.00 (3 of 3 > 0) |" in lofi_line
    assert "| ACP (frozen) | 49.64 | 34.16 | 7.68 | 33.59 | 35.68 | 22.79 | 6.51 | 23.00 |" in text  # paper, Table 1
    assert "(`lofi/configs/study/cpu/long_c_lofi.yaml`): `python tools/reproduce.py --preset cpu --rows " \
           "long_c_lofi --seeds 0,1,2`" in text
    assert "Table 2 analogue" in text and "Not run on this preset" in text
    assert text.index("### Notes and investigation") < text.index("LoFi gradients reach the encoder (checked).")
    assert ("took 300 s. Its validation accuracy on the source clips: 90.0% (tsm_r18 seed 0), 91.0% (tsm_r18 seed 1), "
            "92.0% (tsm_r18 seed 2).") in text
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
    text = SR.write_results(root, tmp_path / "RESULTS.md")
    section = text.split("## Preset `cpu-v1`", 1)[1]
    assert "Archived" in section and "The old recipe's ACP was at chance." in section
    assert "--preset cpu-v1" not in text and "### Commands" not in section
    assert "(results/cpu-v1/map_vs_tiou.png)" in section


def test_deeper_encoders_have_their_own_bn_control(tmp_path):
    cells = [make_cell(r, s, base + s, encoder="tsm_r50") for r, base in (("r50_acp", 8.0), ("r50_acp_bn_only", 9.0),
                                                                         ("r50_long_c_lofi", 14.0)) for s in range(3)]
    write_cells(tmp_path / "results" / "cpu", cells)
    text = SR.write_results(tmp_path / "results", tmp_path / "RESULTS.md")
    section = text[text.index("### The same control for the deeper encoders"):]
    section = section[:section.index("\n### ", 1)]
    assert "not ours" not in section  # no paper table for our control
    line = next(x for x in section.splitlines() if x.startswith("| control: TSM-R50 ACP + target BN"))
    assert "+1.00 (spread 2.00) vs TSM-R50 ACP (frozen) | no | +1.00, +1.00, +1.00 (3 of 3 > 0) |" in line
    assert "--rows r50_acp_bn_only --seeds 0,1,2" in text


def test_encoder_change(tmp_path):
    import torch
    before = {"backbone.conv1.weight": torch.ones(2, 1, 3, 3), "backbone.conv2.weight": torch.ones(2, 1, 3, 3, 1),
              "backbone.bn1.weight": torch.ones(2), "backbone.bn1.running_var": torch.ones(2)}
    after = {"backbone.conv1.weight": 1.1 * torch.ones(2, 1, 3, 3), "backbone.conv2.weight": torch.ones(2, 1, 3, 3, 1),
             "backbone.bn1.weight": torch.ones(2), "backbone.bn1.running_var": torch.tensor([1.0, 3.0])}
    torch.save(before, tmp_path / "a.pt")
    torch.save(after, tmp_path / "b.pt")
    ch = S.encoder_change(str(tmp_path / "a.pt"), str(tmp_path / "b.pt"))
    assert ch["conv_weight"] == pytest.approx(0.1 / math.sqrt(2)) and ch["bn_weight"] == 0.0  # 3-D kernels count
    assert ch["bn_running_var"] == pytest.approx(2 / math.sqrt(2))


# ---------------------------------------------------------------------------------------------------------- runner

def reproduce(configs, out, *extra):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "reproduce.py"), "--preset", "toy", "--configs",
                           str(configs), "--rows", "tiny", "--seeds", "0", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_a_tiny_cell_runs_resumes_and_reruns_afresh_when_stale(tmp_path):
    """One frozen-encoder row on 8 tiny videos through the runner's command line: written, skipped while current,
    resumed from its finished checkpoints when its JSON is gone, and re-run with --overwrite once its head recipe
    changed (lofi.train refuses those checkpoints)."""
    configs, out, work = tmp_path / "configs", tmp_path / "results", tmp_path / "work"
    configs.mkdir()
    (configs / "_base.yaml").write_text(
        f"_base_: {S.CONFIG_DIR / 'demo.yaml'}\nwork_dir: {work}\n"
        f"data: {{shards: {work / 'shards'}, clip_shards: {work / 'shards' / 'clips'}, num_workers: 0,\n"
        "       synthetic: {num_videos: 8, num_clips: 24}}\n"
        "fidelity: {L: 8, size: 32, stride: null}\n")
    row = configs / "tiny.yaml"
    row.write_text("_base_: _base.yaml\nname: tiny\nstages: [head, eval]\nhead: {epochs: 2, batch_size: 2}\n")
    said = reproduce(configs, out)
    cell_file = S.cell_path(out, "tiny", 0)
    cell = json.loads(cell_file.read_text())
    assert "[done] tiny seed 0" in said and 0 <= cell["metrics"]["avg"] <= 100 and len(cell["metrics"]["mAP"]) == 10
    assert cell["config"]["head"]["epochs"] == 2 and cell["config"]["stages"] == ["head", "eval"]
    assert len(cell["curves"]["head_val_mAP"]) == 2 and cell["timelines"][0]["detections"]
    log = work / "seed0" / "tiny" / "stdout.log"
    assert log.read_text().count("$ ") == 1

    assert "[skip]" in reproduce(configs, out) and log.read_text().count("$ ") == 1  # current: lofi.train not run
    row.write_text(row.read_text() + "log: {every_iters: 3}\n")  # how a cell logs is not part of its recipe
    assert "[skip]" in reproduce(configs, out) and log.read_text().count("$ ") == 1
    recorded = json.loads(cell_file.read_text())  # a cell recorded before a config key existed
    del recorded["config"]["bmn"], recorded["config"]["postprocess"]["min_duration_s"]
    cell_file.write_text(json.dumps(recorded))
    assert "[skip]" in reproduce(configs, out) and log.read_text().count("$ ") == 1
    cell_file.write_text(json.dumps(cell))

    cell_file.unlink()  # the cell runs again and lofi.train finds its stages finished
    said = reproduce(configs, out)
    assert "[stale]" not in said and "already finished" in log.read_text()
    assert json.loads(cell_file.read_text())["metrics"]["avg"] == cell["metrics"]["avg"]

    row.write_text(row.read_text().replace("head: {epochs: 2, batch_size: 2}",
                                           "head: {epochs: 2, batch_size: 2, optim: {lr: 5.0e-4}}"))
    said = reproduce(configs, out)
    assert "[changed]" in said and "head.optim.lr: 0.001 -> 0.0005" in said
    assert "[stale] tiny: lofi.train refused to resume" in said
    assert [line.split()[-1] for line in log.read_text().splitlines() if line.startswith("$ ")][-2:] == \
        ["auto", "--overwrite"]
    again = json.loads(cell_file.read_text())
    assert again["config"]["head"]["optim"]["lr"] == 5.0e-4 and len(again["curves"]["head_val_mAP"]) == 2
