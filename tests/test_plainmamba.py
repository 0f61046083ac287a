"""PlainMamba: the zig-zag scan orders, parity with the official code (github ChenhongyiYang/PlainMamba @ 0975a1d)
from a fixture it generated, official parameter counts, checkpoint layouts (released mmcv runner files with EMA
buffers, segmentation and detection checkpoints), the converter, errors, and the OpenMMLab backbones and configs. The
timm contract shared by all models is in test_model_contract.py and the timm suite.

`tests/data/official_plainmamba_parity.pt` holds the official `test_plainmamba` architecture with perturbed random
weights, its official state dict, inputs (224x224 and a non-square size), and the official logits and per-layer
outputs (before the final norm); `tests/data/README.md` says how it was made.
"""
import importlib.util
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vision2d  # noqa: F401  (registers the models)
from vision2d.models import plainmamba
from vision2d.ops.scan_orders import MOVE_DOWN, MOVE_LEFT, MOVE_RIGHT, MOVE_START, MOVE_UP, scan_moves, \
    zigzag_scan_orders
from parity_helpers import rel_err, save  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "official_plainmamba_parity.pt"
OFFICIAL_COMMIT = "0975a1d0d8bca50e7b85cf15e53de2a383ae12a0"
REL_TOL = 1e-4
# official parameter counts (the official PlainMamba classes of arch L1/L2/L3): backbone, and with the 1000-class head
OFFICIAL_PARAMS = {"plainmamba_l1": (7_358_656, 7_551_656), "plainmamba_l2": (25_760_832, 26_145_832),
                   "plainmamba_l3": (50_507_456, 50_956_456)}
OFFICIAL_DROP_PATH = {"plainmamba_l1": 0.2, "plainmamba_l2": 0.2, "plainmamba_l3": 0.4}


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def create(path: str, name: str = "test_plainmamba", **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs).eval()


