"""OpenMMLab integration: our mmdet/mmseg configs build, train and evaluate with the test backbone, and one weight file
initialises the timm classifier and the mmdet and mmseg backbones identically."""
import ast
import os
from pathlib import Path

import pytest
import torch

for package in ("mmengine", "mmcv", "mmdet", "mmseg"):
    pytest.importorskip(package, reason=f"{package} is not installed: run python tools/install_openmmlab.py")

import timm  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mm_data import CLASSES, PALETTE, write_coco_set, write_segmentation_set  # noqa: E402
from vision2d.checkpoint import CheckpointError, create_model_from_weights, read_weights_metadata  # noqa: E402
from vision2d.checkpoint import save_safetensors_weights  # noqa: E402
from vision2d.mm import FAMILIES  # noqa: E402
from vision2d.mm.runner import build_runner, mmengine_checkpoint_globals  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PLAIN_FAMILIES = {"plainmamba"}  # single-stride families (blocks, not stages): mm tests in their own test files
CONFIGS = sorted(p for p in (REPO / "configs").glob("mm*/*.py") if not any(f in p.name for f in PLAIN_FAMILIES))
BACKBONES = {"mamba2d": "Mamba2DBackbone", "vmamba": "VMambaBackbone",  # family of vision2d.mm.FAMILIES -> mm type
             "v2dmamba": "V2DMambaBackbone", "spatial_mamba": "SpatialMambaBackbone",
             "grootv": "GrootVBackbone", "localmamba": "LocalMambaBackbone", "msvmamba": "MSVMambaBackbone"}
SEGMENTATION_ONLY = {"v2dmamba"}  # families whose authors publish no detection config
TEST_ARCH, TEST_MODEL = "test", "test_mamba2d"
TEST_CHANNELS = [16, 32, 64, 64]  # every family's test model's feature_info; test_backbone_matches_timm_feature_info
FAMILY_TEST_CHANNELS = {"spatial_mamba": [8, 16, 32, 64],  # widths that must double (the official fixture's model)
                        "grootv": [8, 16, 32, 64], "localmamba": [8, 16, 32, 64], "msvmamba": [8, 16, 32, 64]}
NO_DECAY = {  # each family's mm recipe: backbone parameters without weight decay
    "mamba2d": lambda name, parameter: parameter.ndim == 1 or name.endswith(("A_t_log", "A_l_log")),
    # Swin's rule (names with 'norm') on the official names, where the stem / downsample norms are numbered
    "vmamba": lambda name, parameter: "norm" in name and not any(k in name for k in ("stem.norm", "downsample.norm")),
}
NO_DECAY["v2dmamba"] = NO_DECAY["vmamba"]  # VMamba's config is the base of 2DVMamba's
# Swin's rule on the official names, where the blocks' LayerNorms are ln_1 / ln_2
NO_DECAY["spatial_mamba"] = lambda name, parameter: "norm" in name and not any(k in name for k in ("norm1", "norm2"))
NO_DECAY["grootv"] = lambda name, parameter: parameter.ndim == 1  # the classifier recipe's rule
# Swin's rule on the official names, where the stem's LayerNorm is numbered (patch_embed.2)
NO_DECAY["localmamba"] = NO_DECAY["msvmamba"] = lambda name, parameter: "norm" in name and "stem.norm" not in name


def channels_of(family):
    return FAMILY_TEST_CHANNELS.get(family, TEST_CHANNELS)


def det_config_path(family):
    return REPO / f"configs/mmdet/mask-rcnn_{family}-tiny_fpn_1x_coco.py"


def seg_config_path(family):
    return REPO / f"configs/mmseg/upernet_{family}-tiny_8xb2-160k_ade20k-512x512.py"


def timm_feature_info(model_name):
    with torch.device("meta"):
        return timm.create_model(model_name).feature_info


def family_and_arch_of(model_name):
    for family, spec in FAMILIES.items():
        for arch, name in spec.models.items():
            if name == model_name:
                return family, arch
    raise AssertionError(f"{model_name} is in no family of vision2d.mm.FAMILIES")


