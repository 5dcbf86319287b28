"""The temporal heads as modules: every registered head builds and trains a step; causal and centred
TCN receptive fields; padding is invisible (what makes padded training windows and overlapping
inference windows agree)."""

import pytest
import torch

import pipeline.models.temporal as temporal
from pipeline.configs.heads import POS_ENCODINGS
from pipeline.models import build_model, list_models

SMALL = dict(tcn_channels=(24, 16, 8), d_model=16, num_layers=2, num_heads=2, ff_dim=32,
             head_hidden=8)


def small(name: str, in_dim: int = 12, out_dim: int = 3, **sizes) -> temporal.TemporalModel:
    torch.manual_seed(0)
    return build_model(name, in_dim=in_dim, out_dim=out_dim, **{**SMALL, **sizes})


@pytest.mark.parametrize("name", list_models("temporal_"))
def test_every_head_builds_runs_forward_and_backward(name):
    model = small(name, dropout=0.3)
    x = torch.randn(2, 40, 12)  # (B, T, D)
    keep = torch.ones(2, 40, dtype=torch.bool)
    keep[1, 25:] = False
    out = model(x, keep)
    assert out.shape == (2, 40, 3)
    assert not torch.isnan(out).any()
    out[keep].pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_paper_sizes_by_default():
    model = build_model("temporal_tcn_transformer", in_dim=768, out_dim=2)
    widths = [b.conv2.conv.out_channels for b in model.tcn.blocks]
    assert widths == [768, 256, 128]
    assert [b.conv1.conv.dilation[0] for b in model.tcn.blocks] == [1, 2, 4]
    assert model.tcn.blocks[0].conv1.conv.kernel_size == (5,)
    assert len(model.transformer.encoder.layers) == 8
    layer = model.transformer.encoder.layers[0]
    assert (layer.self_attn.num_heads == 4 and layer.linear1.out_features == 512
            and not layer.norm_first)
    assert ((model.head.fc1.in_features, model.head.fc1.out_features, model.head.fc2.out_features)
            == (512, 256, 2))
    # the non-deprecated weight norm: a parametrization, not weight_g / weight_v attributes
    assert hasattr(model.tcn.blocks[0].conv1.conv, "parametrizations")


def test_causal_tcn_ignores_the_future():
    net = temporal.TemporalConvNet(4, (8, 8, 8), kernel_size=5, causal=True, dropout=0.0).eval()
    x = torch.randn(1, 4, 60)  # (B, C, T)
    t = 30
    y = x.clone()
    y[:, :, t + 1 :] = torch.randn(1, 4, 60 - t - 1) * 10
    with torch.no_grad():
        a, b = net(x, None), net(y, None)
    assert torch.equal(a[:, :, : t + 1], b[:, :, : t + 1])
    assert not torch.allclose(a[:, :, t + 1 :], b[:, :, t + 1 :])


def test_centred_tcn_sees_a_bounded_future():
    net = temporal.TemporalConvNet(4, (8, 8, 8), kernel_size=5, causal=False, dropout=0.0).eval()
    reach = (net.receptive_field - 1) // 2  # frames seen on each side
    x = torch.randn(1, 4, 120)
    t = 40
    near, far = x.clone(), x.clone()
    near[:, :, t + 1] += 5.0
    far[:, :, t + reach + 1 :] += 5.0
    with torch.no_grad():
        base = net(x, None)[:, :, t]
        assert not torch.allclose(net(near, None)[:, :, t], base)
        assert torch.equal(net(far, None)[:, :, t], base)


@pytest.mark.parametrize("name", list_models("temporal_"))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_padding_is_invisible(name, causal, training):
    """A video padded to a longer window gives the same outputs on its frames as the video alone
    (eval mode, and train mode without dropout: BatchNorm statistics skip the padding)."""
    model = small(name, causal=causal, dropout=0.0, pos_encoding="sinusoidal").train(training)
    x = torch.randn(1, 37, 12)
    padded = torch.cat([x, torch.zeros(1, 23, 12)], dim=1)  # (1, 60, D)
    keep = torch.arange(60)[None, :] < 37
    with torch.no_grad():
        alone = model(x)
        inside = model(padded, keep)[:, :37]
    torch.testing.assert_close(inside, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", POS_ENCODINGS)
def test_position_encodings(kind):
    model = small("temporal_transformer", pos_encoding=kind, max_len=50)
    out = model(torch.randn(2, 50, 12))
    assert out.shape == (2, 50, 3) and torch.isfinite(out).all()
    if kind == "learned":
        with pytest.raises(ValueError, match="learned positional table"):
            model(torch.randn(1, 51, 12))


def test_head_config_refuses_bad_sizes():
    with pytest.raises(ValueError, match="pos_encoding 'rotary' is not one of"):
        temporal.HeadConfig(pos_encoding="rotary")
    with pytest.raises(ValueError, match="divisible"):
        temporal.HeadConfig(d_model=30, num_heads=4)


def test_input_standardisation_is_part_of_the_head():
    import numpy as np

    from pipeline.heads.train import feature_stats

    rng = np.random.default_rng(0)
    feats = rng.normal(3.0, 2.0, (1000, 6)).astype(np.float16)
    rows = rng.random(1000) < 0.7
    mean, std = feature_stats(feats, rows, chunk=64)
    chosen = feats[rows].astype(np.float64)
    np.testing.assert_allclose(mean, chosen.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, chosen.std(0), rtol=1e-4)

    torch.manual_seed(0)
    head = build_model("temporal_tcn", in_dim=6, out_dim=2, tcn_channels=(8, 4), dropout=0.0).eval()
    x = torch.randn(2, 20, 6) * 2 + 3
    plain = head((x - torch.from_numpy(mean)) / torch.from_numpy(std))
    head.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))
    torch.testing.assert_close(head(x), plain)
    assert "input_mean" in head.state_dict()  # saved with the weights, used again at inference
