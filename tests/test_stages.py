"""The stage table drives validation, resume, the synthetic data building and the dispatch; the encoder and head
registries drive model.encoder / model.head; inference does not load the stage wiring."""
import dataclasses
import importlib
import subprocess
import sys

import pytest
import torch

from lofi.config import ConfigError, from_dict, load_config, to_dict
from lofi.engine.checkpoint import atomic_save
from lofi.engine.distributed import DistInfo
from lofi.engine.logger import RunLogger
from lofi.stages import table
from lofi.stages.table import ShardNeed
from subproc import REPO, child_env

OFFLINE = ["log.tensorboard=false", "log.progress=false"]


@pytest.fixture
def extra_stage(monkeypatch):
    """A hypothetical stage ``extra`` after eval, with its own section ``extra_sec``, reading the clip set."""
    row = table.Stage("extra", "lofi.stages.eval", "extra_sec", ("extra/out.json",),
                      (ShardNeed("clip_shards", ("val",)),), encoder_from=("lofi",), checkpoints=False)
    monkeypatch.setattr(table, "TABLE", (*table.TABLE, row))
    monkeypatch.setattr(table, "STAGES", {**table.STAGES, "extra": row})
    return row


def test_unknown_stage_error_lists_the_tables_stages():
    with pytest.raises(ConfigError) as e:
        load_config(None, OFFLINE, stages=["pretrain"], check_paths=False)
    assert "--stage: unknown stage(s) ['pretrain']" in str(e.value)
    assert f"valid: {', '.join(table.stage_names())}, all" in str(e.value)
    with pytest.raises(KeyError, match="unknown stage 'pretrain'; valid: acp, arrow, speed, acp\\+arrow, "
                                       "acp\\+speed, acp\\+, lofi, head, eval"):
        table.get("pretrain")


def test_resume_free_keys_come_from_the_table(extra_stage):
    assert table.stage_key("acp+") == "acp_plus" and table.stage_key("extra") == "extra_sec"
    # a stage's result depends on its own section and on what it reads, never on the sections after it
    assert table.downstream("acp") == ("arrow", "speed", "acp_arrow", "acp_speed", "acp_plus", "lofi", "head",
                                       "postprocess", "eval", "extra_sec")
    assert table.stage_key("acp+speed") == "acp_speed" and table.downstream("acp+speed")[0] == "acp_plus"
    assert table.downstream("lofi") == ("head", "postprocess", "eval", "extra_sec")
    assert table.downstream("head") == ("extra_sec",)  # it validates with postprocess and eval.tiou
    assert table.resume_free("lofi") == (*table.RUN_KEYS, "head", "postprocess", "eval", "extra_sec")
    assert table.recipe_free(["acp"]) == (*table.RUN_KEYS, "arrow", "speed", "acp_arrow", "acp_speed", "acp_plus",
                                          "lofi", "head", "postprocess", "eval", "extra_sec")
    assert table.recipe_free(["lofi", "head", "eval"]) == (*table.RUN_KEYS, "extra_sec")
    tree = to_dict(load_config(None, OFFLINE, check_paths=False))
    kept = table.recipe(tree, ["acp"])
    assert "acp" in kept and "lofi" not in kept and "log" not in kept and "build" not in kept["data"]["synthetic"]
    assert kept["data"]["synthetic"]["preset"] == tree["data"]["synthetic"]["preset"] and "log" in tree


def test_resume_auto_ignores_exactly_the_tables_keys(tmp_path, extra_stage):
    from lofi.stages.base import Context
    from lofi.stages.resume import resume_state
    cfg = load_config(None, [f"work_dir={tmp_path}", *OFFLINE], check_paths=False)

    class Latest:  # stands in for the stage's Checkpointer
        dir = tmp_path

        def latest(self):
            return tmp_path / "last.pt"

    log = RunLogger(cfg.run_dir, tensorboard=False, progress=False)
    ctx = Context(cfg, DistInfo(), log, resume="auto")
    saved = to_dict(cfg)
    saved["head"]["epochs"] += 1
    saved["log"]["every_iters"] += 1
    atomic_save({"config": saved}, tmp_path / "last.pt")
    assert resume_state(ctx, Latest(), "lofi") is not None  # head is downstream of lofi; log is a run key
    with pytest.raises(ConfigError, match=f"head.epochs: {cfg.head.epochs + 1} -> {cfg.head.epochs}"):
        resume_state(ctx, Latest(), "head")
    log.close()


