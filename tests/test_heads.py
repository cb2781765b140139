"""Every registered localization head (lofi.models.registry.HEADS) through the TALHead interface: outputs at every
L the LoFi schedule produces, losses finite without positives, a micro-batch's share of the global-batch loss,
gradients into the encoder end to end, random outputs post-processed to a result file the evaluator scores, and CUDA
against the CPU; a perfect prediction scores mAP 1.0."""
import pytest
import torch

from lofi.config import CONFIG_DIR, load_config
from lofi.evaluation import evaluate_detection
from lofi.models import build_encoder
from lofi.models.actionformer import ActionFormer
from lofi.models.map_head import ProposalMapHead
from lofi.models.registry import HEADS, head_from_config
from lofi.models.tal import EndToEnd
from lofi.postprocess import detect, result_json

OFFLINE = ["data.synthetic.build=false"]
C = 32
LENGTHS = (4, 16, 25, 50, 100)
ANET_CONFIGS = {"gtad": "anet_tsm_r18.yaml", "bmn": "anet_tsm_r18_bmn.yaml",
                "actionformer": "anet_tsm_r18_actionformer.yaml"}


def config(name, *overrides):
    return load_config(None, [f"model.head={name}", *OFFLINE, *overrides], check_paths=False)


def make_head(name, in_dim=C, seed=0):
    torch.manual_seed(seed)
    return head_from_config(config(name), in_dim).double()


def metas(B, seed=0, empty=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(B):
        duration = 20.0 + 30.0 * float(torch.rand(1, generator=g))
        anns = []
        for _ in range(0 if empty else 1 + b % 3):
            s = float(torch.rand(1, generator=g)) * duration * 0.7
            anns.append({"segment": [s, min(duration, s + 2.0 + 0.3 * duration * float(torch.rand(1, generator=g)))],
                         "label": "a", "label_id": 0})
        out.append({"id": f"v{b}", "duration": duration, "annotations": anns})
    return out


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("L", LENGTHS)
def test_outputs_loss_and_proposals_at_every_length(name, L):
    head = make_head(name)
    B = 2
    x = torch.randn(B, C, L, dtype=torch.float64)
    out = head(x)
    assert out and all(v.shape[0] == B and torch.isfinite(v).all() for v in out.values())
    for empty in (False, True):  # no annotation at all: no positive target anywhere
        losses = head.batch_loss(out, metas(B, L, empty), L, torch.Generator().manual_seed(1))
        assert set(losses) == {"loss", *head.loss_terms}
        assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values()), losses
    head.eval()
    with torch.no_grad():
        segs, scores, counts = head.proposals(head(x), config(name).postprocess)
    assert segs.dtype == torch.float64 and segs.shape[:2] == scores.shape and counts.shape == (B,)
    for b in range(B):
        k = int(counts[b])
        assert 0 < k <= config(name).postprocess.top_k
        assert (segs[b, :k, 0] <= segs[b, :k, 1]).all() and (segs[b, :k] >= 0).all() and (segs[b, :k] <= 1).all()