def runner_checkpoint(state_dict: dict) -> dict:
    """The layout of the released files: an mmcv 1.x runner checkpoint (meta of plain data, optimizer state)."""
    return {"meta": {"epoch": 300, "iter": 375300, "mmcls_version": "0.25.0", "CLASSES": ["tench", "goldfish"],
                     "config": "model = dict(type='ImageClassifier')", "hook_msgs": {"last_ckpt": "epoch_300.pth"}},
            "state_dict": state_dict,
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                          "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "params": [0]}]}}


def ema_buffers(state_dict: dict) -> dict:
    """The EMACheckpointHook's buffers, one per parameter (here: the live weights, zeroed so a wrong pick shows)."""
    return {"ema_" + k.replace(".", "_"): torch.zeros_like(v) for k, v in state_dict.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def final_norm(stage: torch.Tensor, state_dict: dict, prefix: str = "backbone.ln1.") -> torch.Tensor:
    """An official NCHW layer output through the official LayerNorm(eps 1e-6) `prefix` (ln1 or norm_layer{i})."""
    x = F.layer_norm(stage.permute(0, 2, 3, 1), stage.shape[1:2], state_dict[prefix + "weight"],
                     state_dict[prefix + "bias"], eps=1e-6)
    return x.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# scan orders


def snake_walk(H: int, W: int, by_rows: bool) -> list:
    """The zig-zag path from the top-left corner, written as a walk: along rows (columns), turning at the border."""
    path, outer, inner = [], (H if by_rows else W), (W if by_rows else H)
    for a in range(outer):
        line = range(inner) if a % 2 == 0 else reversed(range(inner))
        path += [a * W + b if by_rows else b * W + a for b in line]
    return path


@pytest.mark.parametrize("H, W", [(1, 1), (1, 5), (5, 1), (2, 2), (3, 4), (4, 3), (7, 11), (14, 14)])
def test_zigzag_orders_are_the_official_snakes(H, W):
    orders = zigzag_scan_orders(H, W)
    rows, columns = snake_walk(H, W, True), snake_walk(H, W, False)
    assert orders.tolist() == [rows, rows[::-1], columns, columns[::-1]]
    # the official start corners of the reversed snakes: bottom-right when the row (column) count is odd
    assert divmod(orders[1, 0].item(), W) == ((H - 1, W - 1) if H % 2 else (H - 1, 0))
    assert divmod(orders[3, 0].item(), W) == ((H - 1, W - 1) if W % 2 else (0, W - 1))
    moves = scan_moves(orders, H, W)
    assert (moves[:, 0] == MOVE_START).all()
    between_rows = {MOVE_DOWN} if H > 1 else set()
    assert set(moves[0, 1:].tolist()) <= {MOVE_RIGHT, MOVE_LEFT, MOVE_DOWN}
    assert set(moves[1, 1:].tolist()) <= {MOVE_RIGHT, MOVE_LEFT, MOVE_UP}
    assert set(moves[2, 1:].tolist()) <= {MOVE_DOWN, MOVE_UP, MOVE_RIGHT}
    assert set(moves[3, 1:].tolist()) <= {MOVE_DOWN, MOVE_UP, MOVE_LEFT}
    assert (moves[0] == MOVE_DOWN).sum() == H - 1 and between_rows <= set(moves[0].tolist())


def test_scan_moves_of_a_3x4_map():
    assert scan_moves(zigzag_scan_orders(3, 4), 3, 4).tolist() == [
        [0, 1, 1, 1, 4, 2, 2, 2, 4, 1, 1, 1],
        [0, 2, 2, 2, 3, 1, 1, 1, 3, 2, 2, 2],
        [0, 4, 4, 1, 3, 3, 1, 4, 4, 1, 3, 3],
        [0, 4, 4, 2, 3, 3, 2, 4, 4, 2, 3, 3]]
    assert zigzag_scan_orders(0, 3).shape == (4, 0)
    with pytest.raises(ValueError, match="step 2 of order 0 jumps from pixel 2 to 1"):
        scan_moves(torch.tensor([[0, 2, 1, 3]]), 2, 2)
    with pytest.raises(ValueError, match=">= 0"):
        zigzag_scan_orders(-1, 3)


# ---------------------------------------------------------------------------------------------------------------------
# parity with the official code


def test_fixture_is_small_and_official_format(fixture):
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024
    assert fixture["official_commit"] == OFFICIAL_COMMIT
    assert all(k.startswith(("backbone.", "head.fc.")) for k in fixture["state_dict"])
    model = timm.create_model("test_plainmamba")
    assert sum(p.numel() for p in model.parameters()) == fixture["test_param_count"]


@pytest.mark.parametrize("layout", ["raw", "runner"])
def test_official_parity(fixture, tmp_path, layout):
    """Both fixture inputs (224x224, and a non-square one with a resized position embedding) through timm's
    pretrained-file path: logits and every block's output (the last one after the final norm)."""
    sd = fixture["state_dict"]
    model = create(save(sd if layout == "raw" else runner_checkpoint(sd), tmp_path / "official.pth"))
    for case in fixture["cases"]:
        x = case["input"].float()
        with torch.no_grad():
            logits = model(x)
            blocks = model.forward_intermediates(x, intermediates_only=True)
        size = tuple(x.shape)
        err = rel_err(logits, case["logits"])
        assert err < REL_TOL, f"logits differ from the official ones for input {size}: rel err {err:.3g}"
        expected = list(case["stages"][:-1]) + [final_norm(case["stages"][-1], sd)]
        assert len(blocks) == len(expected)
        for i, (ours, official) in enumerate(zip(blocks, expected)):
            assert ours.shape == official.shape, f"block {i}: {tuple(ours.shape)} vs {tuple(official.shape)}"
            err = rel_err(ours, official)
            assert err < REL_TOL, f"block {i} differs from the official one for input {size}: rel err {err:.3g}"


def test_fixture_discriminates_the_official_pairing(fixture, tmp_path, monkeypatch):
    """Reading dt, B and C at the scanned pixel (the usual pairing) or dropping the direction offsets breaks parity,
    so the test above has teeth."""
    model = create(save(fixture["state_dict"], tmp_path / "raw.pth"))
    case = fixture["cases"][1]
    x = case["input"].float()
    indices = plainmamba.zigzag_scan_indices

    def scanned_pixel_pairing(H, W, device):
        orders, steps, moves = indices(H, W, device)
        return orders, torch.arange(H * W, device=device).expand_as(steps), moves

    with monkeypatch.context() as patch:
        patch.setattr(plainmamba, "zigzag_scan_indices", scanned_pixel_pairing)
        with torch.no_grad():
            assert rel_err(model(x), case["logits"]) > 1e-2
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.direction_Bs.zero_()
        assert rel_err(model(x), case["logits"]) > 1e-2


# ---------------------------------------------------------------------------------------------------------------------
# sizes, features and parameter counts


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_and_drop_path_equal_official(name):
    backbone, classifier = OFFICIAL_PARAMS[name]
    with torch.device("meta"):
        model = timm.create_model(name)
        headless = timm.create_model(name, num_classes=0)
    assert sum(p.numel() for p in model.parameters()) == classifier
    assert sum(p.numel() for p in headless.parameters()) == backbone
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for b in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(OFFICIAL_DROP_PATH[name])


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (17, 40)])
def test_any_size_forward_backward(size):
    model = timm.create_model("test_plainmamba", num_classes=5)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_inference_mode_then_training():
    """The cached scan indices made under torch.inference_mode serve a later training step."""
    model = timm.create_model("test_plainmamba", num_classes=5)
    x = torch.randn(1, 3, 48, 80)  # a grid no other test uses, so the indices are made here
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()
    assert model.blocks[0].mixer.direction_Bs.grad is not None


