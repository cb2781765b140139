"""Config loading and validation: every shipped config loads, overrides apply, and every error names its key."""
import pytest

from lofi.config import CONFIG_DIR, ConfigError, load_config


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml", check_paths=False)
    assert cfg.name == name
    assert cfg.fidelity.L % cfg.lofi.schedule.r_t == 0


def test_paper_settings():
    cfg = load_config(CONFIG_DIR / "anet_tsm_r18.yaml", check_paths=False)
    lofi, head = cfg.lofi, cfg.head
    assert (lofi.optim.name, lofi.optim.lr, lofi.optim.momentum, lofi.optim.weight_decay) == ("sgd", 0.1, 0.0, 1e-4)
    assert (lofi.batch_size, lofi.optim.step_size, lofi.optim.gamma, lofi.schedule.mode) == (16, 5, 0.5, "long_cycle")
    assert (head.optim.name, head.optim.lr, head.epochs, head.optim.step_size, head.optim.gamma) == ("adam", 4e-3, 10, 5, 0.1)
    assert head.lr_search == [2e-4, 5e-4, 1e-3, 2e-3, 5e-3]
    assert (cfg.postprocess.sigma, cfg.postprocess.top_k, cfg.postprocess.candidates) == (0.84, 100, "gtad")
    assert head.select == "val_loss"
    assert (cfg.fidelity.L, cfg.fidelity.T, cfg.fidelity.size) == (100, 8, 224)
    r50 = load_config(CONFIG_DIR / "anet_tsm_r50.yaml", check_paths=False)
    assert (r50.model.encoder, r50.lofi.batch_size, r50.postprocess.sigma) == ("tsm_r50", "auto", 0.84)
    for name in ("anet_tsm_r50", "hacs_tsm_r18"):  # G-TAD's protocol options, from anet_tsm_r18
        other = load_config(CONFIG_DIR / f"{name}.yaml", check_paths=False)
        assert (other.postprocess.candidates, other.head.select) == ("gtad", "val_loss")
    demo = load_config(CONFIG_DIR / "demo.yaml", check_paths=False)
    assert (demo.postprocess.candidates, demo.head.select) == ("opentad", "val_map")


def test_overrides_apply_with_types():
    cfg = load_config(None, ["lofi.epochs=7", "lofi.optim.lr=1e-3", "head.lr_search=[1e-3, 2e-3]",
                             "model.weights=null", "data.backend=cpu"], check_paths=False)
    assert (cfg.lofi.epochs, cfg.lofi.optim.lr, cfg.head.lr_search) == (7, 1e-3, [1e-3, 2e-3])
    assert cfg.lofi.optim.momentum == 0.0  # a partial section keeps the other defaults


@pytest.mark.parametrize("override, key, words", [
    ("lofi.epochz=3", "lofi.epochz", "unknown key"),
    ("bogus=1", "bogus", "unknown key"),
    ("lofi.epochs=three", "lofi.epochs", "expected an integer"),
    ("fidelity.size=112.5", "fidelity.size", "expected an integer"),
    ("fidelity.L=18", "lofi.schedule.r_t", "not divisible by r_t=4"),
    ("lofi.schedule.r_t=3", "lofi.schedule.r_t", "not divisible"),
    ("lofi.schedule.mode=medium", "lofi.schedule.mode", "expected one of"),
    ("lofi.optim.lr=-1", "lofi.optim.lr", "must be > 0"),
    ("model.frozen_bn=yes please", "model.frozen_bn", "true or false"),
    ("data.shards=/no/such/shards", "data.shards", "does not exist"),
    ("model.weights=/no/such.pth", "model.weights", "no such file"),
    ("eval.tiou=[0.5, 1.5]", "eval.tiou[1]", "tIoU"),
    ("postprocess.candidates=bmn", "postprocess.candidates", "expected one of"),
    ("head.select=val_acc", "head.select", "expected one of"),
    ("head.video_info=/no/such.csv", "head.video_info", "set head.features too"),
    ("lofi", "lofi", "key=value"),
])
def test_errors_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override, "data.synthetic.build=false"])
    assert key in str(err.value) and words in str(err.value)