def test_the_table_decides_which_shards_validation_asks_for(tmp_path, monkeypatch):
    overrides = [f"data.shards={tmp_path / 'none'}", f"data.clip_shards={tmp_path / 'no_clips'}",
                 "data.synthetic.build=false", *OFFLINE]
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides, stages=["acp"])
    assert "data.clip_shards: stage acp needs classification shards" in str(e.value)
    assert "data.shards" not in str(e.value)
    lofi = dataclasses.replace(table.STAGES["lofi"], data=(ShardNeed("clip_shards", ("train",)),))
    monkeypatch.setattr(table, "STAGES", {**table.STAGES, "lofi": lofi})
    monkeypatch.setattr(table, "TABLE", tuple(lofi if r.name == "lofi" else r for r in table.TABLE))
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides, stages=["lofi"])
    assert "data.clip_shards: stage lofi needs classification shards" in str(e.value)
    assert "data.shards" not in str(e.value)


@pytest.mark.parametrize("stages, features, built", [
    (["acp"], False, ["clips"]), (["acp", "lofi", "head", "eval"], False, ["clips", "activitynet"]),
    (["head", "eval"], True, []), (["lofi", "head"], True, ["activitynet"]), (["eval"], False, ["activitynet"])])
def test_ensure_synthetic_builds_what_the_tables_stages_read(tmp_path, monkeypatch, stages, features, built):
    import lofi.train as train
    made = []
    monkeypatch.setattr(train, "make_synthetic", lambda raw, preset, **kw: {
        k: tmp_path / k for k in ("videos", "annotations", "clips", "clip_list")})
    monkeypatch.setattr(train, "make_shards", lambda videos, annotations, out, fmt, **kw: made.append(fmt))
    overrides = [f"data.shards={tmp_path / 's'}", f"data.clip_shards={tmp_path / 's' / 'clips'}", *OFFLINE]
    overrides += [f"head.features={tmp_path}", f"head.annotations={tmp_path}"] if features else []
    cfg = load_config(None, overrides, check_paths=False)
    log = RunLogger(cfg.run_dir, tensorboard=False, progress=False)
    train.ensure_synthetic(cfg, stages, log)
    log.close()
    assert made == built


def test_every_stage_module_runs_from_the_table():
    for row in table.TABLE:
        assert callable(importlib.import_module(row.module).run), row.name
        assert row.section is None or hasattr(from_dict({}), row.section), row.name
        assert all(prev in table.STAGES and table.TABLE.index(table.STAGES[prev]) < table.TABLE.index(row)
                   for prev in row.encoder_from), row.name


@pytest.mark.parametrize("key, registry", [("encoder", "ENCODERS"), ("head", "HEADS")])
def test_unknown_model_name_names_the_key_and_the_registry(key, registry):
    import lofi.models.registry as R
    names = list(getattr(R, registry))
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.{key}=nope", *OFFLINE], check_paths=False)
    assert f"model.{key}: unknown {key} 'nope'; registered: {', '.join(names)}" in str(e.value)
    assert load_config(None, [f"model.{key}={names[-1]}", *OFFLINE], check_paths=False)


def test_registries_build_what_the_config_names():
    from lofi.models import GTAD, VideoClassifier, build_encoder
    from lofi.models.registry import ENCODERS, encoder_from_config, head_from_config
    from lofi.models.tal import build_head_model
    cfg = load_config(None, ["model.encoder=tsm_r34", "model.gtad_fused=false", *OFFLINE], check_paths=False)
    assert type(encoder_from_config(cfg.model)).__name__ == "TSMEncoder" and ENCODERS["tsm_r34"].section == "model"
    assert type(head_from_config(cfg, 16)) is GTAD and not head_from_config(cfg, 16).fused
    with pytest.raises(ValueError, match=r"unknown encoder 'x'; choose from \['tsm_r18', "):
        build_encoder("x")
    # the head first, then the classifier: a seeded HeadModel draws what the G-TAD + classifier pair always drew
    torch.manual_seed(0)
    model = build_head_model(cfg, 16, 3)
    torch.manual_seed(0)
    gtad, classifier = GTAD(16, fused=False), VideoClassifier(16, 3)
    expected = {**{f"localizer.{k}": v for k, v in gtad.state_dict().items()},
                **{f"classifier.{k}": v for k, v in classifier.state_dict().items()}}
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items()) and len(expected) == len(
        model.state_dict())
    # model.pt files written before heads were a choice hold the head under "gtad.": they load into the localizer
    legacy = {k.replace("localizer.", "gtad.", 1): torch.full_like(v, 0.5) if v.is_floating_point() else v
              for k, v in expected.items()}
    model.load_state_dict(legacy)
    assert all(torch.equal(v, legacy[k.replace("localizer.", "gtad.", 1)]) for k, v in model.state_dict().items())