def test_features_are_single_stride_block_maps():
    """A plain model: every feature (all blocks) is at stride 16; features_only equals forward_intermediates."""
    torch.manual_seed(0)
    model = timm.create_model("test_plainmamba").eval()
    assert [(i["num_chs"], i["reduction"]) for i in model.feature_info] == [(32, 16)] * 3
    features = timm.create_model("test_plainmamba", features_only=True, out_indices=(0, 2)).eval()
    features.model.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        maps = features(x)
        expected = model.forward_intermediates(x, indices=(0, 2), intermediates_only=True)
        final = model.forward_features(x)
    assert [m.shape for m in maps] == [(1, 32, 4, 5)] * 2
    for ours, reference in zip(maps, expected):
        torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(maps[-1], final)  # the last block's map is the final-normed one
    pruned = timm.create_model("test_plainmamba", features_only=True, out_indices=(1,))
    assert len(pruned.model.blocks) == 2 and isinstance(pruned.model.norm, torch.nn.Identity)


def test_default_out_indices_are_the_official_segmentation_ones():
    with torch.device("meta"):
        for name, expected in [("plainmamba_l2", [5, 11, 17, 23]), ("plainmamba_l3", [8, 17, 26, 35])]:
            model = timm.create_model(name, features_only=True, feature_norms=True)
            assert list(model.out_indices) == expected
            assert sorted(int(k) for k in model.model.feature_norms) == expected[:-1]


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize("layout", ["runner_with_ema", "module_prefix", "ours"])
def test_checkpoint_layouts_load_the_same_weights(fixture, tmp_path, layout):
    sd = fixture["state_dict"]
    expected = create(save(sd, tmp_path / "raw.pth")).state_dict()
    if layout == "runner_with_ema":  # the plain keys are the EMA weights the official evaluation used
        obj = runner_checkpoint({**sd, **ema_buffers(sd)})
    elif layout == "module_prefix":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = expected
    loaded = create(save(obj, tmp_path / f"{layout}.pth")).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), f"{layout}: {key} differs"


def test_converter_keeps_the_ema_weights(fixture, tmp_path):
    """tools/convert_checkpoint.py on a released-layout file keeps the plain (EMA) weights."""
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    sd = fixture["state_dict"]
    source = save(runner_checkpoint({**sd, **ema_buffers(sd)}), tmp_path / "l.pth")
    assert tool.main([source, str(tmp_path / "l.safetensors"), "--model", "test_plainmamba"]) == 0
    model = vision2d.checkpoint.create_model_from_weights(tmp_path / "l.safetensors").eval()
    assert model.pretrained_cfg["architecture"] == "test_plainmamba"
    case = fixture["cases"][1]
    with torch.no_grad():
        assert rel_err(model(case["input"].float()), case["logits"]) < REL_TOL


@pytest.mark.parametrize("variant, drop_path, clip, batch, warmup, ema, amp", [
    ("l1", 0.2, 5.0, 2048, 15, False, True), ("l2", 0.2, 1.0, 2048, 20, True, False),
    ("l3", 0.4, 1.0, 1024, 20, True, False)])
