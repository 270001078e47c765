import math

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from multimask.modeling.relations import parse_relations, relation_losses

from .common import get_tiny_config, get_tiny_model, make_training_input

NAMES = ("amodal", "visible", "occluded")
LOGIT = {0.25: -math.log(3), 0.5: 0.0, 0.75: math.log(3), 1.0: 30.0, 0.0: -30.0}


def _logits(probs):
    """(R, K, M, M) logits whose sigmoid is `probs` (values from LOGIT's keys)."""
    p = torch.tensor(probs, dtype=torch.float64)
    return p.clone().apply_(lambda v: LOGIT[v])


def test_containment_on_hand_made_logits():
    # one ROI, 1x2 pixels; amodal, visible, occluded
    logits = _logits([[[[0.5, 0.25]], [[0.75, 0.25]], [[0.0, 0.0]]]])
    rel = parse_relations([["containment", "visible", "amodal", 0.5]], NAMES)
    loss = relation_losses(logits, rel)["loss_rel_containment_visible_amodal"]
    # relu(0.75 - 0.5) = 0.25 and relu(0.25 - 0.25) = 0, mean 0.125, times 0.5
    assert loss.item() == pytest.approx(0.0625, abs=1e-6)


def test_difference_on_hand_made_logits():
    # pixel 1: amodal 1, visible 0.25 -> target 0.75, occluded 0.75: no loss
    # pixel 2: amodal 0.5, visible 0.75 -> target 0, occluded 0.25: |0.25|
    # pixel 3: amodal 0.75, visible 0.25 -> target 0.5, occluded 0: |0.5|
    logits = _logits([[[[1.0, 0.5, 0.75]], [[0.25, 0.75, 0.25]], [[0.75, 0.25, 0.0]]]])
    rel = parse_relations([["difference", "occluded", "amodal", "visible", 2.0]], NAMES)
    loss = relation_losses(logits, rel)["loss_rel_difference_occluded_amodal_visible"]
    assert loss.item() == pytest.approx(2.0 * (0 + 0.25 + 0.5) / 3, abs=1e-6)


def test_consistent_binary_masks_cost_nothing():
    amodal = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    visible = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    masks = torch.stack([amodal, visible, amodal - visible])[None]  # (1, 3, 2, 2)
    logits = (masks * 2 - 1) * 30
    rel = parse_relations(
        [
            ["containment", "visible", "amodal", 1.0],
            ["difference", "occluded", "amodal", "visible", 1.0],
        ],
        NAMES,
    )
    for value in relation_losses(logits, rel).values():
        assert value.item() < 1e-6


def test_gradient_reaches_the_related_masks_only():
    logits = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    rel = parse_relations([["containment", "occluded", "amodal", 1.0]], NAMES)
    losses = relation_losses(logits, rel)
    losses["loss_rel_containment_occluded_amodal"].backward()
    grad = logits.grad
    assert grad[:, 0].abs().sum() > 0 and grad[:, 2].abs().sum() > 0
    assert torch.all(grad[:, 1] == 0)  # visible takes no part
    # the gradient lowers the inner mask and raises the outer one where inner > outer
    assert torch.all(grad[:, 2] >= 0) and torch.all(grad[:, 0] <= 0)

    logits.grad = None
    rel = parse_relations([["difference", "occluded", "amodal", "visible", 1.0]], NAMES)
    relation_losses(logits, rel)["loss_rel_difference_occluded_amodal_visible"].backward()
    assert all(logits.grad[:, k].abs().sum() > 0 for k in range(3))


def test_no_rois_gives_connected_zero():
    logits = torch.zeros(0, 3, 4, 4, requires_grad=True)
    rel = parse_relations([["containment", "visible", "amodal", 1.0]], NAMES)
    loss = relation_losses(logits, rel)["loss_rel_containment_visible_amodal"]
    assert loss.item() == 0
    loss.backward()
    assert relation_losses(logits, []) == {}


@pytest.mark.parametrize(
    "entry, message",
    [
        (["inside", "visible", "amodal", 0.1], "unknown relation type 'inside'"),
        (["containment", "visible", "modal", 0.1], "['modal'] are not in MASK_NAMES"),
        (["containment", "visible", "amodal", "occluded", 0.1], "takes 2 mask names"),
        (["difference", "occluded", "amodal", 0.1], "takes 3 mask names"),
        (["containment", "visible", "amodal", "high"], "weight >= 0"),
        (["containment", "visible", "amodal", -1.0], "weight >= 0"),
        (["containment", "visible", "visible", 0.1], "distinct masks"),
        ("containment visible amodal", "must be a list"),
    ],
)
def test_config_errors_name_the_entry(entry, message):
    with pytest.raises(ValueError) as e:
        parse_relations([["containment", "occluded", "amodal", 1], entry], NAMES)
    assert message in str(e.value)
    assert "MODEL.ROI_MULTI_MASK_HEAD.RELATIONS[1]" in str(e.value)


def test_duplicate_relation_is_an_error():
    entry = ["containment", "visible", "amodal", 0.1]
    with pytest.raises(ValueError, match="declared twice"):
        parse_relations([entry, entry], NAMES)


def test_model_build_validates_relations():
    cfg = get_tiny_config(NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.RELATIONS = [["containment", "visible", "amodel", 0.1]]
    with pytest.raises(ValueError, match=r"RELATIONS\[0\].*\['amodel'\]"):
        build_model(cfg)


def test_head_adds_weighted_relation_losses_and_trains():
    cfg = get_tiny_config(NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.RELATIONS = [
        ["containment", "visible", "amodal", 0.1],
        ["difference", "occluded", "amodal", "visible", 0.2],
    ]
    model = get_tiny_model(cfg).train()
    # the second image has no instance: its ROIs are all background
    batch = [make_training_input(64, 3, NAMES, seed=1), make_training_input(64, 0, NAMES, seed=2)]
    with EventStorage(0):
        losses = model(batch)
    rel_keys = {
        "loss_rel_containment_visible_amodal",
        "loss_rel_difference_occluded_amodal_visible",
    }
    assert rel_keys <= set(losses) and {f"loss_mask_{n}" for n in NAMES} <= set(losses)
    # at init every probability is ~0.5: containment ~0, difference ~|0.5 - 0| = 0.5, times 0.2
    assert losses["loss_rel_containment_visible_amodal"].item() < 1e-3
    assert losses["loss_rel_difference_occluded_amodal_visible"].item() == pytest.approx(
        0.1, abs=0.01
    )
    sum(losses.values()).backward()
    predictor = model.roi_heads.mask_head.towers["occluded"].predictor
    assert predictor.weight.grad is not None and predictor.weight.grad.abs().sum() > 0

    cfg.MODEL.ROI_MULTI_MASK_HEAD.RELATIONS = []
    with EventStorage(0):
        assert not any(k.startswith("loss_rel") for k in get_tiny_model(cfg).train()(batch))
