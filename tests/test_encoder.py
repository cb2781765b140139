"""Encoders: shapes, TSM shift semantics, snippet independence, checkpointing, gradients, weight files."""
import pytest
import torch

from crafted import crafted_pt
from lofi.engine.checkpoint import UnsafeFileError
from lofi.models import ClipClassifier, GTAD, build_encoder, convert_mmaction2_tsm, gtad_loss, build_targets
from lofi.models.encoder import temporal_shift
from lofi.models.weights import load_encoder_weights


def frames(B, L, T, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, L, T, 3, size, size), dtype=torch.uint8, generator=g)


def test_temporal_shift_semantics():
    n, t, c = 3, 4, 16
    x = torch.arange(n * t * c, dtype=torch.float32).view(n * t, c, 1, 1) + 1
    out = temporal_shift(x, t, fold_div=8).view(n, t, c)
    x = x.view(n, t, c)
    fold = c // 8
    assert torch.equal(out[:, :-1, :fold], x[:, 1:, :fold])  # next frame
    assert torch.equal(out[:, 1:, fold:2 * fold], x[:, :-1, fold:2 * fold])  # previous frame
    assert torch.equal(out[:, :, 2 * fold:], x[:, :, 2 * fold:])
    # zero padding at each clip's ends: nothing crosses a clip (snippet) boundary
    assert (out[:, -1, :fold] == 0).all() and (out[:, 0, fold:2 * fold] == 0).all()
    with pytest.raises(ValueError, match="multiple"):
        temporal_shift(torch.zeros(5, 16, 1, 1), 4)


def test_shift_in_every_residual_branch():
    enc = build_encoder("tsm_r18")
    blocks = [b for layer in (enc.backbone.layer1, enc.backbone.layer2, enc.backbone.layer3, enc.backbone.layer4)
              for b in layer]
    assert len(enc.shifts) == len(blocks) == 8
    assert all(b.conv1 is s for b, s in zip(blocks, enc.shifts))
    assert not any(type(m).__name__ == "ShiftConv2d" for b in blocks if b.downsample for m in b.downsample)