@pytest.mark.parametrize("name", sorted(HEADS))
def test_micro_batch_shares_add_up_to_the_global_batch_loss(name):
    head = make_head(name)
    L, B = 16, 4
    x = torch.randn(B, C, L, dtype=torch.float64)
    meta = metas(B, 5)
    out = head(x)
    g = torch.Generator().manual_seed(2)
    targets = head.targets(meta, L)
    draws = head.draws(B, L, g)
    head.eval()  # statistics without updating any running state, so both computations see the same
    counts = head.statistics([targets], [draws])
    whole = head.loss(out, targets, draws, counts)
    halves = [slice(0, 1), slice(1, B)]
    parts = [head.targets(meta[h], L) for h in halves]
    part_draws = [None if draws is None else draws[h] for h in halves]
    split = head.statistics(parts, part_draws)  # the statistics of the halves together are the whole batch's
    assert split.keys() == counts.keys()
    assert all(torch.equal(torch.as_tensor(split[k]), torch.as_tensor(counts[k])) for k in counts)
    shares = [head.loss({k: v[h] for k, v in out.items()}, t, u, counts) for h, t, u in zip(halves, parts, part_draws)]
    for key in whole:
        total = float(sum(s[key].detach() for s in shares))
        assert total == pytest.approx(float(whole[key].detach()), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_gradients_reach_the_encoder_end_to_end(name):
    torch.manual_seed(0)
    encoder = build_encoder("tsm_r18")
    model = EndToEnd(encoder, head_from_config(config(name), encoder.out_dim))
    L = 4
    frames = torch.randint(0, 256, (2, L, 2, 3, 32, 32), dtype=torch.uint8)
    out = model(frames)
    model.head.batch_loss(out, metas(2, 3), L, torch.Generator().manual_seed(0))["loss"].backward()
    first = next(encoder.parameters())
    assert first.grad is not None and float(first.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_random_outputs_post_process_to_a_scored_result_file(name):
    head = make_head(name)
    L, B = 16, 3
    meta = metas(B, 7)
    pred = head.random_outputs(B, L, torch.Generator().manual_seed(0))
    real = head(torch.randn(B, C, L, dtype=torch.float64))
    assert pred.keys() == real.keys() and all(pred[k].shape == real[k].shape for k in pred)
    out = detect(head, pred, meta, config(name).postprocess, class_scores=torch.tensor([[1.0]] * B), classes=["a"])
    gt = {"database": {m["id"]: {"subset": "validation", "duration": m["duration"],
                                 "annotations": m["annotations"]} for m in meta}}
    result = evaluate_detection(gt, result_json(out["detections"], out["classifier"]), tiou_thresholds=[0.5])
    assert 0 <= result["average_mAP"] <= 1 and all(len(v) > 0 for v in out["detections"].values())


def perfect_outputs(head, meta, L):
    """Outputs that predict ``meta``'s annotations exactly: a map head's start/end probabilities and both maps are
    its targets; ActionFormer scores its positive points high with the target distances."""
    t = head.targets(meta, L)
    if isinstance(head, ProposalMapHead):
        return {"start": t["start"], "end": t["end"], "maps": torch.stack([t["iou_map"], t["iou_map"]], 1)}
    assert isinstance(head, ActionFormer), f"no perfect outputs for {type(head).__name__}"
    valid = head.points(L)["valid"].expand(len(meta), -1)
    return {"cls_logits": torch.where(t["cls"] > 0, 10.0, -10.0) * valid, "offsets": t["offsets"].clone(),
            "valid": valid.clone()}


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("recipe", ["default", "activitynet"])
def test_a_perfect_prediction_scores_map_one(name, recipe):
    """With the default post-processing and with the head's ActivityNet config's (BMN's Soft-NMS rule, ActionFormer's
    voting and minimum duration)."""
    # annotations on the 1 s snippet grid of 16 snippets: each is one proposal exactly
    meta = [{"id": "v0", "duration": 16.0, "annotations": [{"segment": [2.0, 7.0], "label": "run", "label_id": 0},
                                                           {"segment": [10.0, 15.0], "label": "run", "label_id": 0}]},
            {"id": "v1", "duration": 16.0, "annotations": [{"segment": [0.0, 5.0], "label": "swim", "label_id": 1}]}]
    head = make_head(name).eval()
    pp = (config(name) if recipe == "default" else
          load_config(CONFIG_DIR / ANET_CONFIGS[name], OFFLINE, check_paths=False)).postprocess
    out = detect(head, perfect_outputs(head, meta, 16), meta, pp,
                 class_scores=torch.tensor([[0.9, 0.1], [0.1, 0.9]]), classes=["run", "swim"])
    gt = {"database": {m["id"]: {"subset": "validation", "duration": m["duration"],
                                 "annotations": m["annotations"]} for m in meta}}
    result = evaluate_detection(gt, result_json(out["detections"], out["classifier"]), tiou_thresholds=[0.5, 0.95])
    assert result["mAP"] == [1.0, 1.0]


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(HEADS))
def test_cuda_matches_the_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    head = make_head(name).float()
    x = torch.randn(2, C, 25)
    out_cpu = head(x.requires_grad_())
    sum(v.sum() for v in out_cpu.values()).backward()
    grad_cpu = x.grad.clone()
    cuda = head.cuda()
    xc = x.detach().cuda().requires_grad_()
    out_cuda = cuda(xc)
    sum(v.sum() for v in out_cuda.values()).backward()
    for k in out_cpu:
        torch.testing.assert_close(out_cuda[k].cpu(), out_cpu[k].detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xc.grad.cpu(), grad_cpu, rtol=1e-3, atol=1e-4)