def test_make_trainer_takes_the_run_settings_from_the_config(tmp_path):
    from lofi.stages.base import Context, make_optimizer, make_trainer
    cfg = load_config(None, [f"work_dir={tmp_path}", "seed=7", "max_bad_steps=3", "checkpoint.keep=4",
                             "log.every_iters=2", *OFFLINE], check_paths=False)
    net = torch.nn.Linear(2, 1)
    optimizer, scheduler = make_optimizer(net.parameters(), cfg.lofi.optim)
    log = RunLogger(cfg.run_dir, tensorboard=False, progress=False)
    trainer = make_trainer(Context(cfg, DistInfo(), log), "acp+", modules={"model": net}, step_fn=None,
                           loader_fn=None, optimizer=optimizer, scheduler=scheduler, epochs=2, accum_steps=3)
    log.close()
    assert (trainer.seed, trainer.accum, trainer.epochs, trainer.stage) == (7, 3, 2, "acp+")
    assert trainer.ckpt.dir == cfg.run_dir / "acp_plus" and trainer.ckpt.keep == 4
    assert trainer.config == to_dict(cfg)


def test_max_grad_norm_clips_the_step(tmp_path):
    from lofi.stages.base import Context, make_optimizer, make_trainer
    cfg = load_config(None, [f"work_dir={tmp_path}", "acp_plus.optim.name=sgd", "acp_plus.optim.lr=1.0",
                             "acp_plus.optim.momentum=0", "acp_plus.optim.weight_decay=0",
                             "acp_plus.optim.max_grad_norm=0.5", *OFFLINE], check_paths=False)
    net = torch.nn.Linear(3, 1, bias=False)
    before = net.weight.detach().clone()
    optimizer, scheduler = make_optimizer(net.parameters(), cfg.acp_plus.optim)
    log = RunLogger(cfg.run_dir, tensorboard=False, progress=False)
    trainer = make_trainer(Context(cfg, DistInfo(), log), "acp+", modules={"model": net},
                           step_fn=lambda batch, gen: (100.0 * net.weight.sum(), {}), loader_fn=None,
                           optimizer=optimizer, scheduler=scheduler, epochs=1, accum_steps=1)
    trainer._step(iter([{"meta": [{}]}]), 0, 0)
    log.close()
    # the gradient (100, 100, 100) has norm 173; clipped to 0.5, one SGD step of lr 1 moves the weights by 0.5
    assert float((net.weight - before).norm()) == pytest.approx(0.5, rel=1e-6)


def test_configs_saved_by_earlier_versions_still_load():
    tree = to_dict(load_config(None, OFFLINE, check_paths=False))
    tree["data"]["synthetic"]["fps"] = tree["data"]["synthetic"].pop("pack_fps") + 5
    tree["eval"]["subset"] = "validation"
    # keys added since: whole sections (a head's) and keys in a section take their defaults
    del tree["bmn"], tree["postprocess"]["voting_iou"], tree["head"]["optim"]["max_grad_norm"]
    cfg = from_dict(tree)
    assert cfg.data.synthetic.pack_fps == 20 and not hasattr(cfg.eval, "subset")
    assert cfg.postprocess.voting_iou == 0.0 and cfg.head.optim.max_grad_norm == 0.0 and cfg.bmn.num_samples == 32
    # so a checkpoint written before those keys existed resumes under --resume auto: its config has not changed
    from lofi.config import config_changes, upgrade
    assert config_changes(upgrade(tree), to_dict(cfg)) == []


