"""What a timm user may rely on, for every vision2d family (their `test_*` variants, found through the registry):
timm's pretrained conventions (another in_chans adapts the first conv, another num_classes gets a new head) and
gradient checkpointing that recomputes each block once."""
from collections import Counter

import pytest
import safetensors.torch
import timm
import torch
from timm.models import adapt_input_conv

import vision2d

TEST_MODELS = vision2d.list_models("test_*")


def _input(model, batch=2, in_chans=None):
    _, H, W = model.pretrained_cfg["input_size"]
    return torch.randn(batch, in_chans or model.in_chans, min(H, 64), min(W, 64))


@pytest.fixture(scope="module", params=TEST_MODELS)
def saved(request, tmp_path_factory):
    """(model name, its 3-channel 1000-class weights, a weight file of them)."""
    torch.manual_seed(0)
    state = timm.create_model(request.param).state_dict()
    path = tmp_path_factory.mktemp("weights") / f"{request.param}.safetensors"
    safetensors.torch.save_file(state, str(path))
    return request.param, state, path


@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_adapts_the_first_conv_and_replaces_the_head(saved, in_chans):
    name, state, path = saved
    model = timm.create_model(name, pretrained=True, in_chans=in_chans, num_classes=5,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    cfg = model.pretrained_cfg
    first_conv = cfg["first_conv"] + ".weight"
    classifier = model.get_classifier()
    loaded = model.state_dict()
    torch.testing.assert_close(loaded[first_conv], adapt_input_conv(in_chans, state[first_conv]))
    assert classifier.out_features == 5 and model.num_classes == 5
    kept = [k for k in state if k != first_conv and not k.startswith(cfg["classifier"] + ".")]
    assert kept and all(torch.equal(loaded[k], state[k]) for k in kept)
    with torch.no_grad():
        assert model(_input(model, in_chans=in_chans)).shape == (2, 5)


def test_pretrained_keeps_the_head_of_a_file_with_as_many_classes(saved, tmp_path):
    name, _, _ = saved
    torch.manual_seed(1)
    state = timm.create_model(name, num_classes=10).state_dict()
    path = tmp_path / "ten_classes.safetensors"
    safetensors.torch.save_file(state, str(path))
    # the file's class count decides, not the pretrained cfg's 1000: no num_classes in the overlay needed
    model = timm.create_model(name, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    model = timm.create_model(name, pretrained=True, num_classes=3, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.get_classifier().out_features == 3


def test_pretrained_from_a_headless_file(saved, tmp_path):
    name, _, _ = saved
    backbone = timm.create_model(name, num_classes=0)
    path = tmp_path / "headless.safetensors"
    safetensors.torch.save_file(backbone.state_dict(), str(path))
    overlay = dict(file=str(path))
    model = timm.create_model(name, pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay)
    assert model.get_classifier().out_features == 7
    features = timm.create_model(name, pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    assert len(features(_input(model, batch=1))) == len(features.feature_info)


def test_pretrained_file_of_another_model_still_fails(saved, tmp_path):
    name, state, _ = saved
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    inner = [k for k in state if not k.startswith((cfg["first_conv"] + ".", cfg["classifier"] + "."))]
    broken = {k: v for k, v in state.items() if k != inner[len(inner) // 2]}
    path = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(broken, str(path))
    with pytest.raises(ValueError, match="missing"):
        timm.create_model(name, pretrained=True, in_chans=1, num_classes=5, pretrained_cfg_overlay=dict(file=str(path)))


@pytest.mark.parametrize("name", TEST_MODELS)
def test_grad_checkpointing_runs_each_block_once_more(name):
    """set_grad_checkpointing checkpoints the blocks (or the stages), never both: each module runs at most twice
    in a forward and backward (once, plus once recomputed)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5).train()
    model.set_grad_checkpointing(True)
    calls = Counter()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: calls.update([module]))
    try:
        model(_input(model)).sum().backward()
    finally:
        handle.remove()
    recomputed = [module for module, count in calls.items() if count == 2]
    assert recomputed, "set_grad_checkpointing(True) recomputes nothing"
    most = max(calls.values())
    assert most <= 2, f"{type(max(calls, key=calls.get)).__name__} ran {most} times"
