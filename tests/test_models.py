"""The timm model contract for every registered vision2d model (after timm's own tests/test_models.py)."""
import pytest
import safetensors.torch
import timm
import timm.optim
import torch

import vision2d  # noqa: F401  (registers the models)
from vision2d.models.mamba2d import checkpoint_filter_fn

ALL_MODELS = ["mamba2d_nano", "mamba2d_tiny", "mamba2d_small", "test_mamba2d"]
PAPER_PARAMS = {"mamba2d_nano": 7_178_496, "mamba2d_tiny": 26_523_136, "mamba2d_small": 50_273_636}
PAPER_DROP_PATH = {"mamba2d_nano": 0.0, "mamba2d_tiny": 0.175, "mamba2d_small": 0.4}


@pytest.fixture(scope="module")
def test_model():
    torch.manual_seed(0)
    return timm.create_model("test_mamba2d", num_classes=7).eval()


def test_every_model_is_registered():
    assert set(ALL_MODELS) <= set(timm.list_models(["*mamba2d*"]))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_cfg_and_meta_creation(name):
    model = timm.create_model(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    cfg = model.pretrained_cfg
    assert len(cfg["input_size"]) == 3 and cfg["input_size"][0] == 3
    assert 0 < cfg["crop_pct"] <= 1 and cfg["interpolation"] in ("bicubic", "bilinear")
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert cfg["num_classes"] == model.num_classes == 1000
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert model.get_classifier().out_features == cfg["num_classes"]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_parameter_counts_and_drop_path_match_paper(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert abs(sum(p.numel() for p in model.parameters()) - PAPER_PARAMS[name]) <= 0.02 * PAPER_PARAMS[name]
    rates = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0
             for s in model.stages for b in s.blocks]
    assert rates[-1] == pytest.approx(PAPER_DROP_PATH[name]) and rates[0] == 0.0


def test_construction_with_dtype():
    model = timm.create_model("test_mamba2d", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (45, 37), (33, 96), (3, 3)])
def test_forward_backward_any_size(size):
    model = timm.create_model("test_mamba2d", num_classes=7)
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    # k_norm.bias cancels in softmax, so it rightly gets a zero (not missing) gradient
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_forward_head_and_reset_classifier(test_model):
    x = torch.randn(2, 3, 40, 40)
    feats = test_model.forward_features(x)
    assert feats.shape == (2, test_model.num_features, 2, 2)
    pre = test_model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, test_model.head_hidden_size)
    torch.testing.assert_close(test_model.get_classifier()(pre), test_model(x))
    model = timm.create_model("test_mamba2d", num_classes=7).eval()
    model.load_state_dict(test_model.state_dict())
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pre)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3


def test_features_only_matches_feature_info_and_intermediates(test_model):
    features = timm.create_model("test_mamba2d", features_only=True, out_indices=(0, 1, 3)).eval()
    features.model.load_state_dict({k: v for k, v in test_model.state_dict().items() if not k.startswith("head.")})
    x = torch.randn(2, 3, 64, 48)
    outs = features(x)
    assert [o.shape[1] for o in outs] == features.feature_info.channels() == [16, 32, 64]
    assert features.feature_info.reduction() == [4, 8, 32]
    inter = test_model.forward_intermediates(x, indices=(0, 1, 3), intermediates_only=True)
    for a, b in zip(outs, inter):
        torch.testing.assert_close(a, b)
    final, all_inter = test_model.forward_intermediates(x)
    torch.testing.assert_close(final, test_model.forward_features(x))
    assert len(all_inter) == 4


def test_prune_intermediate_layers():
    model = timm.create_model("test_mamba2d").eval()
    x = torch.randn(1, 3, 48, 48)
    expected = model.forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    kept = model.prune_intermediate_layers(indices=(1,))
    assert kept == [1] and len(model.stages) == 2
    assert not any(n.startswith("head.") for n, _ in model.named_parameters()), "a pruned head keeps parameters"
    torch.testing.assert_close(model.forward_intermediates(x, indices=(1,), intermediates_only=True)[0], expected[0])
    features = timm.create_model("test_mamba2d", features_only=True, out_indices=(1,))
    sum(f.sum() for f in features(x)).backward()
    assert all(p.grad is not None for p in features.parameters()), "features_only holds parameters it never uses"


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model("test_mamba2d", num_classes=5)
    x = torch.randn(2, 3, 40, 40)
    model(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=lambda m: f"{n}: {m}")


def test_no_weight_decay_names_the_ssm_parameters(test_model):
    names = test_model.no_weight_decay()
    params = dict(test_model.named_parameters())
    assert names and names <= set(params)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"A_t_log", "A_l_log", "D"}
    optimizer = timm.optim.create_optimizer_v2(test_model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(params[n]) in no_decay for n in names)


def test_bad_input_errors(test_model):
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        test_model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        test_model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=">= 3 pixels"):
        test_model(torch.randn(1, 3, 2, 64))


def test_torch_compile_fullgraph(test_model):
    x = torch.randn(1, 3, 36, 44)
    compiled = torch.compile(test_model, fullgraph=True)
    torch.testing.assert_close(compiled(x), test_model(x), rtol=1e-4, atol=1e-4)


def test_safetensors_round_trip_through_timm_pretrained_path(test_model, tmp_path):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(test_model.state_dict(), str(path))
    loaded = timm.create_model("test_mamba2d", pretrained=True, num_classes=7,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=7)).eval()
    x = torch.randn(2, 3, 48, 40)
    torch.testing.assert_close(loaded(x), test_model(x), rtol=0, atol=0)


def test_mismatched_checkpoint_fails_with_key_report(test_model, tmp_path):
    state = test_model.state_dict()
    state["stages.0.blocks.0.token_mixer.x_proj.weight"] = torch.zeros(3, 3)
    del state["stages.1.norm.weight"]
    state["stages.9.extra"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(ValueError) as err:
        timm.create_model("test_mamba2d", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(err.value)
    assert "missing (1): stages.1.norm.weight" in message
    assert "unexpected (1): stages.9.extra" in message
    assert "mis-shaped (1): stages.0.blocks.0.token_mixer.x_proj.weight: checkpoint (3, 3)" in message


def test_checkpoint_of_another_variant_is_rejected():
    with torch.device("meta"):
        nano, tiny = timm.create_model("mamba2d_nano"), timm.create_model("mamba2d_tiny")
    with pytest.raises(ValueError, match="mis-shaped"):
        checkpoint_filter_fn(nano.state_dict(), tiny)


def test_bf16_autocast_forward_backward_is_finite():
    model = timm.create_model("test_mamba2d", num_classes=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 48, 40))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
