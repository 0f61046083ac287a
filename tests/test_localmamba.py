"""LocalMamba: parity with the official code (github hunto/LocalMamba @ 75e5d1f) from a fixture it generated, the
window scan orders, official parameter counts, checkpoint layouts and errors. The timm contract shared by all models
is in test_model_contract.py.

`tests/data/official_localmamba_parity.pt` holds a small official VSSM (five searched direction lists of the tiny
model, every direction choice) with perturbed random weights, its state dict, inputs, and the official logits and
stage outputs; for the non-square input also those of the official code with its vertical un-permute corrected
(`v_reverse_fixed`). `tests/data/README.md` says how it was made.
"""
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vision2d  # noqa: F401  (registers the models)
from test_vmamba import _convert_checkpoint_tool
from vision2d.models import localmamba
from vision2d.ops import direction_readout
from vision2d.ops.scan_orders import local_scan_orders
from parity_helpers import rel_err, save  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "official_localmamba_parity.pt"
OFFICIAL_COMMIT = "75e5d1f007c303509c77d179df38f7fa19c0d05c"
REL_TOL = 1e-4
OFFICIAL_PARAMS = {"localmamba_tiny": 25_527_160, "localmamba_small": 49_748_536}  # official local_vssm_tiny / small


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def official_state_dict(fixture) -> dict:
    return {k: v.float() for k, v in fixture["state_dict"].items()}


def create(path: str, **kwargs):
    return timm.create_model("test_localmamba", pretrained=True, pretrained_cfg_overlay=dict(file=path),
                             **kwargs).eval()


def run(model, x):
    """(logits, stage outputs) from one pass."""
    with torch.no_grad():
        features, stages = model.forward_intermediates(x)
        return model.forward_head(features), stages


def test_fixture_matches_the_test_model(fixture):
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024
    assert fixture["official_commit"] == OFFICIAL_COMMIT
    config = fixture["official_config"]
    model = timm.create_model("test_localmamba")
    assert [list(b.mixer.directions) for s in model.stages for b in s.blocks] == config["directions"]
    assert tuple(config["depths"]) == (1, 1, 2, 1) and tuple(config["dims"]) == (8, 16, 32, 64)
    assert sum(p.numel() for p in model.parameters()) == fixture["test_param_count"]
    assert fixture["official_param_counts"] == {"tiny": OFFICIAL_PARAMS["localmamba_tiny"],
                                                "small": OFFICIAL_PARAMS["localmamba_small"]}


def test_official_parity(fixture, tmp_path):
    """224x224: the official outputs. 104x152 (windows pad at every stage): the official code with its vertical
    un-permute corrected (`v_reverse_fixed`); the uncorrected official outputs differ there, as documented."""
    model = create(save({"state_dict": official_state_dict(fixture)}, tmp_path / "official.ckpt"))
    for case in fixture["cases"]:
        x = case["input"].float()
        logits, stages = run(model, x)
        expected = case.get("v_reverse_fixed", case)
        size = tuple(x.shape)
        err = rel_err(logits, expected["logits"])
        assert err < REL_TOL, f"logits differ from the official ones for input {size}: rel err {err:.3g}"
        assert len(stages) == len(expected["stages"])
        for i, (ours, official) in enumerate(zip(stages, expected["stages"])):
            assert ours.shape == official.shape, f"stage {i}: {tuple(ours.shape)} vs {tuple(official.shape)}"
            err = rel_err(ours, official)
            assert err < REL_TOL, f"stage {i} differs from the official one for input {size}: rel err {err:.3g}"
        if "v_reverse_fixed" in case:  # the official square-only un-permute puts "v" outputs at wrong pixels
            assert rel_err(logits, case["logits"]) > 0.1


def test_fixture_discriminates_window_padding(fixture, tmp_path, monkeypatch):
    """Moving the window padding's scan steps to the end of each sequence (no decay through them) must break parity
    on the padded 104x152 case, so the parity test has teeth for the padding rule."""
    model = create(save(official_state_dict(fixture), tmp_path / "raw.pth"))
    scan_orders = localmamba.local_scan_orders

    def padding_last(H, W, directions, device=None):
        orders = scan_orders(H, W, directions, device=device)
        return torch.stack([torch.cat([o[o < H * W], o[o >= H * W]]) for o in orders])

    monkeypatch.setattr(localmamba, "local_scan_orders", padding_last)
    case = fixture["cases"][1]
    logits, _ = run(model, case["input"].float())
    assert rel_err(logits, case["v_reverse_fixed"]["logits"]) > 1e-3


