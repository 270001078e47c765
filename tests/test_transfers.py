"""
Host <-> device transfers on the target and loss path, counted with a fake accelerator
(tests/fake_device.py): ground truth already on the device, as the model's preprocessing puts it,
then what the ROI heads do in training (index the ground truth by the matched proposals) and the
mask head's forward and loss.

The budget: per image, one device-to-host copy (the ROIs' index and boxes: the leaves are host-side
and pycocotools rasterises polygons on the host, as detectron2's PolygonMasks does) and one
host-to-device copy (everything computed on the host, in one pinned buffer); per batch, one
device-to-host copy of the logged metrics.
"""

import numpy as np
import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from multimask.data.detection_utils import multimask_annotations_to_instances
from multimask.data.datasets.mask_fields import MaskFields
from multimask.modeling import build_multi_mask_head
from multimask.structures import roi_targets

from .common import get_tiny_config
from .fake_device import FAKE, TransferLog, module_on_device, on_device

NAMES = ["amodal", "visible", "occluded", "occluder"]
H, W = 60, 80


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _image(seed):
    """A dozen objects in every stored form: polygon amodal, RLE visible (some), the derived
    occluded, and the n-ary occluder union of the objects in front."""
    import pycocotools.mask as mask_util

    rng = np.random.default_rng(seed)
    annos = []
    for i in range(12):
        x0, y0 = rng.uniform(0, W - 25), rng.uniform(0, H - 20)
        x1, y1 = x0 + rng.uniform(8, 25), y0 + rng.uniform(8, 20)
        amodal = _square(x0, y0, x1, y1)
        visible = _square(x0, y0, (x0 + x1) / 2, y1)
        if i % 2:
            bits = np.zeros((H, W), dtype=np.uint8, order="F")
            bits[int(y0) + 1 : int(y1), int(x0) + 1 : int((x0 + x1) / 2)] = 1
            visible = mask_util.encode(bits)
        annos.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": 1, "category_id": i % 3,
                      "iscrowd": 0, "order": i, "segmentation": amodal, "visible": visible})  # fmt: skip
    fields = MaskFields(
        {"amodal": "segmentation", "visible": "visible", "occluded": "amodal - visible",
         "occluder": "occluders(visible)"}  # fmt: skip
    )
    for a in annos:  # the mapping, as the loaders apply it to the file's fields
        a["multimask"], _ = fields.resolve(a, H, W)
    fields.resolve_occluders(annos, depth_key="order")
    return multimask_annotations_to_instances(annos, (H, W), NAMES)


def _on_device(inst: Instances) -> Instances:
    """Ground truth as ``Instances.to(device)`` leaves it (not counted: the model's input copy)."""
    with TransferLog():
        return inst.to(FAKE)


def _proposals(gt: Instances, seed: int, fake: bool = True) -> Instances:
    """What ROI heads pass the mask head: sampled foreground proposals with their gt fields, the
    matching done on the device."""
    g = torch.Generator().manual_seed(seed)
    n = 64
    device = on_device if fake else (lambda t: t)
    matched = device(torch.randint(0, len(gt), (n,), generator=g))
    boxes = gt.gt_boxes.tensor.as_subclass(torch.Tensor)[matched.as_subclass(torch.Tensor)]
    jitter = (torch.rand(n, 4, generator=g) - 0.5) * 4
    proposals = Instances((H, W))
    proposals.proposal_boxes = Boxes(device((boxes + jitter).clamp(min=0)))
    proposals.gt_classes = gt.gt_classes[matched]
    proposals.gt_multimask = gt.gt_multimask[matched]
    return proposals


def _head(fake=True):
    cfg = get_tiny_config(NAMES)
    torch.manual_seed(0)
    head = build_multi_mask_head(cfg, ShapeSpec(channels=8, height=7, width=7))
    return module_on_device(head) if fake else head


def _run(head, num_images=2, fake=True):
    """The counted path: indexing by the matches, the head's forward, its loss and backward."""
    gts = [_image(seed) for seed in range(num_images)]
    gts = [_on_device(gt) for gt in gts] if fake else gts
    features = torch.randn(64 * num_images, 8, 7, 7, generator=torch.Generator().manual_seed(5))
    features = (on_device(features) if fake else features).requires_grad_(True)
    log = TransferLog()
    with EventStorage(), log:
        proposals = [_proposals(gt, seed, fake) for seed, gt in enumerate(gts)]
        losses = head(features, proposals)
        sum(losses.values()).backward()
    return log, losses


def test_target_and_loss_path_stays_within_the_transfer_budget():
    log, losses = _run(_head(), num_images=2)
    assert set(losses) == {f"loss_mask_{n}" for n in NAMES}
    _, on_cpu = _run(_head(fake=False), num_images=2, fake=False)  # the same numbers on the host
    for k, v in on_cpu.items():
        assert v > 0 and torch.equal(losses[k].as_subclass(torch.Tensor), v), k
    kinds = log.kinds()
    assert not [e for e in log.events if e[0].startswith("mixed")], log.events
    assert kinds.count("H2D") == 2, log.events  # one per image
    assert kinds.count("D2H:cpu") == 2, log.events  # one per image: index and boxes
    assert kinds.count("D2H:tolist") == 1, log.events  # one per batch: the metrics
    assert len(kinds) == 5, log.events


def test_the_counter_fails_past_the_budget(monkeypatch):
    """Sending each host array on its own (3 copies per image) is caught."""
    one_copy = roi_targets.host_to_device

    def separately(arrays, device):
        return [t for a in arrays for t in one_copy([a], device)]

    monkeypatch.setattr(roi_targets, "host_to_device", separately)
    log, _ = _run(_head(), num_images=2)
    assert log.kinds().count("H2D") == 6, log.events


@pytest.mark.parametrize(
    "code, kind",
    [
        (lambda d, h: d.sum().item(), "D2H:item"),
        (lambda d, h: d[d > 0], "D2H:bool index"),
        (lambda d, h: torch.tensor([1, 2], device=d.device), "H2D"),
        (lambda d, h: h.to(d.device), "H2D"),
        (lambda d, h: d[h], "mixed:__getitem__"),
        (lambda d, h: d.nonzero(), "D2H:nonzero"),
    ],
)
def test_the_counter_sees_each_kind_of_transfer(code, kind):
    d = on_device(torch.arange(4))
    h = torch.tensor([0, 1])
    with TransferLog() as log:
        code(d, h)
    assert log.kinds() == [kind]