@pytest.fixture(scope="module")
def family_weights(tmp_path_factory):
    """A freshly initialised test model of every family, saved in the vision2d safetensors format."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for family, spec in FAMILIES.items():
        torch.manual_seed(0)
        name = spec.models[TEST_ARCH]
        paths[family] = folder / f"{name}.safetensors"
        save_safetensors_weights(timm.create_model(name).state_dict(), paths[family], name, 1000)
    return paths


@pytest.fixture(scope="module")
def fresh_weights(family_weights):
    """A freshly initialised test_mamba2d saved in the vision2d safetensors format."""
    return family_weights["mamba2d"]


@pytest.fixture(scope="module")
def nano_weights(tmp_path_factory):
    """mamba2d_nano weights, as a vision2d safetensors file and as a raw torch state dict (no model tag)."""
    folder = tmp_path_factory.mktemp("nano")
    state_dict = timm.create_model("mamba2d_nano").state_dict()
    save_safetensors_weights(state_dict, folder / "nano.safetensors", "mamba2d_nano", 1000)
    torch.save(state_dict, folder / "nano.pth")
    return folder / "nano.safetensors", folder / "nano.pth"


def detection_config(checkpoint, data_root=None, work_dir=None, family="mamba2d"):
    """Our Mask R-CNN config of a family with its test backbone (as --cfg-options would set it) and, given data_root,
    the tiny COCO-format set of mm_data at a small image scale."""
    cfg = Config.fromfile(det_config_path(family))
    cfg.merge_from_dict({
        "model.backbone.arch": TEST_ARCH,
        "model.backbone.init_cfg.checkpoint": str(checkpoint),
        "model.neck.in_channels": channels_of(family),
        "model.roi_head.bbox_head.num_classes": len(CLASSES),
        "model.roi_head.mask_head.num_classes": len(CLASSES),
        "model.test_cfg.rcnn.score_thr": 0.0,  # an untrained head scores below mmdet's 0.05: keep its detections
        # fewer proposals and RoIs than on COCO, so that the CPU test is quick
        "model.train_cfg.rpn_proposal.max_per_img": 200,
        "model.train_cfg.rcnn.sampler.num": 64,
        "model.test_cfg.rpn.max_per_img": 100,
        "model.test_cfg.rcnn.max_per_img": 10,
    })
    if data_root is not None:
        dataset = dict(data_root=str(data_root), ann_file="annotations.json", data_prefix=dict(img="images/"),
                       metainfo=dict(classes=CLASSES))
        train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
                          dict(type="Resize", scale=(80, 64), keep_ratio=True), dict(type="RandomFlip", prob=0.5),
                          dict(type="PackDetInputs")]
        test_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(80, 64), keep_ratio=True),
                         dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
                         dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                                               "scale_factor"))]
        loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
        cfg.merge_from_dict({
            "work_dir": str(work_dir),
            "train_dataloader": dict(loader, dataset=dict(dataset, pipeline=train_pipeline)),
            "val_dataloader": dict(loader, dataset=dict(dataset, pipeline=test_pipeline)),
            "test_dataloader": dict(loader, dataset=dict(dataset, pipeline=test_pipeline)),
            "val_evaluator.ann_file": str(data_root / "annotations.json"),
            "test_evaluator.ann_file": str(data_root / "annotations.json"),
            "train_cfg.max_epochs": 1,
            "train_cfg.val_begin": 2,  # no validation inside training: the test runs it afterwards
            "default_hooks.logger.interval": 1,
        })
    return cfg


def segmentation_config(checkpoint, data_root=None, work_dir=None, family="mamba2d"):
    """Our UperNet config of a family with its test backbone and, given data_root, the tiny segmentation set of
    mm_data."""
    cfg = Config.fromfile(seg_config_path(family))
    num_classes = len(CLASSES) + 1
    cfg.merge_from_dict({
        "model.backbone.arch": TEST_ARCH,
        "model.backbone.init_cfg.checkpoint": str(checkpoint),
        "model.data_preprocessor.size": (64, 64),
        "model.decode_head.in_channels": channels_of(family),
        "model.decode_head.num_classes": num_classes,
        "model.auxiliary_head.in_channels": channels_of(family)[2],
        "model.auxiliary_head.num_classes": num_classes,
    })
    if data_root is not None:
        dataset = dict(type="BaseSegDataset", data_root=str(data_root),
                       data_prefix=dict(img_path="images", seg_map_path="annotations"), img_suffix=".jpg",
                       seg_map_suffix=".png", metainfo=dict(classes=("background", *CLASSES), palette=PALETTE))
        train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                          dict(type="RandomFlip", prob=0.5), dict(type="PackSegInputs")]
        test_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
        loader = dict(num_workers=0, persistent_workers=False)
        cfg.merge_from_dict({
            "work_dir": str(work_dir),
            "train_dataloader": dict(loader, batch_size=2, dataset=dict(dataset, pipeline=train_pipeline)),
            "val_dataloader": dict(loader, dataset=dict(dataset, pipeline=test_pipeline)),
            "test_dataloader": dict(loader, dataset=dict(dataset, pipeline=test_pipeline)),
            "train_cfg.max_iters": 3,
            "train_cfg.val_begin": 4,  # no validation inside training: the test runs it afterwards
            "default_hooks.logger.interval": 1,
            "default_hooks.checkpoint.interval": 3,
        })
    return cfg


def build_model(cfg):
    init_default_scope(cfg.default_scope)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))  # SyncBN needs a process group; the Runner does the same
    model.init_weights()
    return model


def check_train_step_and_inference(model, cfg):
    """One optimizer step on a batch of the config's train loader, then inference on it; returns the predictions."""
    torch.manual_seed(0)
    batch = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    weight_decay = {id(parameter): group["weight_decay"] for group in optim_wrapper.optimizer.param_groups
                    for parameter in group["params"]}
    no_decay = NO_DECAY[MODELS.get(cfg.model.backbone.type).family]
    for name, parameter in model.backbone.named_parameters():
        expected = 0.0 if no_decay(name, parameter) else cfg.optim_wrapper.optimizer.weight_decay
        assert weight_decay[id(parameter)] == expected, name
    model.train()
    losses = model(**model.data_preprocessor(batch, True), mode="loss")
    loss, log_vars = model.parse_losses(losses)
    assert all(torch.isfinite(torch.as_tensor(value)) for value in log_vars.values()), log_vars
    loss.backward()
    no_grad = [name for name, parameter in model.backbone.named_parameters() if parameter.grad is None]
    assert not no_grad, f"backbone parameters without gradient: {no_grad}"
    assert all(parameter.grad.abs().sum() > 0 for parameter in model.backbone.model.model.stem.parameters())
    before = [parameter.detach().clone() for parameter in model.backbone.parameters()]
    optim_wrapper.step()
    assert any(not torch.equal(old, new) for old, new in zip(before, model.backbone.parameters()))
    model.eval()
    with torch.no_grad():
        return model.test_step(batch)