def test_local_scan_orders():
    orders = local_scan_orders(3, 3, ["h", "v_flip", "w2", "w2_flip", "w7"])
    # 3x3 padded to 4x4 by w2 (7 pad steps), to 7x7 by w7 (40): positions 9..48 are padding
    assert orders.shape == (5, 49)
    for row in orders:
        assert torch.equal(row.sort().values, torch.arange(49))
    assert orders[0, :9].tolist() == list(range(9))
    assert orders[1, :9].tolist() == [8, 5, 2, 7, 4, 1, 6, 3, 0]
    # windows row-major, pixels row-major inside; padded pixels (>= 9) are scan steps in place
    assert orders[2, :16].tolist() == [0, 1, 3, 4, 2, 9, 5, 10, 6, 7, 11, 12, 8, 13, 14, 15]
    assert orders[3, :16].flip(0)[orders[3, :16].flip(0) < 9].tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 8]
    assert orders[4, :7].tolist() == [0, 1, 2, 9, 10, 11, 12]
    assert torch.equal(local_scan_orders(4, 6, ["w2"])[0], torch.arange(24).view(2, 2, 3, 2).permute(0, 2, 1, 3)
                       .reshape(-1))
    with pytest.raises(ValueError, match="unknown direction 'd'"):
        local_scan_orders(3, 3, ["d"])


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_and_directions_equal_official(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    directions = [b.mixer.directions for s in model.stages for b in s.blocks]
    assert directions == list(localmamba.TINY_DIRECTIONS if name.endswith("tiny") else localmamba.SMALL_DIRECTIONS)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for s in model.stages
             for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("layout", ["raw", "released", "training", "module_prefix"])
def test_official_layouts_load_the_same_weights(fixture, tmp_path, layout):
    sd = official_state_dict(fixture)
    expected = create(save(sd, tmp_path / "raw.pth")).state_dict()
    obj = {
        "raw": sd,
        "released": {"state_dict": {f"module.module.{k}": v for k, v in sd.items()}},  # tools/convert_ckpt.py output
        "training": {"epoch": 299, "model": sd, "ema_model": None, "optimizer": {"state": {}, "param_groups": []}},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
    }[layout]
    loaded = create(save(obj, tmp_path / f"{layout}.pth")).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), f"{layout}: {key} differs"