def test_global_batch_must_divide_world_size():
    with pytest.raises(ConfigError, match=r"lofi.batch_size: the global batch 8 does not divide by the world size 3"):
        load_config(None, world_size=3, check_paths=False)
    assert load_config(None, world_size=4, check_paths=False).lofi.batch_size == 8


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["a.b=1", "lofi.epochs=x", "head.optim.lr=0"], check_paths=False)
    text = str(err.value)
    assert "a: unknown key" in text and "lofi.epochs" in text


def test_base_inheritance(tmp_path):
    (tmp_path / "child.yaml").write_text(f"_base_: {CONFIG_DIR / 'anet_tsm_r18.yaml'}\nname: child\nlofi: {{epochs: 3}}\n")
    cfg = load_config(tmp_path / "child.yaml", check_paths=False)
    assert (cfg.name, cfg.lofi.epochs, cfg.lofi.optim.lr, cfg.postprocess.sigma) == ("child", 3, 0.1, 0.84)


def test_acp_plus_fidelity_follows_acp_unless_set():
    demo = load_config(None, check_paths=False)
    assert demo.acp_plus.fidelity == demo.acp.fidelity  # the demo's 1x4/2@64 clips, not the 224² default
    moved = load_config(None, ["acp.fidelity.size=96"], check_paths=False)
    assert (moved.acp.fidelity.size, moved.acp_plus.fidelity.size) == (96, 96)
    own = load_config(None, ["acp_plus.fidelity.T=8"], check_paths=False)
    assert (own.acp_plus.fidelity.T, own.acp_plus.fidelity.size, own.acp.fidelity.T) == (8, 64, 4)
    anet = load_config(CONFIG_DIR / "anet_tsm_r18.yaml", check_paths=False)
    assert (anet.acp_plus.fidelity.T, anet.acp_plus.fidelity.size) == (8, 224)


def test_print_config_is_the_resolved_config_and_loads_back(tmp_path, capsys):
    # `python -m lofi.train --print-config ...` validates, prints the resolved YAML (inherited keys filled in) and
    # starts nothing; that YAML, used as --config, resolves to the same config.
    from lofi.config import to_dict
    from lofi.train import main
    assert main(["--print-config", "lofi.epochs=7", "acp.fidelity.size=48", f"work_dir={tmp_path}/runs"]) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    saved = tmp_path / "resolved.yaml"
    saved.write_text(printed)
    cfg = load_config(saved, check_paths=False)
    assert (cfg.lofi.epochs, cfg.acp_plus.fidelity.size) == (7, 48)
    assert to_dict(cfg) == to_dict(load_config(None, ["lofi.epochs=7", "acp.fidelity.size=48",
                                                      f"work_dir={tmp_path}/runs"], check_paths=False))
    assert main(["--print-config", "lofi.epoch=7"]) == 2
    assert "lofi.epoch: unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["lofi.optim.lr", "lofi.optim.gamma", "lofi.optim.momentum", "acp.optim.weight_decay",
                                 "postprocess.sigma", "lofi.schedule.r_s", "lofi.schedule.st_r_s",
                                 "lofi.memory_budget_gib", "head.lr_search", "data.synthetic.length", "eval.tiou",
                                 "dist.timeout_s"])