def test_train_configs_hold_the_official_recipe(variant, drop_path, clip, batch, warmup, ema, amp, tmp_path):
    from vision2d.train.config import parse_args
    args = parse_args(["--config", str(REPO / f"configs/train/plainmamba_{variant}.yaml"), "--data-dir", str(tmp_path)])
    assert args.model == f"plainmamba_{variant}" and (args.drop_path, args.drop_rate) == (drop_path, 0.0)
    assert (args.opt, args.lr_base, args.lr_base_size, args.batch_size * args.grad_accum_steps) == \
           ("adamw", 5e-4, 512, batch)
    lr = 5e-4 * batch / 512  # the official warm-up starts at 1e-3 lr and the cosine ends at 1e-2 lr
    assert (args.warmup_lr, args.min_lr) == (pytest.approx(1e-3 * lr), pytest.approx(1e-2 * lr))
    assert (args.weight_decay, args.clip_grad, args.epochs, args.warmup_epochs, args.sched) == \
           (0.05, clip, 300, warmup, "cosine")
    assert (args.model_ema, args.amp) == (ema, amp) and (not ema or args.model_ema_decay == 0.9999)
    assert (args.aa, args.mixup, args.cutmix, args.smoothing, args.reprob) == \
           ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1, 0.25)


def mm_checkpoint(fixture, detection: bool, generator: torch.Generator) -> dict:
    """An official segmentation (UperNet, norm_layer{i}) or detection (PlainMambaAdapter, no ln1) checkpoint in the
    official key layout: the backbone of the fixture plus the adapter's / heads' keys."""
    backbone = {k: v for k, v in fixture["state_dict"].items() if k.startswith("backbone.")}
    if detection:
        backbone = {k: v for k, v in backbone.items() if not k.startswith("backbone.ln1.")}
        backbone.update({"backbone.level_embed": torch.zeros(3, 32), "backbone.spm.stem.0.weight": torch.zeros(8),
                         "backbone.interactions.0.injector.gamma": torch.zeros(32),
                         "backbone.up.weight": torch.zeros(32, 32, 2, 2), "backbone.ad_norm1.weight": torch.ones(32),
                         "neck.lateral_convs.0.conv.weight": torch.zeros(256, 32, 1, 1),
                         "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024)})
    else:
        for i in (0, 1):
            backbone[f"backbone.norm_layer{i}.weight"] = 1 + 0.2 * torch.randn(32, generator=generator)
            backbone[f"backbone.norm_layer{i}.bias"] = 0.1 * torch.randn(32, generator=generator)
        backbone["decode_head.conv_seg.weight"] = torch.zeros(150, 512, 1, 1)
        backbone["auxiliary_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)
    return {"meta": {"iter": 160000, "mmseg_version": "0.30.0"}, "state_dict": backbone}


def test_official_segmentation_checkpoint_gives_the_official_features(fixture):
    """The segmentation backbone (out_indices of every layer here, norm_layer{i} on all but the last, ln1 on the
    last) returns the official layer outputs through those norms."""
    checkpoint = mm_checkpoint(fixture, detection=False, generator=torch.Generator().manual_seed(0))
    model = timm.create_model("test_plainmamba", features_only=True, out_indices=(0, 1, 2), feature_norms=True).eval()
    reference = timm.create_model("test_plainmamba", feature_norms=True)
    missing, unexpected = model.model.load_state_dict(plainmamba.checkpoint_filter_fn(checkpoint, reference),
                                                      strict=False)
    assert not missing and unexpected == ["head.fc.weight", "head.fc.bias"]
    case = fixture["cases"][1]
    sd = checkpoint["state_dict"]
    with torch.no_grad():
        features = model(case["input"].float())
    prefixes = ["backbone.norm_layer0.", "backbone.norm_layer1.", "backbone.ln1."]
    for i, (ours, official, prefix) in enumerate(zip(features, case["stages"], prefixes)):
        assert rel_err(ours, final_norm(official, sd, prefix)) < REL_TOL, f"feature {i}"


def test_official_detection_checkpoint_gives_the_plain_backbone(fixture):
    checkpoint = mm_checkpoint(fixture, detection=True, generator=torch.Generator().manual_seed(0))
    state_dict = plainmamba.checkpoint_filter_fn(checkpoint, timm.create_model("test_plainmamba"))
    official = fixture["state_dict"]
    assert torch.equal(state_dict["blocks.2.mixer.direction_Bs"], official["backbone.layers.2.mamba.direction_Bs"])
    assert torch.equal(state_dict["norm.weight"], torch.ones(32)) and not state_dict["norm.bias"].any()
    assert not any(k.startswith(("spm", "interactions", "level_embed", "up.", "ad_norm", "neck")) for k in state_dict)


def test_classifier_checkpoint_starts_the_feature_norms_at_init(fixture):
    reference = timm.create_model("test_plainmamba", feature_norms=True)
    state_dict = plainmamba.checkpoint_filter_fn(fixture["state_dict"], reference)
    for i in (0, 1):
        assert torch.equal(state_dict[f"feature_norms.{i}.weight"], torch.ones(32))
        assert not state_dict[f"feature_norms.{i}.bias"].any()


def test_checkpoint_of_another_variant_is_rejected_with_key_report():
    with torch.device("meta"):
        l1, l2 = timm.create_model("plainmamba_l1"), timm.create_model("plainmamba_l2")
    with pytest.raises(ValueError) as error:
        plainmamba.checkpoint_filter_fn({"state_dict": l1.state_dict()}, l2)
    message = str(error.value)
    assert "unexpected (6): blocks.0.dwconv." in message  # L1's depthwise conv after block 0: conv + BN (5) ...
    assert "mis-shaped" in message and "blocks.0.mixer.A_log: checkpoint (384, 16) vs model (768, 16)" in message
    assert "model embed_dim 384, depth 24" in message


def test_mismatched_official_checkpoint_lists_keys(fixture):
    sd = dict(fixture["state_dict"])
    sd["backbone.layers.1.mamba.direction_Bs"] = torch.zeros(4, 16)
    del sd["backbone.layers.2.mamba.D"]
    sd["backbone.layers.0.mamba.gamma"] = torch.zeros(32)
    with pytest.raises(ValueError) as error:
        plainmamba.checkpoint_filter_fn(sd, timm.create_model("test_plainmamba"))
    message = str(error.value)
    assert "missing (1): blocks.2.mixer.D" in message
    assert "unexpected (1): blocks.0.mixer.gamma" in message
    assert "mis-shaped (1): blocks.1.mixer.direction_Bs: checkpoint (4, 16) vs model (5, 16)" in message


def test_bad_input_and_arguments_errors():
    model = timm.create_model("test_plainmamba")
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=">= 1 pixel"):
        model(torch.randn(1, 3, 0, 8))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dwconv_blocks"):
        plainmamba.PlainMamba(depth=2, dwconv_blocks=(2,))


# ---------------------------------------------------------------------------------------------------------------------
# OpenMMLab: the official segmentation backbone (UperNet on four stride-16 maps) and detection adapter (ViT-Adapter)

needs_openmmlab = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("mmengine", "mmcv", "mmdet", "mmseg")),
    reason="OpenMMLab is not installed: run python tools/install_openmmlab.py")
