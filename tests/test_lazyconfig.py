import json
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import train_net
from multimask.config import get_multimask_cfg
from multimask.data import register_synthetic_dataset

from .common import REPO_ROOT

QUICK_YAML = f"{REPO_ROOT}/configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml"
QUICK_PY = f"{REPO_ROOT}/configs/quick_schedules/multimask_R18_FPN_quick_synthetic.py"
TRAIN, VAL = "mm_lazy_test_train", "mm_lazy_test_val"


def _signature(model):
    params = {k: (tuple(v.shape), v.requires_grad) for k, v in model.named_parameters()}
    return params, {k: tuple(v.shape) for k, v in model.named_buffers()}


def test_quick_py_builds_the_quick_yaml_model():
    cfg = get_multimask_cfg(QUICK_YAML, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    from_yaml = build_model(cfg).eval()
    torch.manual_seed(0)
    from_py = instantiate(LazyConfig.load(QUICK_PY).model).eval()
    assert _signature(from_yaml) == _signature(from_py)
    # the same loss: the configs' hidden-part weight (amodal outside visible weighs 2)
    assert from_yaml.roi_heads.mask_head.hidden_weights == [(0, 1, 2.0)]
    assert from_py.roi_heads.mask_head.hidden_weights == [(0, 1, 2.0)]
    # same construction order, so the same seed gives the same weights and the same predictions
    sd = from_py.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in from_yaml.state_dict().items())
    image = (torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255).to(
        torch.uint8
    )
    with torch.no_grad():
        a = from_yaml([{"image": image}])[0]["instances"]
        b = from_py([{"image": image}])[0]["instances"]
    assert len(a) == len(b) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.pred_multimasks, b.pred_multimasks)


def test_r50_model_matches_the_base_yaml():
    cfg = get_multimask_cfg(
        f"{REPO_ROOT}/configs/Base-MultiMask-RCNN-FPN.yaml", ["MODEL.DEVICE", "cpu"]
    )
    lazy = LazyConfig.load(f"{REPO_ROOT}/configs/common/models/multimask_rcnn_fpn.py")
    assert _signature(build_model(cfg)) == _signature(instantiate(lazy.model))
    full = LazyConfig.load(f"{REPO_ROOT}/configs/multimask_R_50_FPN_1x.py")
    assert full.model.roi_heads.mask_head.mask_names == ["amodal", "visible"]
    assert full.model.roi_heads.mask_head.hidden_weights == [["amodal", "visible", 2.0]]
    assert full.train.max_iter == 90000


def test_dotted_overrides_reach_model_and_data():
    cfg = LazyConfig.load(QUICK_PY)
    cfg = LazyConfig.apply_overrides(
        cfg,
        [
            "train.max_iter=100",
            "model.roi_heads.mask_head.loss_weights=[1,0.5]",
            "model.roi_heads.mask_head.mask_names=[amodal,visible,occluded]",
            "model.roi_heads.mask_head.relations=[[containment,visible,amodal,0.1]]",
            "model.backbone.out_channels=32",
        ],
    )
    assert cfg.train.max_iter == 100
    # the mappers and the evaluator follow the model's mask names
    assert list(cfg.dataloader.train.mapper.mask_names) == ["amodal", "visible", "occluded"]
    assert list(cfg.dataloader.test.mapper.mask_names) == ["amodal", "visible", "occluded"]
    assert list(cfg.dataloader.evaluator.mask_names) == ["amodal", "visible", "occluded"]
    cfg.model.roi_heads.mask_head.loss_weights = [1, 0.5, 0.5]
    model = instantiate(cfg.model)
    head = model.roi_heads.mask_head
    assert head.loss_weights == [1, 0.5, 0.5] and list(head.towers) == [
        "amodal",
        "visible",
        "occluded",
    ]
    assert [r.loss_name for r in head.relations] == ["loss_rel_containment_visible_amodal"]
    # every head input follows model.backbone.out_channels
    assert model.proposal_generator.rpn_head.conv.in_channels == 32
    assert head.trunk.mask_fcn1.in_channels == 32
    assert model.roi_heads.box_head.fc1.in_features == 32 * 7 * 7


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    for name, n, seed in [(TRAIN, 4, 21), (VAL, 2, 22)]:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        register_synthetic_dataset(name, num_images=n, seed=seed, image_size=96, root=root)
    yield
    for name in (TRAIN, VAL):
        DatasetCatalog.remove(name)


