"""MultiMaskBoxPredictor: masks for given boxes, one prediction per box, and its input checks."""
import numpy as np
import pytest
import torch

from detectron2.engine import DefaultPredictor

from multimask.engine import MultiMaskBoxPredictor

from .common import get_tiny_config

NAMES = ("amodal", "visible")
BOXES = [[2.5, 3.0, 40.0, 30.0], [10.0, 12.0, 60.0, 47.5], [0.0, 0.0, 70.0, 50.0]]


def _predictor(**overrides):
    cfg = get_tiny_config(NAMES)
    for key, value in overrides.items():
        node, *path = key.split(".")
        target = cfg
        for part in [node] + path[:-1]:
            target = target[part]
        target[path[-1]] = value
    torch.manual_seed(0)
    return MultiMaskBoxPredictor(cfg)


@pytest.fixture(scope="module")
def predictor():
    return _predictor()


@pytest.fixture(scope="module")
def image():
    return np.random.RandomState(0).randint(0, 256, (50, 70, 3), dtype=np.uint8)


def test_one_prediction_per_box_in_order(predictor, image):
    inst = predictor(image, BOXES, classes=[0, 2, 1], scores=[0.2, 0.9, 0.5])["instances"]
    assert len(inst) == 3 and inst.image_size == (50, 70)
    assert torch.equal(inst.pred_boxes.tensor, torch.tensor(BOXES))
    assert inst.pred_classes.tolist() == [0, 2, 1]
    assert torch.allclose(inst.scores, torch.tensor([0.2, 0.9, 0.5]))
    assert inst.pred_multimasks.shape == (3, 2, 50, 70)
    assert inst.pred_multimasks.dtype == torch.bool
    assert torch.equal(inst.pred_masks, inst.pred_multimasks[:, 0])
    # pasted on their boxes: no pixel outside a box (its pixels with centres inside, rounded out)
    for (x0, y0, x1, y1), masks in zip(BOXES, inst.pred_multimasks):
        outside = torch.ones(50, 70, dtype=torch.bool)
        outside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = False
        assert not masks[:, outside].any()
    assert inst.pred_multimasks.any()  # a random-init head is not all-empty: the check can fail


def test_order_and_batch_do_not_change_masks(predictor, image):
    classes = [0, 2, 1]
    ref = predictor(image, BOXES, classes)["instances"]
    rev = predictor(image, BOXES[::-1], classes[::-1])["instances"]
    assert torch.equal(rev.pred_multimasks, ref.pred_multimasks.flip(0))
    assert torch.equal(rev.scores, torch.ones(3))
    small = image[:40, :60].copy()
    outs = predictor.predict_batch([image, small], [BOXES, [[1, 1, 20, 30]]], [classes, [2]])
    # images of other sizes are padded into one batch; the masks of the first are unchanged
    assert torch.equal(outs[0]["instances"].pred_multimasks, ref.pred_multimasks)
    assert outs[1]["instances"].pred_multimasks.shape == (1, 2, 40, 60)


def test_boxes_of_a_detector_give_the_detectors_masks(image):
    """On the model's own detections, the masks are those of the end-to-end predictor."""
    cfg = get_tiny_config(NAMES)
    torch.manual_seed(0)
    detector = DefaultPredictor(cfg)
    dets = detector(image)["instances"]
    assert len(dets) > 0
    torch.manual_seed(0)
    boxes = MultiMaskBoxPredictor(cfg)
    boxes.model.load_state_dict(detector.model.state_dict())
    inst = boxes(image, dets.pred_boxes.tensor, dets.pred_classes, dets.scores)["instances"]
    agree = (inst.pred_multimasks == dets.pred_multimasks).float().mean()
    # the same boxes up to the float rescaling round trip
    assert agree > 0.999


def test_zero_boxes(predictor, image):
    inst = predictor(image, np.zeros((0, 4)), classes=[])["instances"]
    assert len(inst) == 0
    assert inst.pred_multimasks.shape == (0, 2, 50, 70)
    assert inst.pred_multimasks.dtype == torch.bool
    outs = predictor.predict_batch([image, image], [[], BOXES[:1]], [[], [1]])
    assert [len(o["instances"]) for o in outs] == [0, 1]


def test_class_agnostic_head_needs_no_classes(image):
    p = _predictor(**{"MODEL.ROI_MULTI_MASK_HEAD.CLS_AGNOSTIC_MASK": True})
    inst = p(image, BOXES)["instances"]
    assert inst.pred_classes.tolist() == [0, 0, 0]
    assert torch.equal(inst.scores, torch.ones(3))
    with_classes = p(image, BOXES, classes=[2, 1, 0])["instances"]
    assert torch.equal(with_classes.pred_multimasks, inst.pred_multimasks)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(boxes=BOXES), "class-specific"),
        (dict(boxes=[[1, 2, 1, 40]], classes=[0]), "degenerate"),
        (dict(boxes=[[5, 2, 4, 40]], classes=[0]), "degenerate"),
        (dict(boxes=[[1, 2, 70.5, 40]], classes=[0]), "outside"),
        (dict(boxes=[[-1, 2, 30, 40]], classes=[0]), "outside"),
        (dict(boxes=[[1, 2, 30, 51]], classes=[0]), "outside"),
        (dict(boxes=[[1, 2, float("nan"), 40]], classes=[0]), "not finite"),
        (dict(boxes=[[1, 2, float("inf"), 40]], classes=[0]), "not finite"),
        (dict(boxes=[[1, 2, 30, 40]], classes=[3]), r"not in \[0, 2\]"),
        (dict(boxes=[[1, 2, 30, 40]], classes=[-1]), r"not in \[0, 2\]"),
        (dict(boxes=[[1, 2, 30, 40]], classes=[0.5]), r"not in \[0, 2\]"),
        (dict(boxes=[[1, 2, 30, 40]], classes=[0, 1]), "2 classes for 1 boxes"),
        (dict(boxes=[[1, 2, 30, 40]], classes=[0], scores=[0.5, 1]), "2 scores for 1 boxes"),
        (dict(boxes=[[1, 2, 30, 40]], classes=[0], scores=[float("nan")]), "not finite"),
        (dict(boxes=[[1, 2, 30]], classes=[0]), r"shape \(N, 4\)"),
    ],
)
def test_bad_input_is_a_clear_error(predictor, image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor(image, **kwargs)


def test_batch_length_mismatch(predictor, image):
    with pytest.raises(ValueError, match="1 entries of boxes for 2 images"):
        predictor.predict_batch([image, image], [BOXES])
    with pytest.raises(ValueError, match="image 1: box 0"):
        predictor.predict_batch([image, image], [BOXES, [[0, 0, 80, 10]]], [[0, 1, 2], [0]])
