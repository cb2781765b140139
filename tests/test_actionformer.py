"""ActionFormer head: shapes and masking at every L, local attention, targets on hand-made annotations, the
global-batch loss, the moving-average normalizer, decoding, the release's state-dict names, the config section."""
import dataclasses
import inspect
import math

import pytest
import torch

from lofi import ops
from lofi.config import ActionFormerConfig, Config, ConfigError, PostprocessConfig, validate
from lofi.models.actionformer import ActionFormer, diou_loss_1d
from lofi.models.conv_transformer import MaskedConvAttention, sinusoid_encoding

C = 32
SMALL = dict(embd_dim=16, head_dim=16)
STRIDES = [1, 2, 4, 8, 16, 32]
needs_bmn_soft_nms = pytest.mark.skipif(
    "high_threshold" not in inspect.signature(ops.batched_soft_nms).parameters or not hasattr(ops, "score_voting"),
    reason="needs the bmn soft-NMS argument")


def small_head(**kwargs) -> ActionFormer:
    return ActionFormer(C, **{**SMALL, **kwargs})


def meta(*segments, duration=16.0):
    return {"id": "v", "duration": duration,
            "annotations": [{"segment": list(s), "label_id": 0} for s in segments]}


def positives(head, targets, b, L):
    """{(level, index): (left, right)} of video b's positive points."""
    pts = head.points(L)
    first = {level: int((pts["level"] == level).nonzero()[0]) for level in range(len(STRIDES))}
    out = {}
    for p in targets["cls"][b].nonzero().flatten().tolist():
        level = int(pts["level"][p])
        out[(level, p - first[level])] = tuple(targets["offsets"][b, p].tolist())
    return out