def _args(out, max_iter):
    """train_net args of a 2-3 iteration LazyConfig run with a tiny model on the tiny datasets."""
    overrides = [
        f"train.output_dir={out}",
        f"train.max_iter={max_iter}",
        "train.device=cpu",
        "train.eval_period=2",
        "train.val_loss_max_images=2",
        "train.checkpointer.period=2",
        f"dataloader.train.dataset.names={TRAIN}",
        f"dataloader.test.dataset.names={VAL}",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[96]",
        "dataloader.train.mapper.augmentations.0.max_size=96",
        "model.backbone.out_channels=32",
        "model.roi_heads.box_head.fc_dims=[64]",
        "model.roi_heads.box_predictor.input_shape.channels=64",
        "model.roi_heads.mask_head.conv_dims=[32,32,32]",
        "model.roi_heads.mask_head.shared_convs=1",
        "model.roi_heads.mask_head.loss_weights=[1,0.5]",
    ]
    return train_net.get_parser().parse_args(["--config-file", QUICK_PY, *overrides])


def test_lazy_training_checkpoints_evaluates_and_resumes(tiny_datasets, tmp_path):
    results = train_net.main(_args(tmp_path, 2))
    assert "segm_amodal" in results and "segm_visible" in results
    assert os.path.isfile(tmp_path / "model_final.pth") and os.path.isfile(tmp_path / "config.yaml")
    with open(tmp_path / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    val = [r for r in records if "val/loss_mask_amodal" in r]
    assert val and {"val/loss_mask_visible", "val/total_loss"} <= set(val[-1])

    args = _args(tmp_path, 3)
    args.resume = True
    train_net.main(args)
    ckpt = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert ckpt["iteration"] == 2  # resumed at iteration 2 and ran one more
    with open(tmp_path / "log.txt") as f:
        assert "Starting training from iteration 2" in f.read()
    model = instantiate(LazyConfig.load(str(tmp_path / "config.yaml")).model)
    DetectionCheckpointer(model).load(str(tmp_path / "model_final.pth"))
    assert model.roi_heads.mask_head.loss_weights == [1, 0.5]


def test_gradient_clipping_as_in_the_yaml():
    """The quick LazyConfig clips gradients as its YAML twin (SOLVER.CLIP_GRADIENTS value 1.0)."""
    from multimask.engine.lazy_train import _with_gradient_clipping

    yaml_cfg = get_multimask_cfg(QUICK_YAML, [])
    lazy = LazyConfig.load(QUICK_PY)
    clip = lazy.train.clip_gradients
    assert yaml_cfg.SOLVER.CLIP_GRADIENTS.ENABLED and clip.enabled
    assert (clip.clip_type, clip.clip_value) == (
        yaml_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE,
        yaml_cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE,
    )
    w = torch.nn.Parameter(torch.zeros(3))
    opt = _with_gradient_clipping(torch.optim.SGD([w], lr=1.0), lazy)
    w.grad = torch.tensor([5.0, -0.5, -3.0])
    opt.step()
    assert w.detach().tolist() == [-1.0, 0.5, 1.0]  # each gradient value clipped to [-1, 1]
    lazy.train.clip_gradients.enabled = False
    plain = torch.optim.SGD([w], lr=1.0)
    assert _with_gradient_clipping(plain, lazy) is plain
    lazy.train.clip_gradients = dict(enabled=True, clip_value=1.0, max_norm=2.0)
    with pytest.raises(ValueError, match=r"unknown keys \['max_norm'\]"):
        _with_gradient_clipping(plain, lazy)


def test_lazy_resume_reproduces_the_uninterrupted_run(tiny_datasets, tmp_path):
    """As the YAML path: data position and RNG states saved with each checkpoint (ResumeStateHook)."""
    once = ["train.eval_period=0", "train.val_loss_max_images=0", "train.checkpointer.period=2"]
    for out in ("ref", "run"):
        args = _args(tmp_path / out, 4)
        args.opts += once
        train_net.main(args)
    out = tmp_path / "run"
    ref = torch.load(tmp_path / "ref" / "model_final.pth", weights_only=False)
    # as if killed during iteration 2: model_0000001 is the last complete checkpoint
    os.remove(out / "model_final.pth")
    os.remove(out / "model_0000003.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    assert "ResumeStateHook" in torch.load(out / "model_0000001.pth", weights_only=False)[
        "trainer"
    ]["hooks"]
    args = _args(out, 4)
    args.opts += once
    args.resume = True
    train_net.main(args)
    resumed = torch.load(out / "model_final.pth", weights_only=False)
    assert resumed["iteration"] == ref["iteration"] == 3
    for k, v in ref["model"].items():
        assert torch.equal(resumed["model"][k], v), k


def test_lazy_eval_only_rejects_weights_that_leave_the_model_random(tiny_datasets, tmp_path):
    train_net.main(_args(tmp_path, 1))
    args = _args(tmp_path / "eval", 1)
    args.eval_only = True
    args.opts += [
        f"train.init_checkpoint={tmp_path / 'model_final.pth'}",
        "model.roi_heads.mask_head.conv_dims=[16,16,16]",  # another head than the one trained
    ]
    with pytest.raises(ValueError, match=r"model_final.pth lacks \d+ of the model's"):
        train_net.main(args)