def test_every_family_has_a_backbone_and_configs():
    assert set(BACKBONES) | PLAIN_FAMILIES == set(FAMILIES)
    for family, backbone_type in BACKBONES.items():
        assert MODELS.get(backbone_type).family == family
        assert det_config_path(family).is_file() != (family in SEGMENTATION_ONLY) and seg_config_path(family).is_file()


def test_configs_match_backbone_feature_info():
    for path in CONFIGS:
        cfg = Config.fromfile(path)
        backbone = cfg.model.backbone
        assert backbone.type in BACKBONES.values() and "vision2d.mm" in cfg.custom_imports.imports, path
        model_name = FAMILIES[MODELS.get(backbone.type).family].models[backbone.arch]
        info = timm_feature_info(model_name)
        channels = [info[i]["num_chs"] for i in backbone.out_indices]
        head = cfg.model.get("neck") or cfg.model.decode_head
        assert head.in_channels == channels, path
        if "auxiliary_head" in cfg.model:
            assert cfg.model.auxiliary_head.in_channels == channels[cfg.model.auxiliary_head.in_index], path
        assert Path(backbone.init_cfg.checkpoint).name == f"{model_name}.safetensors", path


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_backbone_matches_timm_feature_info(family):
    info = timm_feature_info(FAMILIES[family].models[TEST_ARCH])
    assert [stage["num_chs"] for stage in info] == channels_of(family)
    backbone = MODELS.build(dict(type=BACKBONES[family], arch=TEST_ARCH, out_indices=(1, 3)))
    features = backbone(torch.randn(2, 3, 64, 96))
    assert isinstance(features, tuple) and len(features) == 2
    for feature, stage in zip(features, (1, 3)):
        reduction = info[stage]["reduction"]
        assert feature.shape == (2, info[stage]["num_chs"], 64 // reduction, 96 // reduction)


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_frozen_stages_stay_frozen_in_train_mode(family):
    backbone = MODELS.build(dict(type=BACKBONES[family], arch=TEST_ARCH, frozen_stages=2)).train()
    model = backbone.model.model
    for module, frozen in ((model.stem, True), (model.stages[0], True), (model.stages[1], True),
                           (model.stages[2], False), (model.stages[3], False)):
        assert all(parameter.requires_grad != frozen for parameter in module.parameters())
        assert all(submodule.training != frozen for submodule in module.modules())


@pytest.mark.parametrize("family", sorted(set(BACKBONES) - SEGMENTATION_ONLY))
def test_mask_rcnn_train_step_and_inference(family_weights, tmp_path, family):
    write_coco_set(tmp_path)
    cfg = detection_config(family_weights[family], tmp_path, tmp_path / "work", family=family)
    predictions = check_train_step_and_inference(build_model(cfg), cfg)
    assert len(predictions) == cfg.train_dataloader.batch_size
    for sample in predictions:
        instances = sample.pred_instances
        assert len(instances) > 0 and instances.bboxes.shape == (len(instances), 4)
        assert instances.masks.shape == (len(instances), *sample.ori_shape)
        assert torch.isfinite(instances.scores).all()


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_upernet_train_step_and_inference(family_weights, tmp_path, family):
    write_segmentation_set(tmp_path)
    cfg = segmentation_config(family_weights[family], tmp_path, tmp_path / "work", family=family)
    predictions = check_train_step_and_inference(build_model(cfg), cfg)
    assert len(predictions) == cfg.train_dataloader.batch_size
    for sample in predictions:
        seg_map = sample.pred_sem_seg.data
        assert seg_map.shape == (1, *sample.ori_shape)
        assert 0 <= seg_map.min() and seg_map.max() <= len(CLASSES)


class WritesAMarker:
    """A pickle payload: unpickling it (without weights-only loading) would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_runner_trains_and_evaluates_detection(fresh_weights, tmp_path):
    write_coco_set(tmp_path / "coco")
    runner = build_runner(detection_config(fresh_weights, tmp_path / "coco", tmp_path / "work"))
    runner.train()
    metrics = runner.val()
    for name in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        assert 0.0 <= metrics[name] <= 1.0, metrics
    assert (tmp_path / "work" / "epoch_1.pth").is_file()


def test_runner_trains_and_evaluates_segmentation(fresh_weights, tmp_path):
    """The Runner's own checkpoints load weights-only (nothing sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD); a foreign
    pickle given to it, as to tools/mm_test.py, is refused without running."""
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    write_segmentation_set(tmp_path / "seg")
    cfg = segmentation_config(fresh_weights, tmp_path / "seg", tmp_path / "work")
    runner = build_runner(cfg)
    runner.train()
    metrics = runner.val()
    for name in ("aAcc", "mIoU", "mAcc"):
        assert 0.0 <= metrics[name] <= 100.0, metrics
    checkpoint = tmp_path / "work" / "iter_3.pth"
    allowed = {name for item in mmengine_checkpoint_globals()
               for name in ([item[1]] if isinstance(item, tuple) else [f"{item.__module__}.{item.__qualname__}"])}
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint)) <= allowed
    cfg.load_from = str(checkpoint)  # what tools/mm_test.py does with its checkpoint argument
    assert build_runner(cfg).test() == metrics
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ

    foreign = torch.load(checkpoint, map_location="cpu", weights_only=False)
    foreign["meta"]["payload"] = WritesAMarker(tmp_path / "payload-ran")
    torch.save(foreign, tmp_path / "foreign.pth")
    cfg.load_from = str(tmp_path / "foreign.pth")
    refused = r"foreign.pth holds Python objects that weights-only loading refuses \(.*GLOBAL io.open"
    with pytest.raises(CheckpointError, match=refused + r".*\).*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"):
        build_runner(cfg).test()
    assert not (tmp_path / "payload-ran").exists()


def weight_files():
    """The fresh test weights of every family, and every weight file trained by tools/train.py under checkpoints/."""
    return [*sorted(BACKBONES), *sorted((REPO / "checkpoints").glob("*.safetensors"))]


@pytest.mark.parametrize("weights", weight_files(), ids=lambda weights: getattr(weights, "name", weights))
def test_one_weight_file_initialises_classifier_and_mm_backbones(weights, family_weights):
    path = family_weights[weights] if weights in family_weights else weights
    model_name = read_weights_metadata(path)["model"]
    family, arch = family_and_arch_of(model_name)
    # the classifier built as the mm backbone builds it (e.g. VMamba's output norms, at init from a classifier file)
    classifier = create_model_from_weights(path, **FAMILIES[family].model_kwargs).eval()
    file_state = classifier.state_dict()
    image = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = classifier.forward_intermediates(image, intermediates_only=True)
    configs = [segmentation_config(path, family=family)]
    if family not in SEGMENTATION_ONLY:
        configs.insert(0, detection_config(path, family=family))
    for cfg in configs:
        cfg.model.backbone.arch = arch
        init_default_scope(cfg.default_scope)  # build in mmdet's / mmseg's registry, as their Runner does
        backbone = MODELS.build(cfg.model.backbone)
        backbone.init_weights()
        loaded = backbone.eval().model.model.state_dict()
        assert loaded.keys() <= file_state.keys()
        assert all(torch.equal(value, file_state[key]) for key, value in loaded.items())
        with torch.no_grad():
            features = backbone(image)
        assert len(features) == len(expected)
        assert all(torch.equal(got, want) for got, want in zip(features, expected))


@pytest.mark.parametrize("family", sorted(BACKBONES))
@pytest.mark.parametrize("out_indices", [(4,), (2, 1), (), (0, 0)])
def test_bad_out_indices_are_named(out_indices, family):
    with pytest.raises(ValueError, match="out_indices"):
        MODELS.build(dict(type=BACKBONES[family], arch=TEST_ARCH, out_indices=out_indices))


@pytest.mark.parametrize("family", sorted(BACKBONES))
@pytest.mark.parametrize("frozen_stages", [-2, 5])
def test_frozen_stages_out_of_range_are_named(frozen_stages, family):
    with pytest.raises(ValueError, match="frozen_stages"):
        MODELS.build(dict(type=BACKBONES[family], arch=TEST_ARCH, frozen_stages=frozen_stages))


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_unknown_arch_is_named(family):
    with pytest.raises(ValueError, match="unknown arch 'huge'"):
        MODELS.build(dict(type=BACKBONES[family], arch="huge"))


def test_checkpoint_of_another_variant_is_an_error(nano_weights):
    tagged, untagged = nano_weights
    backbone = MODELS.build(dict(type="Mamba2DBackbone", arch=TEST_ARCH,
                                 init_cfg=dict(type="Pretrained", checkpoint=str(tagged))))
    with pytest.raises(CheckpointError, match="mamba2d_nano.*test_mamba2d"):
        backbone.init_weights()
    backbone = MODELS.build(dict(type="Mamba2DBackbone", arch=TEST_ARCH,
                                 init_cfg=dict(type="Pretrained", checkpoint=str(untagged))))
    with pytest.raises(ValueError, match="does not match"):
        backbone.init_weights()


def test_missing_checkpoint_is_named(tmp_path):
    backbone = MODELS.build(dict(type="Mamba2DBackbone", arch=TEST_ARCH,
                                 init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "absent.pth"))))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        backbone.init_weights()


def test_core_package_does_not_import_openmmlab():
    """Only vision2d/mm may import the OpenMMLab packages (at module level or inside functions)."""
    offenders = []
    for path in sorted((REPO / "vision2d").rglob("*.py")):
        if (REPO / "vision2d" / "mm") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(REPO)}: {name}" for name in names
                          if name.split(".")[0] in ("mmengine", "mmcv", "mmdet", "mmseg")]
    assert not offenders
