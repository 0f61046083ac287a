"""Fixture-integrity tests for the official-code parity fixtures in `tests/data/` (see `tests/data/README.md`).

These check the committed artifacts themselves: each file loads with `torch.load(weights_only=True)`, holds the keys
the parity tests will read, and its tensors have the shapes the recorded official config implies, with every
constant-initialised parameter moved away from its init. The model parity tests come with each family's model.
"""
import math
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


def _load(name: str) -> dict:
    path = DATA / name
    assert path.stat().st_size < 2_000_000, f"{name} is {path.stat().st_size} bytes; fixtures must stay small"
    return torch.load(path, weights_only=True)


def _check_common(fx: dict, num_classes: int = 1000) -> None:
    assert fx["format_version"] == 1
    assert len(fx["official_commit"]) == 40 and fx["official_repo"].startswith("https://github.com/")
    for case in fx["cases"]:
        x = case["input"]
        assert x.dim() == 4 and x.shape[1] == 3
        assert case["logits"].shape == (x.shape[0], num_classes) and case["logits"].dtype == torch.float32
        assert all(torch.isfinite(t).all() for t in [case["logits"], *case["stages"]])
    sizes = {tuple(c["input"].shape[-2:]) for c in fx["cases"]}
    assert (224, 224) in sizes and any(h != w for h, w in sizes), "a 224x224 case and a non-square case"
    assert all(isinstance(n, int) and n > 0 for n in fx["official_param_counts"].values())


def _perturbed(sd: dict, suffix: str, init: float) -> None:
    """Every tensor whose key ends with `suffix` exists and is not at its constant init anywhere."""
    keys = [k for k in sd if k.endswith(suffix)]
    assert keys, f"no parameter ends with {suffix}"
    for k in keys:
        assert not torch.isclose(sd[k], torch.full_like(sd[k], init)).any(), f"{k} still holds its init {init}"


def _n_params(sd: dict) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.numel() for k, v in sd.items() if not k.endswith(buffers))