OFFICIAL_NAMES = [  # ours -> official, for checkpoints in the official key layout built from our models
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.mixer\.conv\.", r"layers.\1.mamba.conv2d."),
    (r"^blocks\.(\d+)\.mixer\.", r"layers.\1.mamba."), (r"^blocks\.(\d+)\.dwconv\.", r"layers.\1.dw."),
    (r"^blocks\.(\d+)\.", r"layers.\1."), (r"^norm\.", "ln1."), (r"^feature_norms\.(\d+)\.", r"norm_layer\1.")]


def official_name(key: str) -> str:
    for pattern, repl in OFFICIAL_NAMES:
        key = re.sub(pattern, repl, key)
    return key


def perturbed(module: torch.nn.Module, seed: int) -> dict:
    """The module's state dict moved off its init (so that a tensor loaded into the wrong place shows)."""
    generator = torch.Generator().manual_seed(seed)
    return {k: (v + 0.05 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v
            for k, v in module.state_dict().items()}


@needs_openmmlab
def test_detection_adapter_loads_an_official_detector_checkpoint(tmp_path):
    """Every tensor of a PlainMambaAdapter checkpoint in the official detector layout (backbone.* with the plain
    model's official names, adapter modules, no ln1; neck and heads beside) loads, and the features follow."""
    from vision2d.mm import PlainMambaAdapter
    source = PlainMambaAdapter("test").eval()
    weights = perturbed(source, seed=1)
    source.load_state_dict(weights)
    official = {f"backbone.{official_name(k[len('model.'):]) if k.startswith('model.') else k}": v
                for k, v in weights.items()}
    assert "backbone.layers.0.mamba.direction_Bs" in official and "backbone.interactions.2.extra_extractors.1." \
        "ffn.dwconv.dwconv.weight" in official and "backbone.ad_norm4.running_var" in official
    official.update({"neck.fpn_convs.0.conv.weight": torch.zeros(256, 256, 3, 3),
                     "roi_head.mask_head.conv_logits.weight": torch.zeros(80, 256, 1, 1)})
    path = save({"meta": {"epoch": 12, "CLASSES": ["person"]}, "state_dict": official}, tmp_path / "det.pth")
    adapter = PlainMambaAdapter("test", init_cfg=dict(type="Pretrained", checkpoint=path))
    adapter.init_weights()
    assert all(torch.equal(v, weights[k]) for k, v in adapter.state_dict().items())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features, expected = adapter.eval()(x), source(x)
    assert [f.shape for f in features] == [(1, 32, 16, 24), (1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]
    assert all(torch.equal(a, b) for a, b in zip(features, expected))
    official["backbone.interactions.0.injector.gamma"] = torch.zeros(7)
    save({"state_dict": official}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"mis-shaped.*interactions.0.injector.gamma: checkpoint \(7,\)"):
        PlainMambaAdapter("test", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "bad.pth"))
                          ).init_weights()
    with pytest.raises(ValueError, match="multiples of 32"):
        adapter(torch.randn(1, 3, 64, 80))