def test_official_detection_checkpoint_loads_with_its_output_norms(fixture, tmp_path):
    """The backbone part of an official Mask R-CNN checkpoint (Backbone_LocalVSSM: outnorm{i}, no classifier) loads
    into the model with feature_norms; its features are the official stage outputs through those norms."""
    generator = torch.Generator().manual_seed(0)
    dims = fixture["official_config"]["dims"]
    backbone = {f"backbone.{k}": v for k, v in official_state_dict(fixture).items() if not k.startswith("classifier.")}
    norms = {}
    for i, dim in enumerate(dims):
        norms[i] = (1 + 0.2 * torch.randn(dim, generator=generator), 0.1 * torch.randn(dim, generator=generator))
        backbone[f"backbone.outnorm{i}.weight"], backbone[f"backbone.outnorm{i}.bias"] = norms[i]
    checkpoint = {"meta": {"epoch": 12}, "state_dict": {**backbone, "neck.lateral_convs.0.conv.weight": torch.zeros(1),
                                                        "roi_head.bbox_head.fc_cls.weight": torch.zeros(1)}}
    model = timm.create_model("test_localmamba", feature_norms=True).eval()
    state_dict = localmamba.checkpoint_filter_fn(checkpoint, model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert not unexpected and all(k.startswith(("norm.", "head.")) for k in missing)
    case = fixture["cases"][0]
    with torch.no_grad():
        features = model.forward_intermediates(case["input"].float(), intermediates_only=True)
    for i, (ours, official) in enumerate(zip(features, case["stages"])):
        expected = F.layer_norm(official.permute(0, 2, 3, 1), (dims[i],), *norms[i], eps=1e-5).permute(0, 3, 1, 2)
        assert rel_err(ours, expected) < REL_TOL, f"feature {i}"


def test_checkpoint_of_another_variant_or_the_supernet_is_rejected(fixture):
    with torch.device("meta"):
        tiny, small = timm.create_model("localmamba_tiny"), timm.create_model("localmamba_small")
    with pytest.raises(ValueError, match=r"missing \(342\): stages\.2\.blocks\.10\."):
        localmamba.checkpoint_filter_fn({"state_dict": tiny.state_dict()}, small)
    sd = official_state_dict(fixture)
    sd["layers.0.blocks.0.op.multi_scan.weights"] = torch.zeros(8)  # the search supernet's direction weights
    with pytest.raises(ValueError, match=r"unexpected \(1\): stages\.0\.blocks\.0\.mixer\.multi_scan\.weights"):
        localmamba.checkpoint_filter_fn(sd, timm.create_model("test_localmamba"))


def official_direction_attention(attn, y):
    """The official BiAttn on each direction's (B, L, E) output, summed over directions: the math our fused
    `DirectionAttention` must equal."""
    out = 0
    for k in range(y.shape[2]):
        t = y[:, :, k]
        pooled = F.layer_norm(t, t.shape[-1:], attn.norm.weight, attn.norm.bias, attn.norm.eps).mean(1, keepdim=True)
        out = out + t * torch.sigmoid(attn.channel_select(F.gelu(attn.global_reduce(pooled))))
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_direction_attention_equals_the_official_formula(dtype, tol):
    """Forward and gradients (input and every parameter) of the gate-and-sum against the official per-direction
    LayerNorm -> pixel mean -> gate -> product, then sum; and the mixer's inference path (`inference_gate`, then
    `direction_readout` with out_norm and the SiLU gate) against the official formula; channel means far from zero
    test the statistics of the inference path."""
    torch.manual_seed(0)
    attn = localmamba.DirectionAttention(24).to(dtype)
    out_norm = torch.nn.LayerNorm(24).to(dtype)
    with torch.no_grad():
        for p in [*attn.parameters(), *out_norm.parameters()]:
            p.add_(torch.randn_like(p) * 0.5)
    y = (torch.randn(3, 37, 4, 24, dtype=dtype) * 2 + 3 * torch.randn(3, 37, 4, 1, dtype=dtype)).requires_grad_()
    z = torch.randn(3, 37, 24, dtype=dtype)
    ours, official = attn(y), official_direction_attention(attn, y)
    with torch.no_grad():
        inference = direction_readout(y, attn.inference_gate(y), z, out_norm.weight, out_norm.bias, out_norm.eps)
        expected = out_norm(official) * F.silu(z)
    assert ours.shape == (3, 37, 24) and inference.shape == (3, 37, 24)
    assert rel_err(ours, official) < tol and rel_err(inference, expected) < tol
    inputs = [y, *attn.parameters()]
    grad_out = torch.randn_like(ours)
    for g_ours, g_official in zip(torch.autograd.grad(ours, inputs, grad_out),
                                  torch.autograd.grad(official, inputs, grad_out)):
        assert rel_err(g_ours, g_official) < tol


@pytest.mark.parametrize("name", ["test_localmamba", "test_msvmamba", "test_vmamba"])
def test_eval_scan_constants_follow_every_change(name):
    """Without autograd SS2D's A = -exp(A_logs), D and delta_bias are kept between calls (`vision2d.layers.derived`);
    in-place updates and load_state_dict after an eval call give what a fresh model with the same weights gives."""
    x = torch.randn(1, 3, 40, 48)
    model = timm.create_model(name).eval()
    with torch.inference_mode():
        before = model(x)
    mixer = model.stages[1].blocks[0].mixer
    with torch.no_grad():
        mixer.A_logs.sub_(0.5)
        mixer.Ds.mul_(3.0)
        mixer.dt_projs_bias.add_(1.0)
        changed = model(x)
    fresh = timm.create_model(name).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(changed, fresh(x), rtol=0, atol=0)
    assert not torch.equal(changed, before)


def test_bfloat16_autocast_inference_is_close_to_float32():
    """Under CPU autocast the direction attention takes its plain path (no bf16 statistics' products)."""
    torch.manual_seed(0)
    model = timm.create_model("test_localmamba").eval()
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
    assert rel_err(logits.float(), expected) < 0.05


@pytest.mark.parametrize("size", [(4, 4), (61, 37)])
def test_any_size_forward_backward(size):
    model = timm.create_model("test_localmamba", num_classes=5)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_input_and_arguments_errors():
    model = timm.create_model("test_localmamba")
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"H and W >= 4 pixels .* got \(3, 32\)"):
        model(torch.randn(1, 3, 3, 32))
    with pytest.raises(ValueError, match="one direction list per block: 5"):
        timm.create_model("test_localmamba", directions=localmamba.TINY_DIRECTIONS[:4])
    with pytest.raises(ValueError, match="4 directions out of"):
        timm.create_model("test_localmamba", directions=[("h", "v", "w3", "h_flip")] * 5)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_train_configs_hold_the_official_recipe(size, tmp_path):
    from vision2d.train.config import parse_args

    config = Path(__file__).parents[1] / "configs" / "train" / f"localmamba_{size}.yaml"
    args = parse_args(["--config", str(config), "--data-dir", str(tmp_path)])
    assert (args.model, args.drop_path, args.lr_base, args.lr_base_size, args.weight_decay, args.clip_grad,
            args.model_ema, args.mixup, args.epochs, args.warmup_epochs) == \
        (f"localmamba_{size}", 0.1, 1e-3, 1024, 0.04, None, False, 0.2, 300, 20)


def test_convert_checkpoint_infers_localmamba_from_the_released_layout(fixture, tmp_path, capsys):
    tool = _convert_checkpoint_tool()
    path = save({"state_dict": official_state_dict(fixture)}, tmp_path / "local_vssm_test.ckpt")
    out = tmp_path / "test_localmamba.safetensors"
    assert tool.main([path, str(out)]) == 0, capsys.readouterr().err
    assert "test_localmamba, 1000 classes" in capsys.readouterr().out
    converted = timm.create_model("test_localmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    case = fixture["cases"][0]
    logits, _ = run(converted.eval(), case["input"].float())
    assert rel_err(logits, case["logits"]) < REL_TOL