def test_spatial_mamba_fixture_integrity():
    fx = _load("official_spatial_mamba_parity.pt")
    _check_common(fx)
    cfg, sd = fx["official_config"], fx["state_dict"]
    d, depths = cfg["dims"], cfg["depths"]
    dims = [d * 2**i for i in range(4)]
    assert fx["official_param_counts"] == {"tiny": 26_748_862, "small": 43_074_280, "base": 95_745_592}
    assert _n_params(sd) == fx["test_param_count"]
    for i, depth in enumerate(depths):
        e, r = 2 * dims[i], math.ceil(dims[i] / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}.self_attention."
            assert sd[p + "A_logs"].shape == (e, cfg["d_state"])
            assert sd[p + "x_proj_weight"].shape == (r + 2 * cfg["d_state"], e)
            assert sd[p + "dt_projs_weight"].shape == (e, r)
            assert sd[p + "state_fusion.kernel_3_2"].shape == (e, 1, 3, 3)
        assert (f"layers.{i}.downsample.conv.2.conv.weight" in sd) == (i < 3)
    assert not any(f"layers.{i}.blocks.{depths[i]}." in k for i in range(4) for k in sd)
    assert sd["head.weight"].shape == (1000, dims[3])
    for suffix, init in [("A_logs", 0.0), ("Ds", 1.0), ("alpha", 1.0), ("kernel_3", 1.0), ("kernel_3_1", 1.0),
                         ("kernel_3_2", 1.0), ("ln_1.weight", 1.0), ("ln_2.bias", 0.0), ("out_norm.weight", 1.0),
                         ("norm.running_var", 1.0), ("norm.running_mean", 0.0)]:
        _perturbed(sd, suffix, init)
    for case in fx["cases"]:
        h, w = case["input"].shape[-2:]
        h, w = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
        for i, stage in enumerate(case["stages"]):
            assert stage.shape == (case["input"].shape[0], dims[i], h, w)
            h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_plainmamba_fixture_integrity():
    fx = _load("official_plainmamba_parity.pt")
    _check_common(fx)
    cfg, sd = fx["official_config"]["backbone"], fx["state_dict"]
    c, n_layers = cfg["embed_dims"], cfg["num_layers"]
    mamba = cfg["layer_cfgs"]["mamba_cfg"]
    e, n, r = mamba["expand"] * c, mamba["d_state"], math.ceil(c / 16)
    assert fx["official_backbone_param_counts"] == {"l1": 7_358_656, "l2": 25_760_832, "l3": 50_507_456}
    assert fx["official_param_counts"] == {"l1": 7_551_656, "l2": 26_145_832, "l3": 50_956_456}
    assert _n_params(sd) == fx["test_param_count"]
    assert sd["backbone.pos_embed"].shape == (1, 14 * 14, c)
    assert sd["backbone.patch_embed.projection.weight"].shape == (c, 64, 8, 8)
    for i in range(n_layers):
        p = f"backbone.layers.{i}."
        assert sd[p + "mamba.A_log"].shape == (e, n)
        assert sd[p + "mamba.direction_Bs"].shape == (5, n)
        assert sd[p + "mamba.x_proj.weight"].shape == (r + 2 * n, e)
        assert sd[p + "mamba.conv2d.weight"].shape == (e, 1, mamba["conv_size"], mamba["conv_size"])
        assert (p + "dw.1.running_var" in sd) == (i in cfg["layers_with_dwconv"])
    assert sd["backbone.ln1.weight"].shape == (c,) and sd["head.fc.weight"].shape == (1000, c)
    assert not any(k.startswith("ema_") for k in sd)
    for suffix, init in [("A_log", 0.0), ("mamba.D", 1.0), ("norm.weight", 1.0), ("norm.bias", 0.0),
                         ("ln1.weight", 1.0), ("running_var", 1.0), ("running_mean", 0.0)]:
        _perturbed(sd, suffix, init)
    assert sd["backbone.layers.0.mamba.direction_Bs"].std() > 0.1  # far from its trunc_normal(.02) init
    for case in fx["cases"]:
        b, _, h, w = case["input"].shape
        grid = (math.ceil(math.ceil(h / 2) / 8), math.ceil(math.ceil(w / 2) / 8))
        assert [s.shape for s in case["stages"]] == [(b, c, *grid)] * n_layers
    assert {c["stages"][0].shape[-2:] for c in fx["cases"]} >= {(14, 14), (8, 11)}


