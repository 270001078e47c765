import logging

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from .common import get_tiny_config, get_tiny_model, make_training_input

NAMES = ("amodal", "visible")


def test_train_steps_reduce_loss_and_cover_empty_images():
    cfg = get_tiny_config()
    model = get_tiny_model(cfg)
    model.train()
    batch = [make_training_input(64, 3, NAMES, seed=1), make_training_input(64, 0, NAMES, seed=2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    with EventStorage(0):
        for _ in range(4):
            losses = model(batch)
            assert {"loss_mask_amodal", "loss_mask_visible", "loss_cls", "loss_rpn_cls"} <= set(losses)
            assert "loss_mask" not in losses
            total = sum(losses.values())
            assert torch.isfinite(total)
            opt.zero_grad()
            total.backward()
            opt.step()
            history.append(losses["loss_mask_amodal"].item() + losses["loss_mask_visible"].item())
    assert history[-1] < history[0]


def test_inference_pastes_every_mask_at_input_size():
    cfg = get_tiny_config(("amodal", "visible", "occluded"))
    cfg.MODEL.ROI_MULTI_MASK_HEAD.PRIMARY = "visible"
    model = get_tiny_model(cfg).eval()
    image = (torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 96, "width": 72}, {"image": image}])
    inst = out[0]["instances"]
    n = len(inst)
    assert n > 0  # SCORE_THRESH_TEST is 0 in the tiny config
    assert inst.image_size == (96, 72)
    assert inst.pred_multimasks.shape == (n, 3, 96, 72) and inst.pred_multimasks.dtype == torch.bool
    assert inst.pred_masks.shape == (n, 96, 72) and inst.pred_masks.dtype == torch.bool
    assert torch.equal(inst.pred_masks, inst.pred_multimasks[:, 1])
    assert out[1]["instances"].pred_multimasks.shape[1:] == (3, 64, 48)
    raw = model.inference([{"image": image}], do_postprocess=False)[0]
    assert raw.pred_multimasks.shape[1:] == (3, 28, 28)


def _mask_rcnn_state_dict(num_classes=3):
    cfg = get_tiny_config()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    torch.manual_seed(123)
    return build_model(cfg).state_dict()


def test_mask_rcnn_checkpoint_fills_every_branch(tmp_path):
    sd = _mask_rcnn_state_dict()
    torch.save({"model": sd}, tmp_path / "mask_rcnn.pth")
    for shared in (-1, 0, 1):
        cfg = get_tiny_config()
        cfg.MODEL.ROI_MULTI_MASK_HEAD.SHARED_CONVS = shared
        model = get_tiny_model(cfg)
        DetectionCheckpointer(model).load(str(tmp_path / "mask_rcnn.pth"))
        own = model.state_dict()
        src = "roi_heads.mask_head."
        for layer in ("mask_fcn1", "mask_fcn2", "deconv", "predictor"):
            for name in NAMES:
                key = next(
                    k for k in (f"{src}trunk.{layer}.weight", f"{src}towers.{name}.{layer}.weight")
                    if k in own
                )
                assert torch.equal(own[key], sd[f"{src}{layer}.weight"]), (shared, key)
        assert torch.equal(
            own["backbone.bottom_up.stem.conv1.weight"], sd["backbone.bottom_up.stem.conv1.weight"]
        )


def test_predictor_of_other_class_count_is_skipped(tmp_path, caplog):
    torch.save({"model": _mask_rcnn_state_dict(num_classes=5)}, tmp_path / "m.pth")
    model = get_tiny_model()
    before = model.roi_heads.mask_head.towers["amodal"].predictor.weight.clone()
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(model).load(str(tmp_path / "m.pth"))
    assert torch.equal(model.roi_heads.mask_head.towers["amodal"].predictor.weight, before)
    assert "towers.amodal.predictor.weight" in caplog.text


def test_multimask_checkpoint_roundtrip(tmp_path):
    model = get_tiny_model()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("m")
    torch.manual_seed(99)
    other = build_model(get_tiny_config())
    DetectionCheckpointer(other).load(str(tmp_path / "m.pth"))
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