def test_inference_does_not_load_the_stage_wiring():
    code = ("import sys, lofi.infer; print(sorted(m for m in sys.modules if m.startswith(('lofi.stages', "
            "'lofi.engine.stages', 'lofi.engine.report', 'lofi.train'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['lofi.stages', 'lofi.stages.table']"  # the declarative table only (the config reads it)


@pytest.mark.parametrize("stage", ["arrow", "speed", "acp+arrow", "acp+speed"])
def test_later_stages_take_a_pretext_encoder_through_the_table(tmp_path, stage):
    """acp+, lofi and head start from a pretext stage's encoder.pt as from ACP's; a pretext encoder is newer than
    ACP's; lofi's own encoder, when there, wins for the head."""
    from lofi.stages.base import Context, encoder_source
    cfg = load_config(None, [f"work_dir={tmp_path}", *OFFLINE], check_paths=False)
    log = RunLogger(cfg.run_dir, tensorboard=False, progress=False)
    ctx = Context(cfg, DistInfo(), log)
    assert encoder_source(ctx, "lofi") is None  # nothing yet: model.weights
    for earlier in ("acp", stage):
        (ctx.stage_dir(earlier)).mkdir(parents=True)
        atomic_save({}, ctx.stage_dir(earlier) / "encoder.pt")
    mine = str(cfg.run_dir / table.stage_key(stage) / "encoder.pt")
    assert [encoder_source(ctx, s) for s in ("acp+", "lofi", "head")] == [mine] * 3
    assert encoder_source(ctx, stage) is None  # a pretext stage starts from model.weights, as ACP does
    (ctx.stage_dir("lofi")).mkdir()
    atomic_save({}, ctx.stage_dir("lofi") / "encoder.pt")
    assert encoder_source(ctx, "head") == str(cfg.run_dir / "lofi" / "encoder.pt")
    log.close()


def test_pretext_stage_names_work_on_the_command_line_and_in_stage_lists(tmp_path):
    """'+' in a stage name: --stage acp+speed and stages: [acp+arrow] in a YAML file; its section and folder use
    '_'. The pretext sections take ACP's recipe where they set nothing."""
    import lofi.train as train
    assert train.parse_args(["--stage", "acp+speed"]).stage == "acp+speed"
    row = tmp_path / "row.yaml"
    row.write_text("stages: [acp+arrow, acp+speed, head]\nacp: {epochs: 3, optim: {name: adam, lr: 0.002}}\n"
                   "acp_speed: {epochs: 1, fidelity: {T: 2}, weight: 0.5}\n")
    cfg = load_config(row, OFFLINE, check_paths=False)
    assert cfg.stages == ["acp+arrow", "acp+speed", "head"] and table.stage_key("acp+arrow") == "acp_arrow"
    assert (cfg.acp_arrow.epochs, cfg.acp_arrow.optim.name, cfg.acp_arrow.optim.lr) == (3, "adam", 0.002)
    assert (cfg.acp_speed.epochs, cfg.acp_speed.optim.lr, cfg.acp_speed.weight) == (1, 0.002, 0.5)
    assert cfg.acp_speed.fidelity.T == 2 and cfg.acp_speed.fidelity.size == cfg.acp.fidelity.size
    assert cfg.arrow.fidelity == cfg.acp.fidelity and cfg.speed.fast == [1.7, 2.3]
    with pytest.raises(ConfigError) as e:
        load_config(None, ["speed.fast=[1.1, 2.0]", "acp_speed.zoom=[0.5, 1.0]", "acp_arrow.weight=-1", *OFFLINE],
                    check_paths=False)
    assert "speed.fast: the sped-up rates [1.1, 2.0] must lie above the normal ones speed.normal=[1.0, 1.2]" in str(
        e.value)
    assert "acp_speed.zoom: expected [low, high] with 1 <= low <= high" in str(e.value)
    assert "acp_arrow.weight: must be ≥ 0, got -1" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a broken acp section is reported once, not again in each pretext one
        load_config(None, ["acp.fidelity={L: 1, X: 2}", *OFFLINE], check_paths=False)
    assert str(e.value).count("fidelity.X: unknown key") == 1
