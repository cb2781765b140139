"""G-TAD's targets and loss."""
import pytest
import torch

from lofi.models import build_targets, gtad_loss, valid_mask
from lofi.models.losses import balanced_bce, batch_statistics, sampled_l2


def meta(duration, *segments):
    return {"id": "vid", "duration": duration, "annotations": [{"segment": list(s), "label": "x"} for s in segments]}


def random_pred(B, L, seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(B, 2, L, L, generator=g) * valid_mask(L)
    return {"start": torch.rand(B, L, generator=g), "end": torch.rand(B, L, generator=g), "maps": maps}


def test_iou_map_and_boundaries():
    L = 10
    t = build_targets([meta(20.0, (4.0, 10.0))], L)  # snippets 2..4 exactly: [0.2, 0.5]
    iou = t["iou_map"][0]
    assert iou[2, 2] == pytest.approx(1.0)  # d = 2, s = 2 covers snippets 2..4
    assert iou[0, 2] == pytest.approx(1 / 3)
    assert (iou[~valid_mask(L)] == 0).all()
    # boundary x (in snippets) is positive at j iff x ∈ (j − 1, j + 2): start x = 2 → j ∈ {1, 2}; end x = 5 → {4, 5}
    assert (t["start"][0] > 0.5).nonzero().flatten().tolist() == [1, 2]
    assert (t["end"][0] > 0.5).nonzero().flatten().tolist() == [4, 5]


def test_iou_map_brute_force_any_length():
    L = 13
    segs = [(1.3, 7.9), (5.0, 12.2)]
    iou = build_targets([meta(13.0, *segs)], L)["iou_map"][0]
    for d in range(L):
        for s in range(L - d):
            a0, a1 = s, s + d + 1.0
            best = max(max(0.0, min(a1, e) - max(a0, b)) / (a1 - a0 + e - b - max(0.0, min(a1, e) - max(a0, b)))
                       for b, e in segs)
            assert iou[d, s].item() == pytest.approx(best, abs=1e-6)


def test_targets_empty_and_bad_input():
    t = build_targets([meta(5.0)], 25)
    assert all(v.abs().sum() == 0 for v in t.values())
    with pytest.raises(ValueError, match="ends before it starts"):
        build_targets([meta(5.0, (3.0, 2.0))], 25)
    with pytest.raises(ValueError, match="duration"):
        build_targets([meta(0.0, (1.0, 2.0))], 25)


@pytest.mark.parametrize("L", [25, 50, 100])
def test_loss_finite_random(L, seed):
    g = torch.Generator().manual_seed(seed)
    segs = [(float(a), float(a + b)) for a, b in torch.rand(3, 2, generator=g).mul(40).tolist()]
    targets = build_targets([meta(90.0, *segs), meta(30.0, (0.0, 30.0))], L)
    out = gtad_loss(random_pred(2, L, seed), targets, generator=torch.Generator().manual_seed(seed))
    assert all(torch.isfinite(v) and v > 0 for v in out.values())
    torch.testing.assert_close(out["loss"], out["tem"] + 10 * out["reg"] + out["cls"])


def test_loss_empty_targets_is_finite_and_differentiable():
    L = 25
    pred = random_pred(2, L, 0)
    for v in pred.values():
        v.requires_grad_(True)
    out = gtad_loss(pred, build_targets([meta(10.0), meta(10.0)], L))
    assert out["reg"] == 0  # no high-IoU cells
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(torch.isfinite(v.grad).all() for v in pred.values())


def test_no_high_iou_cells_gives_zero_regression():
    L = 10
    gt = torch.zeros(1, L, L)
    gt[0, 0, 0] = 0.5
    pred = torch.rand(1, L, L)
    assert sampled_l2(pred, gt, valid_mask(L).expand(1, L, L)) == 0


def test_balanced_bce_matches_gtad_weighting():
    g = torch.Generator().manual_seed(1)
    pred, gt = torch.rand(40, generator=g), torch.rand(40, generator=g)
    p = (gt > 0.5).float()
    n, n_pos = p.numel(), p.sum()
    r = n / n_pos
    w_pos, w_neg = 0.5 * r, 0.5 * r / (r - 1)
    gtad = -torch.mean(w_pos * torch.log(pred + 1e-6) * p + w_neg * torch.log(1 - pred + 1e-6) * (1 - p))
    torch.testing.assert_close(balanced_bce(pred, gt > 0.5, gt <= 0.5), gtad)


def test_regression_sampling_uses_generator_and_rates():
    L = 100
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(4, L, L, generator=g) * valid_mask(L)
    pred = torch.rand(4, L, L, generator=g)
    mask = valid_mask(L).expand_as(gt)
    a = sampled_l2(pred, gt, mask, torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # global state must not matter
    b = sampled_l2(pred, gt, mask, torch.Generator().manual_seed(5))
    assert a == b
    # error 1 on high cells only: loss = 0.5·N_high / (N_high + kept mid + kept low); both kept counts ≈ N_high
    high_only = gt + ((gt > 0.7) & mask).float()
    rate = sampled_l2(high_only, gt, mask, torch.Generator().manual_seed(6))
    assert rate == pytest.approx(0.5 / 3, rel=0.03)


def random_metas(n, seed):
    g = torch.Generator().manual_seed(seed)
    metas = []
    for i in range(n):
        k = int(torch.randint(0, 4, (1,), generator=g))  # 0-3 segments: the videos' label ratios differ
        segs = [(float(a), float(a + b)) for a, b in (torch.rand(k, 2, generator=g) * 30).tolist()]
        metas.append(meta(50.0, *segs))
    return metas


def test_shares_of_micro_batches_add_up_to_the_global_batch_loss(seed):
    # Accumulation over 2 micro-batches with the global statistics = G-TAD's loss on the whole batch (float64), for
    # the value and the gradients; the per-micro-batch statistics of the plain loss give another value.
    L, B = 16, 6
    metas = random_metas(B, seed)
    pred = random_pred(B, L, seed)
    pred = {k: v.double().requires_grad_(True) for k, v in pred.items()}
    draws = torch.rand(B, L, L, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    whole = gtad_loss(pred, build_targets(metas, L), draws=draws)
    grads_whole = torch.autograd.grad(whole["loss"], list(pred.values()))
    halves = [slice(0, 2), slice(2, B)]  # unequal micro-batches
    targets = [build_targets(metas[h], L) for h in halves]
    counts = batch_statistics(targets, [draws[h] for h in halves])
    shares = [gtad_loss({k: v[h] for k, v in pred.items()}, t, draws=draws[h], counts=counts)
              for h, t in zip(halves, targets)]
    for key in whole:
        torch.testing.assert_close(sum(s[key] for s in shares), whole[key], rtol=1e-13, atol=0)
    grads_shares = torch.autograd.grad(sum(s["loss"] for s in shares), list(pred.values()))
    for a, b in zip(grads_shares, grads_whole):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-16)
    local = [gtad_loss({k: v[h] for k, v in pred.items()}, t, draws=draws[h]) for h, t in zip(halves, targets)]
    assert abs(float(sum(s["loss"].detach() for s in local) / 2 - whole["loss"].detach())) > 1e-6


def test_global_statistics_without_positives_stay_finite():
    L = 10
    metas = [meta(10.0), meta(12.0)]  # no annotations: no positives, no high-IoU cells
    pred = {k: v.double().requires_grad_(True) for k, v in random_pred(2, L, 3).items()}
    targets = [build_targets(metas[:1], L), build_targets(metas[1:], L)]
    draws = [torch.rand(1, L, L, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    counts = batch_statistics(targets, draws)
    assert counts["start_pos"] == counts["high"] == counts["kept"] == 0
    shares = [gtad_loss({k: v[i:i + 1] for k, v in pred.items()}, targets[i], draws=draws[i], counts=counts)
              for i in range(2)]
    total = sum(s["loss"] for s in shares)
    assert torch.isfinite(total) and all(s["reg"] == 0 for s in shares)
    total.backward()
    assert all(torch.isfinite(v.grad).all() for v in pred.values())


def test_draws_follow_the_global_position_not_the_process():
    # Rank r's micro-batch k holds the global positions (k·world + r)·B ..; its draws are those rows of the step's
    # draws for the whole global batch (generator shared by all processes), whichever rank holds it.
    from lofi.engine.distributed import DistInfo
    from lofi.engine.global_loss import GlobalBatchLoss
    from lofi.models.map_head import ProposalMapHead
    L, B, world, accum = 8, 2, 2, 3
    metas = random_metas(B * world * accum, 4)
    everything = torch.rand(B * world * accum, L, L, generator=torch.Generator().manual_seed(9))
    for rank in range(world):
        batches = [{"meta": metas[(k * world + rank) * B:(k * world + rank + 1) * B]} for k in range(accum)]
        GlobalBatchLoss(DistInfo(rank, world), accum, lambda b: L, ProposalMapHead()).prepare(batches, torch.Generator().manual_seed(9))
        for k, batch in enumerate(batches):
            first = (k * world + rank) * B
            assert torch.equal(batch["tal_loss"]["draws"], everything[first:first + B])
            assert batch["tal_loss"]["share"] == world * accum