@pytest.mark.parametrize("L", [4, 16, 25, 50, 100])
def test_output_shapes_and_padded_points(L):
    torch.manual_seed(L)
    head = small_head().eval()
    out = head(torch.randn(2, C, L))
    Lp = -(-L // 32) * 32  # padded to the largest stride, 32
    P = sum(Lp // s for s in STRIDES)
    assert out["cls_logits"].shape == (2, P) and out["offsets"].shape == (2, P, 2) and out["valid"].shape == (2, P)
    assert out["valid"].dtype == torch.bool
    per_level = out["valid"][0].split([Lp // s for s in STRIDES])
    assert [int(v.sum()) for v in per_level] == [math.ceil(L / s) for s in STRIDES]
    assert all(v[:math.ceil(L / s)].all() for v, s in zip(per_level, STRIDES))
    padded = ~out["valid"]
    assert (out["cls_logits"][padded] == 0).all() and (out["offsets"][padded] == 0).all()
    assert torch.isfinite(out["cls_logits"]).all() and (out["offsets"] >= 0).all()
    assert head.points(L)["valid"].equal(out["valid"][0])


def test_valid_outputs_ignore_padding_contents_and_amount():
    torch.manual_seed(0)
    head = small_head().eval()
    L = 25
    x = torch.randn(2, C, L)
    ref = head(x)
    T = 64  # more padding than forward's 32, filled with garbage
    garbage = torch.cat([x, 100 * torch.randn(2, C, T - L)], 2)
    mask = (torch.arange(T) < L).view(1, 1, T).expand(2, 1, T)
    out = head.predict(garbage, mask)
    assert int(out["valid"].sum()) == int(ref["valid"].sum())
    for key in ("cls_logits", "offsets"):
        torch.testing.assert_close(out[key][out["valid"]], ref[key][ref["valid"]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [5, -1])
def test_attention_window(window):
    """A local window: output i depends on inputs within window // 2 + 1 (the depthwise conv adds 1); -1: on all."""
    torch.manual_seed(0)
    attn = MaskedConvAttention(8, 2, window).eval()
    T, i = 20, 3
    mask = torch.ones(1, 1, T, dtype=torch.bool)
    x = torch.randn(1, 8, T)
    base = attn(x, mask)[0][..., i]
    for j, inside in ((i + window // 2 + 1, True), (i + window // 2 + 2, window < 0), (T - 1, window < 0)):
        y = x.clone()
        y[..., j] += 5
        changed = not torch.allclose(attn(y, mask)[0][..., i], base)
        assert changed == inside, (j, changed)


def test_sinusoid_encoding():
    pe = sinusoid_encoding(10, 6)
    assert pe.shape == (1, 6, 10)
    torch.testing.assert_close(pe[0, :, 0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    t = 7.0
    expected = [math.sin(t), math.cos(t), math.sin(t / 10000 ** (2 / 6)), math.cos(t / 10000 ** (2 / 6))]
    torch.testing.assert_close(pe[0, :4, 7], torch.tensor(expected))


def test_targets_hand_made():
    """L = 16, 16 s: seconds are snippets; point i of level l sits at i·2^l + 0.5; offsets in strides."""
    head = small_head()
    L = 16
    t = head.targets([meta((2, 5)), meta((1.5, 9.5)), meta((12, 20), (6, 6)), meta((1, 9), (0, 11))], L)
    assert t["cls"].shape == (4, 63) and t["offsets"].shape == (4, 63, 2)
    # [2, 5] (on the snippet grid): centre region [2, 5] at stride 1; all distances ≤ 4 → level 0 only
    assert positives(head, t, 0, L) == {(0, 2): (0.5, 2.5), (0, 3): (1.5, 1.5), (0, 4): (2.5, 0.5)}
    # [1.5, 9.5]: level 0 keeps only 5.5, whose larger distance 4 is the range's inclusive end; at level 1 the
    # centre region [2.5, 8.5] excludes its ends 2.5 and 8.5 (strictly inside)
    assert positives(head, t, 1, L) == {(0, 5): (4.0, 4.0), (1, 2): (1.5, 2.5), (1, 3): (2.5, 1.5)}
    # [12, 20] past the 16 s end is clipped to [12, 16] (centre region [12.5, 15.5], ends excluded); [6, 6] has none
    assert positives(head, t, 2, L) == {(0, 13): (1.5, 2.5), (0, 14): (2.5, 1.5)}
    # overlapping [1, 9] and [0, 11]: at level 1, points 4.5 and 6.5 fall in both; the shorter [1, 9] wins
    assert positives(head, t, 3, L) == {(1, 1): (0.75, 3.25), (1, 2): (1.75, 2.25), (1, 3): (2.75, 1.25),
                                        (2, 0): (0.125, 2.625), (2, 2): (2.125, 0.625)}
    assert (t["offsets"][t["cls"] == 0] == 0).all()
    assert not t["cls"][:, ~head.points(L)["valid"]].any()


def test_loss_without_annotations_is_finite():
    torch.manual_seed(0)
    head = small_head()
    x = torch.randn(2, C, 16, requires_grad=True)
    out = head(x)
    losses = head.batch_loss(out, [meta(), meta()], 16)
    assert set(losses) == {"loss", "cls", "reg"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["reg"] == 0 and losses["cls"] > 0
    losses["loss"].backward()
    assert torch.isfinite(x.grad).all()


def test_gradients_reach_features_and_every_parameter():
    torch.manual_seed(0)
    head = small_head().eval()  # drop path off: every branch contributes
    L = 100
    batch = [meta((10, 13), (20, 27), (30, 45), duration=100.0), meta((50, 80), (0, 100), duration=100.0)]
    targets = head.targets(batch, L)
    levels = head.points(L)["level"]
    assert all(targets["cls"][:, levels == level].any() for level in range(6))  # positives on every level
    x = torch.randn(2, C, L, requires_grad=True)
    losses = head.loss(head(x), targets, None, head.statistics([targets], [None]))
    assert losses["reg"] > 0
    losses["loss"].backward()
    assert x.grad.abs().sum() > 0
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_micro_batch_shares_sum_to_the_global_batch_loss():
    torch.manual_seed(0)
    head = small_head()
    L = 25
    batch = [meta((1, 4), (3, 11)), meta(), meta((0, 16)), meta((5, 6), (8, 9.5))]
    with torch.no_grad():
        out = head.eval()(torch.randn(4, C, L))
    whole = head.targets(batch, L)
    halves = [head.targets(batch[:2], L), head.targets(batch[2:], L)]
    parts = [{k: v[:2] for k, v in out.items()}, {k: v[2:] for k, v in out.items()}]
    for training in (False, True):
        head.train(training)
        counts = head.statistics(halves, [None, None])
        assert int(counts["num_pos"]) == int((whole["cls"] > 0).sum()) > 0
        total = head.loss(out, whole, None, counts)
        shares = [head.loss(o, t, None, counts) for o, t in zip(parts, halves)]
        for key in ("loss", "cls", "reg"):
            torch.testing.assert_close(shares[0][key] + shares[1][key], total[key])
    head.eval()
    torch.testing.assert_close(total["loss"] * counts["normalizer"] / int(counts["num_pos"]),
                               head.batch_loss(out, batch, L)["loss"])  # eval: the batch's own count
    two = head.statistics(halves, [None, None], reduce=lambda t: 2 * t)  # two processes holding the same videos
    assert int(two["num_pos"]) == 2 * int(counts["num_pos"]) and float(two["normalizer"]) == 2 * int(counts["num_pos"])


def test_normalizer_moving_average_only_in_training_and_in_state_dict():
    head = small_head(init_loss_norm=400.0)
    t = head.targets([meta((2, 5)), meta((1, 9), (0, 11))], 16)
    n = int((t["cls"] > 0).sum())
    head.eval()
    head.statistics([t], [None])
    assert float(head.loss_normalizer) == 400.0
    head.train()
    counts = head.statistics([t], [None])
    assert float(head.loss_normalizer) == pytest.approx(0.9 * 400 + 0.1 * n)
    assert float(counts["normalizer"]) == pytest.approx(0.9 * 400 + 0.1 * n)
    head.statistics([head.targets([meta()], 16)], [None])  # no positives: counts as 1
    assert float(head.loss_normalizer) == pytest.approx(0.9 * (0.9 * 400 + 0.1 * n) + 0.1)
    state = head.state_dict()
    assert "loss_normalizer" in state and "backbone.pos_embd" not in state
    fresh = small_head()
    fresh.load_state_dict(state)
    assert float(fresh.loss_normalizer) == float(head.loss_normalizer)


def perfect_outputs(head, targets, L):
    """Outputs that score every positive point high (logit 10), the rest low, with the target distances."""
    valid = head.points(L)["valid"].expand(len(targets["cls"]), -1)
    logits = torch.where(targets["cls"] > 0, 10.0, -10.0) * valid
    return {"cls_logits": logits, "offsets": targets["offsets"].clone(), "valid": valid.clone()}


PERFECT = [meta((1, 9), (0, 11)), meta((12, 20), (2, 5))]
PERFECT_GT = [[(1 / 16, 9 / 16), (0.0, 11 / 16)], [(12 / 16, 1.0), (2 / 16, 5 / 16)]]


def test_perfect_prediction_decodes_to_the_annotations():
    head = small_head()
    L = 16
    targets = head.targets(PERFECT, L)
    segments, scores, num_valid = head.candidates(perfect_outputs(head, targets, L))
    assert num_valid.tolist() == (targets["cls"] > 0).sum(1).tolist()
    for b, gt in enumerate(PERFECT_GT):
        found = {tuple(round(v, 12) for v in seg) for seg in segments[b, :num_valid[b]].tolist()}
        assert found == {tuple(round(v, 12) for v in g) for g in gt}
        assert (scores[b, num_valid[b]:] == 0).all() and (scores[b, :num_valid[b]] > 0.99).all()


def test_candidates_keep_top_k_per_level_above_min_score():
    head = small_head(pre_nms_top_k=3, min_score=0.5)
    L = 16
    out = head.random_outputs(1, L, torch.Generator().manual_seed(0))
    segments, scores, num_valid = head.candidates(out)
    prob = torch.sigmoid(out["cls_logits"][0].double()) * out["valid"][0]
    expected = []
    for level_prob in prob.split(head.level_sizes(L)):
        top = level_prob.topk(min(3, len(level_prob))).values
        expected += top[top > 0.5].tolist()
    assert sorted(scores[0, :num_valid[0]].tolist()) == pytest.approx(sorted(expected))
    assert ((segments >= 0) & (segments <= 1)).all() and (segments[..., 1] >= segments[..., 0]).all()


@needs_bmn_soft_nms
def test_perfect_prediction_proposals_are_the_annotations():
    head = small_head()
    L = 16
    segments, scores, counts = head.proposals(perfect_outputs(head, head.targets(PERFECT, L), L), PostprocessConfig())
    assert segments.dtype == torch.float64 and segments.shape[:2] == scores.shape
    for b, gt in enumerate(PERFECT_GT):
        assert counts[b] >= len(gt)
        top = sorted(tuple(round(v, 12) for v in seg) for seg in segments[b, :len(gt)].tolist())
        assert top == sorted(tuple(round(v, 12) for v in g) for g in gt)


def test_random_outputs_match_forward():
    head = small_head().eval()
    for L in (4, 25, 100):
        out = head(torch.randn(3, C, L))
        rand = head.random_outputs(3, L, torch.Generator().manual_seed(1))
        assert {k: (v.shape, v.dtype) for k, v in rand.items()} == {k: (v.shape, v.dtype) for k, v in out.items()}
        assert rand["valid"].equal(out["valid"])
        assert (rand["cls_logits"][~rand["valid"]] == 0).all() and (rand["offsets"][~rand["valid"]] == 0).all()
    prob = torch.sigmoid(head.random_outputs(64, 100, torch.Generator().manual_seed(2))["cls_logits"])
    prob = prob[head.points(100)["valid"].expand(64, -1)]
    assert 0.45 < float(prob.mean()) < 0.55 and float(prob.min()) < 0.05 and float(prob.max()) > 0.95
    again = head.random_outputs(3, 25, torch.Generator().manual_seed(1))
    assert all(again[k].equal(v) for k, v in head.random_outputs(3, 25, torch.Generator().manual_seed(1)).items())
    pts = head.points(25)
    reach = (pts["high"].clamp(max=25) / pts["stride"]).float()
    assert (again["offsets"] <= reach.view(1, -1, 1)).all() and (again["offsets"] >= 0).all()


def test_diou_loss_1d():
    pred = torch.tensor([[1.0, 1.0], [2.0, 3.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 3.0], [2.0, 3.0], [1.0, 1.0]])
    # row 0: IoU 2/4, centres −1 apart over an enclosing 4; row 1: identical; row 2: a point, IoU 0, same centre
    torch.testing.assert_close(diou_loss_1d(pred, target), torch.tensor([1 - 0.5 + (1 / 4) ** 2, 0.0, 1.0]))


def release_state_shapes(in_dim, D, H, levels=6, stem=2, embd=2, droppath=True):
    """The parameter names and shapes of the release's PtTransformer (LocPointTransformer, convTransformer backbone,
    identity neck, heads with layer norm), class-agnostic."""
    ln = (1, D, 1)
    shapes = {}
    for i in range(embd):
        shapes[f"backbone.embd.{i}.conv.weight"] = (D, in_dim if i == 0 else D, 3)
        shapes[f"backbone.embd_norm.{i}.weight"] = shapes[f"backbone.embd_norm.{i}.bias"] = ln
    blocks = [f"backbone.stem.{i}" for i in range(stem)] + [f"backbone.branch.{i}" for i in range(levels - 1)]
    for b in blocks:
        for norm in ("ln1", "ln2", "attn.query_norm", "attn.key_norm", "attn.value_norm"):
            shapes[f"{b}.{norm}.weight"] = shapes[f"{b}.{norm}.bias"] = ln
        for conv in ("query_conv", "key_conv", "value_conv"):
            shapes[f"{b}.attn.{conv}.conv.weight"] = (D, 1, 3)
        for proj in ("query", "key", "value", "proj"):
            shapes[f"{b}.attn.{proj}.weight"], shapes[f"{b}.attn.{proj}.bias"] = (D, D, 1), (D,)
        shapes[f"{b}.mlp.0.weight"], shapes[f"{b}.mlp.0.bias"] = (4 * D, D, 1), (4 * D,)
        shapes[f"{b}.mlp.3.weight"], shapes[f"{b}.mlp.3.bias"] = (D, 4 * D, 1), (D,)
        if droppath:
            shapes[f"{b}.drop_path_attn.scale"] = shapes[f"{b}.drop_path_mlp.scale"] = ln
    for level in range(levels):
        shapes[f"neck.fpn_norms.{level}.weight"] = shapes[f"neck.fpn_norms.{level}.bias"] = ln
        shapes[f"reg_head.scale.{level}.scale"] = ()
    for head in ("cls_head", "reg_head"):
        for i in range(2):
            shapes[f"{head}.head.{i}.conv.weight"] = (H, D if i == 0 else H, 3)
            shapes[f"{head}.norm.{i}.weight"] = shapes[f"{head}.norm.{i}.bias"] = (1, H, 1)
    shapes["cls_head.cls_head.conv.weight"], shapes["cls_head.cls_head.conv.bias"] = (1, H, 3), (1,)
    shapes["reg_head.offset_head.conv.weight"], shapes["reg_head.offset_head.conv.bias"] = (2, H, 3), (2,)
    return shapes


@pytest.mark.parametrize("droppath", [0.1, 0.0])
def test_release_state_dict_maps_one_to_one(droppath):
    head = ActionFormer(C, embd_dim=16, head_dim=24, droppath=droppath)
    release = release_state_shapes(C, 16, 24, droppath=droppath > 0)
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours.pop("loss_normalizer") == ()
    assert ours == release
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) for k, shape in release.items()}
    result = head.load_state_dict(state, strict=False)
    assert result.missing_keys == ["loss_normalizer"] and result.unexpected_keys == []
    assert all(head.state_dict()[k].equal(v) for k, v in state.items())


def test_default_configuration_is_the_release_activitynet_one():
    head = ActionFormer(512)
    assert head.strides == STRIDES
    assert head.regression_range.tolist() == [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]]
    assert [b.attn.window for b in head.backbone.stem] == [25, 25]
    assert [b.attn.window for b in head.backbone.branch] == [25, 25, 25, 25, -1]
    bias = head.cls_head.cls_head.conv.bias.item()
    assert torch.sigmoid(torch.tensor(bias)) == pytest.approx(0.01)
    assert float(head.loss_normalizer) == 400.0
    assert head.backbone.stem[0].drop_path_attn.p == 0.1 and head.backbone.stem[0].mlp[2].p == 0.0
    assert head.backbone.pos_embd.shape == (1, 256, 768)


def as_lists(value):
    return [as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_config_fields_are_the_constructor_keywords_with_its_defaults():
    params = dict(list(inspect.signature(ActionFormer.__init__).parameters.items())[2:])  # less self, in_dim
    cfg = ActionFormerConfig()
    assert [f.name for f in dataclasses.fields(cfg)] == list(params)
    assert {k: as_lists(p.default) for k, p in params.items()} == dataclasses.asdict(cfg)
    assert isinstance(Config().actionformer, ActionFormerConfig)
    head = ActionFormer(C, **dataclasses.asdict(ActionFormerConfig(embd_dim=16, head_dim=16)))
    assert head(torch.randn(1, C, 4))["cls_logits"].shape == (1, 63)


@pytest.mark.parametrize("change, key", [
    (dict(n_mha_win_size=[25, 25, 25, 25, -1]), "actionformer.n_mha_win_size"),
    (dict(n_mha_win_size=[25, 24, 25, 25, 25, -1]), "actionformer.n_mha_win_size[1]"),
    (dict(regression_range=[[0, 4], [8, 4], [8, 16], [16, 32], [32, 64], [64, 10000]]),
     "actionformer.regression_range[1]"),
    (dict(backbone_arch=[2, 2]), "actionformer.backbone_arch"),
    (dict(embd_dim=250), "actionformer.embd_dim"),
    (dict(head_kernel_size=4), "actionformer.head_kernel_size"),
    (dict(droppath=1.0), "actionformer.droppath"),
    (dict(cls_prior_prob=0.0), "actionformer.cls_prior_prob"),
    (dict(min_score=-0.1), "actionformer.min_score"),
    (dict(pre_nms_top_k=0), "actionformer.pre_nms_top_k"),
    (dict(init_loss_norm=0.0), "actionformer.init_loss_norm"),
])
def test_config_validation_names_the_key(change, key):
    cfg = Config()
    validate(cfg, check_paths=False)
    cfg.actionformer = dataclasses.replace(cfg.actionformer, **change)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]") + ":"):
        validate(cfg, check_paths=False)