@needs_openmmlab
def test_detection_adapter_starts_from_a_classifier(fixture, tmp_path):
    from vision2d.mm import PlainMambaAdapter
    path = save(runner_checkpoint({**fixture["state_dict"], **ema_buffers(fixture["state_dict"])}), tmp_path / "l.pth")
    torch.manual_seed(0)
    adapter = PlainMambaAdapter("test", init_cfg=dict(type="Pretrained", checkpoint=path))
    fresh = adapter.state_dict()
    adapter.init_weights()
    loaded = adapter.state_dict()
    official = fixture["state_dict"]
    assert torch.equal(loaded["model.blocks.1.mixer.x_proj.weight"], official["backbone.layers.1.mamba.x_proj.weight"])
    assert all(torch.equal(v, fresh[k]) for k, v in loaded.items() if not k.startswith("model."))


@needs_openmmlab
def test_segmentation_backbone_loads_an_official_segmentor_checkpoint(fixture, tmp_path):
    from mmengine.registry import MODELS
    import vision2d.mm  # noqa: F401  (registers the backbones)
    checkpoint = mm_checkpoint(fixture, detection=False, generator=torch.Generator().manual_seed(0))
    path = save(checkpoint, tmp_path / "upernet.pth")
    backbone = MODELS.build(dict(type="PlainMambaBackbone", arch="test", out_indices=(0, 1, 2),
                                 init_cfg=dict(type="Pretrained", checkpoint=path)))
    backbone.init_weights()
    case = fixture["cases"][0]
    with torch.no_grad():
        features = backbone.eval()(case["input"].float())
    prefixes = ["backbone.norm_layer0.", "backbone.norm_layer1.", "backbone.ln1."]
    for i, (ours, official, prefix) in enumerate(zip(features, case["stages"], prefixes)):
        assert rel_err(ours, final_norm(official, checkpoint["state_dict"], prefix)) < REL_TOL, f"feature {i}"
    # a classifier checkpoint into other out_indices: the norms of those blocks start at their init
    path = save(runner_checkpoint(fixture["state_dict"]), tmp_path / "classifier.pth")
    backbone = MODELS.build(dict(type="PlainMambaBackbone", arch="test", out_indices=(1, 2),
                                 init_cfg=dict(type="Pretrained", checkpoint=path)))
    backbone.init_weights()
    assert sorted(backbone.model.model.feature_norms) == ["1"]
    # stages are blocks: frozen_stages=2 freezes the patch and position embeddings and blocks 0 and 1
    backbone = MODELS.build(dict(type="PlainMambaBackbone", arch="test", out_indices=(0, 1, 2), frozen_stages=2))
    model = backbone.train().model.model
    frozen = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks.") else "")
              for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"patch_embed", "pos_embed", "blocks.0", "blocks.1"}
    assert not model.patch_embed.training and not model.blocks[1].training and model.blocks[2].training


