"""MultiMaskCOCOEvaluator's occlusion protocols: subsets by threshold, key names, mask names."""

import logging
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from multimask import add_multimask_config
from multimask.evaluation import MultiMaskCOCOEvaluator
from multimask.evaluation.occlusion import occlusion_subsets

SIZE = 96
# Amodal masks are 20 x 10 rectangles on a grid; the visible mask keeps the first `cols` columns,
# so the occlusion rate is 1 - cols / 20. Object 3 also has an explicit occlude_rate of 0.25 (its
# masks agree); object 6 has no visible mask (rate unknown).
COLS = [20, 18, 16, 15, 14, 10, None]
RATES = [0.0, 0.1, 0.2, 0.25, 0.3, 0.5, None]
DETECTED = (1, 4, 5)  # the objects the predictions find, perfectly
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def rect(i, cols=20):
    x0, y0 = 4 + (i % 3) * 30, 4 + (i // 3) * 30
    m = np.zeros((SIZE, SIZE), dtype=bool)
    m[y0 : y0 + 10, x0 : x0 + cols] = True
    return m


def rle(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("utf-8")
    return r


def dataset_dicts(names=("amodal", "visible"), explicit_rate=True):
    anns = []
    for i, cols in enumerate(COLS):
        x0, y0 = 4 + (i % 3) * 30, 4 + (i // 3) * 30
        ann = {
            "bbox": [x0, y0, 20, 10],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 0,
            "multimask": {
                names[0]: [[x0, y0, x0 + 20, y0, x0 + 20, y0 + 10, x0, y0 + 10]],
                names[1]: None if cols is None else rle(rect(i, cols)),
            },
        }
        if i == 3 and explicit_rate:
            ann["occlude_rate"] = 0.25
        anns.append(ann)
    image = {"file_name": "a.png", "image_id": 1, "height": SIZE, "width": SIZE}
    return [dict(image, annotations=anns)]


def register(name, names=("amodal", "visible"), explicit_rate=True):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: dataset_dicts(names, explicit_rate))
        MetadataCatalog.get(name).set(thing_classes=["thing"], mask_names=list(names))
    return name


def predictions(detected=DETECTED):
    """The true amodal and visible masks of the `detected` objects, scores descending."""
    masks = np.stack([np.stack([rect(i), rect(i, COLS[i] or 20)]) for i in detected])
    inst = Instances((SIZE, SIZE))
    inst.pred_multimasks = torch.from_numpy(masks)  # (N, 2, H, W)
    corners = [(4 + (i % 3) * 30, 4 + (i // 3) * 30) for i in detected]
    boxes = [[x, y, x + 20, y + 10] for x, y in corners]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.linspace(0.9, 0.5, len(detected))
    inst.pred_classes = torch.zeros(len(detected), dtype=torch.int64)
    return [{"image_id": 1, "height": SIZE, "width": SIZE}], [{"instances": inst}]


def expected_ap(in_subset):
    """AP when the detections hit len(found) of the subset's objects and nothing else."""
    found = [i for i in in_subset if i in DETECTED]
    recall = len(found) / len(in_subset)
    return 100.0 * np.count_nonzero(RECALL_THRESHOLDS <= recall + 1e-12) / 101


def evaluate(dataset, **kwargs):
    kwargs.setdefault("mask_names", ("amodal", "visible"))
    ev = MultiMaskCOCOEvaluator(dataset, distributed=False, eval_backend="pycocotools", **kwargs)
    ev.process(*predictions())
    return ev.evaluate()


def subset(rule):
    return [i for i, r in enumerate(RATES) if r is not None and rule(r)]


def test_thresholds_select_the_objects_occluded_more_than_t():
    results = evaluate(
        register("occ_protocols"),
        occluded_threshold=0.25,
        occlusion_thresholds=[0.4, 0.05, 0.25, 0.15],
    )
    suffixes = ["", "_occluded", "_occ0.05", "_occ0.15", "_occ0.25", "_occ0.4"]
    keys = [f"segm_{n}{s}" for n in ("amodal", "visible") for s in suffixes]
    assert list(results) == ["bbox"] + keys
    amodal = {k: v["AP"] for k, v in results.items() if k.startswith("segm_amodal")}
    assert amodal["segm_amodal"] == pytest.approx(expected_ap(range(len(COLS))))
    # _occluded is rate >= threshold: object 3 (occlude_rate 0.25) is in; _occ0.25 is rate > 0.25
    assert amodal["segm_amodal_occluded"] == pytest.approx(expected_ap(subset(lambda r: r >= 0.25)))
    for t in (0.05, 0.15, 0.25, 0.4):
        assert amodal[f"segm_amodal_occ{t:g}"] == pytest.approx(
            expected_ap(subset(lambda r: r > t))
        ), t
    assert amodal["segm_amodal_occ0.25"] == pytest.approx(100.0)  # objects 4 and 5, both found
    assert amodal["segm_amodal_occ0.15"] == pytest.approx(expected_ap([2, 3, 4, 5]))
    assert results["segm_visible_occ0.4"]["AP"] == pytest.approx(100.0)


def test_protocols_from_cfg_with_other_mask_names():
    cfg = get_cfg()
    add_multimask_config(cfg)
    assert list(cfg.MULTIMASK.OCCLUSION_THRESHOLDS) == [0.05, 0.15, 0.25, 0.4]
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["full", "seen"]
    cfg.MULTIMASK.OCCLUSION_MASKS = ["full", "seen"]
    cfg.MULTIMASK.OCCLUSION_THRESHOLDS = [0.15, 0.4]
    dataset = register("occ_protocols_full_seen", names=("full", "seen"), explicit_rate=False)
    results = evaluate(dataset, mask_names=None, cfg=cfg)
    assert "segm_full_occ0.15" in results and "segm_full_occ0.05" not in results
    # the rate of object 3 comes from its masks now: 1 - 150 / 200 = 0.25
    assert results["segm_full_occ0.15"]["AP"] == pytest.approx(expected_ap([2, 3, 4, 5]))
    assert results["segm_full_occ0.4"]["AP"] == pytest.approx(100.0)
    # _occluded: rate >= 0.1, object 1's rate (200 - 180) / 200 included
    occluded = expected_ap(subset(lambda r: r >= 0.1))
    assert results["segm_full_occluded"]["AP"] == pytest.approx(occluded)


def test_unknown_occlusion_masks_give_nan_and_a_warning(caplog):
    dataset = register("occ_protocols_unknown", names=("full", "seen"), explicit_rate=False)
    with caplog.at_level(logging.INFO, logger="multimask.evaluation"):
        results = evaluate(dataset, mask_names=("full", "seen"), occlusion_thresholds=[0.15])
    assert math.isnan(results["segm_full_occ0.15"]["AP"])
    assert math.isnan(results["segm_seen_occluded"]["AP"])
    assert results["segm_full"]["AP"] == pytest.approx(expected_ap(range(len(COLS))))
    assert "OCCLUSION_MASKS" in caplog.text


def test_empty_subset_is_nan_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="multimask.evaluation"):
        results = evaluate(register("occ_protocols"), occlusion_thresholds=[0.15, 0.9])
    assert math.isnan(results["segm_amodal_occ0.9"]["AP"])
    assert results["segm_amodal_occ0.15"]["AP"] == pytest.approx(expected_ap([2, 3, 4, 5]))
    assert "segm_amodal_occ0.9: no instance occluded > 0.9" in caplog.text


def test_bad_thresholds_and_masks_raise():
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        occlusion_subsets(0.1, [1.0])
    with pytest.raises(ValueError, match="repeat"):
        occlusion_subsets(0.1, [0.15, 0.150])
    with pytest.raises(ValueError, match="two different mask names"):
        MultiMaskCOCOEvaluator(register("occ_protocols"), occlusion_masks=["amodal"])