def test_v2dmamba_fixture_integrity():
    fx = _load("official_v2dmamba_parity.pt")
    _check_common(fx)
    cfg, sd = fx["official_config"], fx["state_dict"]
    assert cfg["use_v2d"] and cfg["forward_type"] == "v05_noz" and cfg["norm_layer"] == "ln2d"
    dims = [cfg["dims"] * 2**i for i in range(4)]
    n = cfg["ssm_d_state"]
    assert fx["official_param_counts"] == {"tiny": 30_249_064, "small": 50_147_752}
    assert _n_params(sd) == fx["test_param_count"]
    for i, depth in enumerate(cfg["depths"]):
        e, r = int(cfg["ssm_ratio"] * dims[i]), math.ceil(dims[i] / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}.op."
            assert sd[p + "x_proj_weight"].shape == (4, r + 2 * n, e)
            assert sd[p + "dt_projs_weight"].shape == (4, e, r) and sd[p + "dt_projs_bias"].shape == (4, e)
            assert sd[p + "A_logs"].shape == (4 * e, n) and sd[p + "Ds"].shape == (4 * e,)
            assert p + "conv2d.bias" not in sd
        assert (f"layers.{i}.downsample.1.weight" in sd) == (i < 3)
    assert sd["classifier.head.weight"].shape == (1000, dims[3])
    for suffix, init in [("A_logs", 0.0), ("Ds", 1.0), ("norm.weight", 1.0), ("norm2.bias", 0.0),
                         ("out_norm.weight", 1.0), ("patch_embed.7.weight", 1.0)]:
        _perturbed(sd, suffix, init)
    for case in fx["cases"]:
        b, _, h, w = case["input"].shape
        h, w = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
        for i, stage in enumerate(case["stages"]):
            assert stage.shape == (b, dims[i], h, w)
            h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_localmamba_fixture_integrity():
    fx = _load("official_localmamba_parity.pt")
    _check_common(fx)
    cfg, sd = fx["official_config"], fx["state_dict"]
    dims, depths, n = cfg["dims"], cfg["depths"], cfg["ssm_d_state"]
    assert fx["official_param_counts"] == {"tiny": 25_527_160, "small": 49_748_536}
    assert _n_params(sd) == fx["test_param_count"]
    assert len(cfg["directions"]) == sum(depths) and all(len(d) == 4 for d in cfg["directions"])
    assert {c for d in cfg["directions"] for c in d} == {"h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip"}
    for i, depth in enumerate(depths):
        e, r = int(cfg["ssm_ratio"] * dims[i]), math.ceil(dims[i] / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}.op."
            assert sd[p + "x_proj_weight"].shape == (4, r + 2 * n, e)
            assert sd[p + "A_logs"].shape == (4 * e, n) and sd[p + "Ds"].shape == (4 * e,)
            assert sd[p + "multi_scan.attn.global_reduce.weight"].shape == (int(e * 0.125), e)
            assert not any(k.startswith(p + "multi_scan.weights") for k in sd)  # no search-only parameters
        assert (f"layers.{i}.downsample.reduction.weight" in sd) == (i < 3)
    for suffix, init in [("A_logs", 0.0), ("Ds", 1.0), ("norm.weight", 1.0), ("out_norm.bias", 0.0),
                         ("attn.norm.weight", 1.0)]:
        _perturbed(sd, suffix, init)
    for case in fx["cases"]:
        b, _, h, w = case["input"].shape
        square = h == w
        assert ("v_reverse_fixed" in case) == (not square)
        h, w = h // 4, w // 4
        for i, stage in enumerate(case["stages"]):
            assert stage.shape == (b, dims[i], h, w)
            if not square:
                assert case["v_reverse_fixed"]["stages"][i].shape == stage.shape
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if not square:  # the official vertical un-permute is only right for square maps
            fixed = case["v_reverse_fixed"]["logits"]
            assert (fixed - case["logits"]).norm() > 0.1 * case["logits"].norm()


def test_msvmamba_fixture_integrity():
    fx = _load("official_msvmamba_parity.pt")
    _check_common(fx)
    cfg, sd = fx["official_config"], fx["state_dict"]
    assert cfg["sscore_type"] == "multiscale_4scan_12" and cfg["ms_split"] == [1, 3]
    assert cfg["add_se"] and cfg["convFFN"]
    dims = [cfg["dims"] * 2**i for i in range(4)]
    n = cfg["ssm_d_state"]
    assert fx["official_param_counts"] == {"nano": 6_864_136, "micro": 11_879_272, "tiny": 33_046_312}
    assert _n_params(sd) == fx["test_param_count"]
    for i, depth in enumerate(cfg["depths"]):
        e, r = int(cfg["ssm_ratio"] * dims[i]), math.ceil(dims[i] / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            assert sd[p + "op.x_proj_weight"].shape == (2, r + 2 * n, e)
            assert sd[p + "op.A_logs"].shape == (2 * e, n) and sd[p + "op.Ds"].shape == (2 * e,)
            assert sd[p + "op.conv2d_b1.weight"].shape == (e, 1, 7, 7)
            assert sd[p + "op.se.fc.0.weight"].shape == (e // 8, e)
            assert sd[p + "convFFN.dwc.weight"].shape == (2 * dims[i], 1, 3, 3)
            assert p + "mlp.fc1.weight" not in sd
        assert (f"layers.{i}.downsample.reduction.weight" in sd) == (i < 3)
    for suffix, init in [("A_logs", 0.0), ("Ds", 1.0), ("norm.weight", 1.0), ("norm2.bias", 0.0),
                         ("out_norm.weight", 1.0)]:
        _perturbed(sd, suffix, init)
    for case in fx["cases"]:
        b, _, h, w = case["input"].shape
        h, w = h // 4, w // 4
        for i, stage in enumerate(case["stages"]):
            assert stage.shape == (b, dims[i], h, w)
            h, w = math.ceil(h / 2), math.ceil(w / 2)