def mm_batch(kind: str, size=(64, 96)) -> dict:
    """Two images, each with one object / a two-class segmentation map, as mmdet / mmseg data samples."""
    from mmengine.structures import InstanceData, PixelData
    image = torch.rand(3, *size) * 255
    if kind == "det":
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size, scale_factor=(1., 1.)))
        masks = torch.zeros(1, *size, dtype=torch.uint8)
        masks[:, 10:40, 20:60] = 1
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[20., 10., 60., 40.]]), labels=torch.tensor([0]),
                                           masks=BitmapMasks(masks.numpy(), *size))
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
        seg = torch.zeros(1, *size, dtype=torch.long)
        seg[:, :, size[1] // 2:] = 1
        sample.gt_sem_seg = PixelData(data=seg)
    return dict(inputs=[image, image.flip(-1)], data_samples=[sample, sample.clone()])


CONFIGS = sorted(REPO.glob("configs/mm*/*plainmamba*.py"))
ARCHS = {"l1": (192, (5, 11, 17, 23), 0.1), "l2": (384, (5, 11, 17, 23), 0.2), "l3": (448, (8, 17, 26, 35), 0.3)}


@needs_openmmlab
def test_configs_follow_the_official_recipes():
    """Mask R-CNN (adapter) and UperNet configs of L1/L2/L3: official channels, blocks, drop path, pretrained file."""
    from mmengine.config import Config
    assert len(CONFIGS) == 6
    for path in CONFIGS:
        cfg = Config.fromfile(path)
        arch = re.search(r"plainmamba-(l\d)", path.name)[1]
        channels, indices, drop_path = ARCHS[arch]
        backbone = cfg.model.backbone
        assert backbone.arch == arch and backbone.drop_path_rate == drop_path, path
        assert Path(backbone.init_cfg.checkpoint).name == f"plainmamba_{arch}.safetensors", path
        if cfg.default_scope == "mmdet":
            assert backbone.type == "PlainMambaAdapter" and cfg.model.neck.in_channels == [channels] * 4, path
        else:
            assert backbone.type == "PlainMambaBackbone" and tuple(backbone.out_indices) == indices, path
            assert cfg.model.decode_head.in_channels == [channels] * 4, path
            assert cfg.model.auxiliary_head.in_channels == channels and cfg.model.auxiliary_head.in_index == 3, path


@needs_openmmlab
@pytest.mark.parametrize("config", ["mask-rcnn_plainmamba-l1_adapter_1x_coco.py",
                                    "upernet_plainmamba-l1_8xb2-160k_ade20k-512x512.py"])
def test_config_builds_and_trains_one_step(config):
    """The config with the test backbone (channels 32) builds, takes a loss step with a gradient in every backbone
    parameter, and applies the official weight-decay exclusions."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(next(p for p in CONFIGS if p.name == config))
    detection = cfg.default_scope == "mmdet"
    overrides = {"model.backbone.arch": "test", "model.backbone.init_cfg": None}
    if detection:  # fewer proposals and RoIs than on COCO, for a quick CPU step
        overrides.update({"model.neck.in_channels": [32] * 4, "model.train_cfg.rpn_proposal.max_per_img": 100,
                          "model.train_cfg.rcnn.sampler.num": 32})
    else:
        overrides.update({"model.backbone.out_indices": (0, 1, 2), "model.decode_head.in_channels": [32] * 3,
                          "model.decode_head.in_index": [0, 1, 2], "model.auxiliary_head.in_channels": 32,
                          "model.auxiliary_head.in_index": 2, "model.data_preprocessor.size": (64, 96)})
    cfg.merge_from_dict(overrides)
    init_default_scope(cfg.default_scope)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g["weight_decay"] for g in optim_wrapper.optimizer.param_groups for p in g["params"]}
    for name, parameter in model.backbone.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        no_decay = leaf in ("pos_embed", "A_log", "D", "direction_Bs") or (
            detection and ("norm" in name or leaf == "bias" or leaf == "level_embed")) or (
            not detection and "norm" in name and ".model.norm." not in name)
        assert decay[id(parameter)] == (0.0 if no_decay else cfg.optim_wrapper.optimizer.weight_decay), name
    model.train()
    batch = model.data_preprocessor(mm_batch("det" if detection else "seg"), True)
    loss, _ = model.parse_losses(model(**batch, mode="loss"))
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.backbone.named_parameters() if p.grad is None]
    assert not no_grad, f"backbone parameters without gradient: {no_grad}"