@pytest.mark.parametrize("L", [25, 50, 100])
def test_tsm_shapes(L):
    enc = build_encoder("tsm_r18").eval()
    with torch.no_grad():
        out = enc(frames(1, L, 2, size=16))
    assert out.shape == (1, 512, L) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_snippets_are_independent_and_checkpointing_matches():
    torch.manual_seed(0)
    enc = build_encoder("tsm_r18", frozen_bn=True)
    enc.train()
    assert not any(m.training for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = frames(2, 3, 4, size=16)
    y = x.clone()
    y[0, 1] = 255 - y[0, 1]  # change one snippet only
    with torch.no_grad():
        a, b = enc(x), enc(y)
    changed = (a - b).abs().amax(1)  # (B, L)
    assert changed[0, 1] > 0
    assert changed[0, [0, 2]].max() == 0 and changed[1].max() == 0

    ck = build_encoder("tsm_r18", frozen_bn=True, checkpoint_chunks=4)
    ck.load_state_dict(enc.state_dict())
    ck.train()
    outs, grads = [], []
    for model in (enc, ck):
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(model.backbone.layer1[0].conv1.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_checkpointing_updates_bn_statistics_once():
    torch.manual_seed(0)
    plain = build_encoder("tsm_r18").train()
    ck = build_encoder("tsm_r18", checkpoint_chunks=3).train()
    ck.load_state_dict(plain.state_dict())
    x = frames(1, 3, 2, size=16)
    ck(x).sum().backward()  # BN sees one chunk (here one snippet) at a time ...
    for chunk in x.split(1, dim=1):  # ... as separate forwards would; the recomputation adds no update
        plain(chunk)
    for (name, a), b in zip(plain.state_dict().items(), ck.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_channels_last_matches():
    enc = build_encoder("tsm_r18").eval()
    cl = build_encoder("tsm_r18", channels_last=True).eval()
    cl.load_state_dict(enc.state_dict())
    x = frames(1, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), cl(x), rtol=1e-4, atol=1e-4)


def test_r2plus1d_and_clip_classifier():
    enc = build_encoder("r2plus1d_18")
    model = ClipClassifier(enc, num_classes=5)
    logits = model(frames(2, 2, 4, size=16))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert enc.backbone.stem[0].weight.grad.abs().sum() > 0


def test_gradients_reach_encoder_end_to_end():
    torch.manual_seed(0)
    L = 8
    enc = build_encoder("tsm_r18", checkpoint_chunks=2)
    head = GTAD(enc.out_dim, hidden_1d=64, hidden_2d=32, hidden_3d=64, groups=8)
    meta = [{"id": "v", "duration": 8.0, "annotations": [{"segment": [1.0, 5.0], "label": "a"}]}]
    losses = gtad_loss(head(enc(frames(1, L, 2))), build_targets(meta, L), generator=torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    for p in (enc.backbone.conv1.weight, enc.backbone.layer1[0].conv1.weight, enc.backbone.layer4[1].conv2.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_weight_files(tmp_path):
    enc = build_encoder("tsm_r18")
    ref = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in enc.state_dict().items()}
    tv = {k[len("backbone."):]: v for k, v in ref.items()}
    tv.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})  # torchvision's classifier: ignored
    torch.save(tv, tmp_path / "tv.pth")
    torch.save({"model": {**{"encoder." + k: v for k, v in ref.items()}, "head.fc.weight": torch.zeros(3, 512)},
                "epoch": 3}, tmp_path / "lofi.pth")
    for name, fmt in (("tv.pth", "torchvision"), ("lofi.pth", "lofi")):
        fresh = build_encoder("tsm_r18")
        assert load_encoder_weights(fresh, tmp_path / name) == fmt
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ref.items())

    del tv["layer1.0.conv1.weight"]
    tv["layer9.extra"] = torch.zeros(1)
    torch.save(tv, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"(?s)missing keys \(1\).*backbone.layer1.0.conv1.weight"
                                         r".*unexpected keys \(1\).*backbone.layer9.extra"):
        build_encoder("tsm_r18", weights=str(tmp_path / "bad.pth"))
    torch.save(tv, tmp_path / "r2.pth")
    with pytest.raises(ValueError, match="missing keys"):
        build_encoder("r2plus1d_18", weights=str(tmp_path / "r2.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_encoder("tsm_r18", weights=str(tmp_path / "nope.pth"))


def test_weight_file_that_needs_unpickling_is_refused(tmp_path):
    """model.weights is read with weights_only=True: a crafted file never runs its code; the error names it."""
    marker = tmp_path / "ran"
    path = crafted_pt(tmp_path / "evil.pth", marker)
    with pytest.raises(UnsafeFileError, match=rf"{path} cannot be read safely"):
        build_encoder("tsm_r18", weights=str(path))
    assert not marker.exists()


def to_mmaction2(tv_state):
    """A hand-written mmaction2 ResNetTSM naming of a torchvision ResNet state dict (the converter's inverse)."""
    out = {}
    for k, v in tv_state.items():
        parts = k.split(".")
        if parts[0] in ("conv1", "bn1"):
            new = ["conv1", "conv" if parts[0] == "conv1" else "bn"] + parts[1:]
        elif parts[0].startswith("layer") and parts[2] == "downsample":
            new = parts[:3] + [{"0": "conv", "1": "bn"}[parts[3]]] + parts[4:]
        elif parts[0].startswith("layer"):
            kind, num = parts[2][:-1], parts[2][-1]
            new = parts[:2] + [f"conv{num}", kind] + (["net"] if (kind, num) == ("conv", "1") else []) + parts[3:]
        else:
            continue
        out["backbone." + ".".join(new)] = v
    return out


def test_mmaction2_conversion(tmp_path):
    assert convert_mmaction2_tsm({"backbone.layer2.0.conv1.conv.net.weight": 1, "backbone.conv1.bn.running_mean": 2,
                                  "backbone.layer4.0.downsample.conv.weight": 3, "backbone.layer3.1.conv3.bn.bias": 4,
                                  "cls_head.fc_cls.weight": 5}) == (
        {"backbone.layer2.0.conv1.weight": 1, "backbone.bn1.running_mean": 2,
         "backbone.layer4.0.downsample.0.weight": 3, "backbone.layer3.1.bn3.bias": 4}, ["cls_head.fc_cls.weight"])
    enc = build_encoder("tsm_r50")
    tv = {k[len("backbone."):]: torch.randn_like(v) if v.is_floating_point() else v
          for k, v in enc.state_dict().items()}
    mm = to_mmaction2(tv)
    mm["cls_head.fc_cls.weight"] = torch.zeros(400, 2048)
    torch.save({"meta": {"epoch": 50}, "state_dict": mm}, tmp_path / "tsm_r50_mmaction2.pth")
    fresh = build_encoder("tsm_r50", weights=str(tmp_path / "tsm_r50_mmaction2.pth"))
    assert all(torch.equal(fresh.backbone.state_dict()[k], v) for k, v in tv.items())


@pytest.mark.cuda
def test_cuda_bf16_autocast_and_channels_last():
    torch.manual_seed(0)
    enc = build_encoder("tsm_r18", channels_last=True).eval()
    x = frames(1, 3, 4, size=64)
    with torch.no_grad():
        ref = enc(x)
        out = enc.cuda()(x.cuda())
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out.cpu(), ref, rtol=0.1, atol=0.05)  # bf16 autocast on the GPU