@pytest.mark.parametrize("raw", [".nan", ".inf", "-.inf", "1e400", "-1.0e+400", "1" + "0" * 400])
def test_non_finite_floats_are_refused_naming_the_key(key, raw):
    # YAML reads .nan/.inf as floats, 1e400 as a string that float() turns into inf, and 10**400 as an int beyond
    # the float range; none may reach the trainer (lr=.nan used to finish with rc 0 and an all-NaN encoder).
    value = f"[1.0, {raw}]" if key in ("head.lr_search", "data.synthetic.length", "eval.tiou") else raw
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"], check_paths=False)
    assert key in str(err.value) and "finite" in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("lofi.optim.lr=0", "lofi.optim.lr"),
    ("lofi.optim.gamma=0", "lofi.optim.gamma"),
    ("lofi.optim.gamma=1.5", "lofi.optim.gamma"),
    ("acp.optim.momentum=1.0", "acp.optim.momentum"),
    ("acp.optim.momentum=-0.1", "acp.optim.momentum"),
    ("head.optim.weight_decay=-1e-4", "head.optim.weight_decay"),
    ("postprocess.sigma=0", "postprocess.sigma"),
    ("postprocess.sigma=1e-310", "postprocess.sigma"),  # subnormal: 1 / sigma overflows to inf
    ("lofi.schedule.r_s=0.5", "lofi.schedule.r_s"),
    ("lofi.memory_budget_gib=0", "lofi.memory_budget_gib"),
    ("dist.timeout_s=0", "dist.timeout_s"),
])
def test_floats_out_of_range_are_refused(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override], check_paths=False)
    assert key in str(err.value)


def test_float_range_ends_that_are_allowed():
    cfg = load_config(None, ["lofi.optim.gamma=1", "acp.optim.momentum=0.99", "head.optim.weight_decay=0",
                             "lofi.schedule.r_s=1", "postprocess.sigma=1e-300", "dist.timeout_s=30"],
                      check_paths=False)
    assert (cfg.lofi.optim.gamma, cfg.acp.optim.momentum, cfg.dist.timeout_s) == (1.0, 0.99, 30.0)
    assert load_config(None, check_paths=False).dist.timeout_s == 600.0


def _shard_dir(root, subsets):
    """A shard directory whose tars are empty files: validation only looks for them, it does not read them."""
    root.mkdir(parents=True, exist_ok=True)
    for subset in subsets:
        (root / f"{subset}-000000.tar").write_bytes(b"")
    return root


@pytest.mark.parametrize("stage, present, missing", [
    ("lofi", [], "training"),
    ("lofi", ["validation"], "training"),
    ("head", ["training"], "validation"),
    ("eval", ["training"], "validation"),
])
def test_empty_shard_directory_is_found_before_training(tmp_path, stage, present, missing):
    shards = _shard_dir(tmp_path / "shards", present)
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"data.shards={shards}", "data.synthetic.build=false"], stages=[stage])
    assert "data.shards" in str(err.value) and missing in str(err.value)
    # a manifest naming the subset, but no tar of it, is no better
    (shards / "manifest.json").write_text('{"splits": {"training": {}, "validation": {}}}')
    with pytest.raises(ConfigError, match=f"data.shards: .*{missing}"):
        load_config(None, [f"data.shards={shards}", "data.synthetic.build=false"], stages=[stage])
    # with data.synthetic.build the same directory is an error too: it has a manifest, so nothing would build it
    with pytest.raises(ConfigError, match=f"data.shards: .*{missing}"):
        load_config(None, [f"data.shards={shards}", "data.synthetic.build=true"], stages=[stage])


def test_shards_present_or_to_be_built_pass(tmp_path):
    shards = _shard_dir(tmp_path / "shards", ["training", "validation"])
    clips = _shard_dir(tmp_path / "clips", ["training"])
    load_config(None, [f"data.shards={shards}", f"data.clip_shards={clips}", "data.synthetic.build=false"])
    # the demo: with data.synthetic.build, a missing (or empty) directory is where the synthetic shards are built
    empty = tmp_path / "empty"
    empty.mkdir()
    load_config(None, [f"data.shards={tmp_path / 'none'}", f"data.clip_shards={empty}", "data.synthetic.build=true"])
    with pytest.raises(ConfigError, match="data.clip_shards: stage acp needs classification shards"):
        load_config(None, [f"data.shards={shards}", f"data.clip_shards={empty}", "data.synthetic.build=false"])
