"""
MultiMaskCOCOEvaluator's occlusion keys on hand-made objects whose expected AP is worked out
here: which instances each subset holds, which detections count, key names, mask names, errors.
"""

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
from multimask.evaluation.occlusion import check_occlusion_masks, check_occlusion_thresholds
from multimask.structures import derived_mask

SIZE = 96
# Amodal masks are 20 x 10 rectangles on a 3 x 3 grid; the visible mask keeps the first `cols`
# columns, so the occlusion rate is 1 - cols / 20. Object 3 also has an explicit occlude_rate of
# 0.25 (its masks agree); object 7 has no visible mask (occlusion unknown). Cell 8 is empty.
COLS = [20, 18, 17, 15, 14, 12, 10, None]
RATES = [0.0, 0.1, 0.15, 0.25, 0.3, 0.4, 0.5, None]
DETECTED = (1, 4, 5)  # the objects the predictions find, perfectly
FP_CELL, FP_COLS = 8, 17  # a false positive, predicted 17 / 20 visible (0.85, float32 above)
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
        amodal = [[x0, y0, x0 + 20, y0, x0 + 20, y0 + 10, x0, y0 + 10]]
        visible = None if cols is None else rle(rect(i, cols))
        multimask = {names[0]: amodal, names[1]: visible}
        if len(names) > 2:
            multimask[names[2]] = None if cols is None else derived_mask("-", amodal, visible)
        ann = {"bbox": [x0, y0, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
        ann["multimask"] = multimask
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


def predictions(detected=DETECTED, false_positive=True, k=2):
    """
    The true masks (amodal, visible, then occluded if k = 3) of the `detected` objects, scores
    descending, after a false positive scored 0.95 in the empty cell (17 / 20 visible).
    """
    cells = [(i, COLS[i] or 20) for i in detected]
    if false_positive:
        cells = [(FP_CELL, FP_COLS)] + cells
    masks = []
    for i, cols in cells:
        amodal, visible = rect(i), rect(i, cols)
        masks.append(np.stack([amodal, visible, amodal & ~visible][:k]))
    inst = Instances((SIZE, SIZE))
    inst.pred_multimasks = torch.from_numpy(np.stack(masks))  # (N, k, H, W)
    corners = [(4 + (i % 3) * 30, 4 + (i // 3) * 30) for i, _ in cells]
    inst.pred_boxes = Boxes(torch.tensor([[x, y, x + 20, y + 10] for x, y in corners]).float())
    inst.scores = torch.linspace(0.95, 0.5, len(cells))
    inst.pred_classes = torch.zeros(len(cells), dtype=torch.int64)
    return [{"image_id": 1, "height": SIZE, "width": SIZE}], [{"instances": inst}]


def coco_ap(hits, num_gt):
    """COCO's 101-point AP of detections ranked by score (True: a true positive at every IoU)."""
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # interpolated
    recall = tp / num_gt
    idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    return 100.0 * np.where(idx < len(hits), precision[np.minimum(idx, len(hits) - 1)], 0).mean()


def expected(in_subset, fp_counts):
    """AP on the objects `in_subset` when the false positive comes first (or is ignored)."""
    # the detections of objects outside the subset are ignored
    hits = [True] * sum(i in in_subset for i in DETECTED)
    return coco_ap(([False] if fp_counts else []) + hits, len(in_subset))


def occluded_at_least(t):
    return [i for i, r in enumerate(RATES) if r is not None and r >= t]


def evaluate(dataset, k=2, **kwargs):
    kwargs.setdefault("mask_names", ("amodal", "visible", "occluded")[:k])
    ev = MultiMaskCOCOEvaluator(dataset, distributed=False, eval_backend="pycocotools", **kwargs)
    ev.process(*predictions(k=k))
    return ev.evaluate()


def test_subsets_hold_the_objects_occluded_at_least_t():
    results = evaluate(
        register("occ_protocols"), occluded_threshold=0.25, occlusion_thresholds=[0.4, 0.15, 0.25]
    )
    suffixes = ["", "_occluded", "_occ0.15", "_occ0.25", "_occ0.4"]
    suffixes += ["_occ0.15_strict", "_occ0.25_strict", "_occ0.4_strict"]
    keys = [f"segm_{n}{s}" for n in ("amodal", "visible") for s in suffixes]
    assert list(results) == ["bbox"] + keys
    ap = {k: v["AP"] for k, v in results.items()}
    # all objects but the unknown one count (its visible mask is a crowd region of "visible")
    assert ap["segm_amodal"] == pytest.approx(expected(range(len(COLS)), True))
    # >= t: object 2 (exactly 15 % hidden) is in _occ0.15, object 3 (occlude_rate 0.25) in
    # _occ0.25 and _occluded, object 5 (exactly 40 %) in _occ0.4
    for t in (0.15, 0.25, 0.4):
        subset = occluded_at_least(t)
        # the false positive is 17 / 20 visible, in float32 above 0.85: outside every subset
        assert ap[f"segm_amodal_occ{t:g}"] == pytest.approx(expected(subset, False)), t
        assert ap[f"segm_amodal_occ{t:g}_strict"] == pytest.approx(expected(subset, True)), t
        assert ap[f"segm_visible_occ{t:g}"] == pytest.approx(expected(subset, False)), t
    assert ap["segm_amodal_occluded"] == pytest.approx(expected(occluded_at_least(0.25), True))
    assert ap["segm_amodal_occ0.4"] == pytest.approx(expected([5, 6], False))  # 1 of 2 found
    # the subset keys report the metrics of an area range: AP, AP50, AP75 and per class
    assert set(results["segm_amodal_occ0.15"]) == {"AP", "AP50", "AP75", "AP-thing"}
    assert "APs" in results["segm_amodal_occluded"]


def test_a_false_positive_counts_in_the_subsets_its_prediction_falls_into():
    # predicted 15 / 20 visible (0.75 exactly in float32): in _occ0.15 and _occ0.25, not _occ0.4
    global FP_COLS
    saved, FP_COLS = FP_COLS, 15
    try:
        results = evaluate(register("occ_protocols"), occlusion_thresholds=[0.15, 0.25, 0.4])
    finally:
        FP_COLS = saved
    for t, counts in ((0.15, True), (0.25, True), (0.4, False)):
        subset = occluded_at_least(t)
        assert results[f"segm_amodal_occ{t:g}"]["AP"] == pytest.approx(expected(subset, counts))


def test_protocols_from_cfg_with_other_mask_names():
    cfg = get_cfg()
    add_multimask_config(cfg)
    assert list(cfg.MULTIMASK.OCCLUSION_THRESHOLDS) == [0.15, 0.25, 0.4]
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["full", "seen"]
    cfg.MULTIMASK.OCCLUSION_MASKS = ["full", "seen"]
    cfg.MULTIMASK.OCCLUSION_THRESHOLDS = [0.15, 0.4]
    dataset = register("occ_protocols_full_seen", names=("full", "seen"), explicit_rate=False)
    results = evaluate(dataset, mask_names=None, cfg=cfg)
    assert "segm_full_occ0.15" in results and "segm_full_occ0.25" not in results
    # the rate of object 3 comes from its masks now: 1 - 150 / 200 = 0.25
    assert results["segm_full_occ0.15"]["AP"] == pytest.approx(expected([2, 3, 4, 5, 6], False))
    assert results["segm_full_occ0.4_strict"]["AP"] == pytest.approx(expected([5, 6], True))
    # _occluded: occluded >= 0.1, object 1's (200 - 180) / 200 included
    occluded = expected(occluded_at_least(0.1), True)
    assert results["segm_full_occluded"]["AP"] == pytest.approx(occluded)


def test_the_dataset_area_is_the_denominator():
    """As the forks divide by the file's ``area``: object 2 (17 / 20 columns) with an area of 180
    is 170 / 180 visible, less than 15 % hidden."""

    def dicts():
        d = dataset_dicts(explicit_rate=False)
        d[0]["annotations"][2]["area"] = 180.0
        return d

    name = "occ_protocols_area"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, dicts)
        MetadataCatalog.get(name).set(thing_classes=["thing"])
    results = evaluate(name, occlusion_thresholds=[0.15])
    assert results["segm_amodal_occ0.15"]["AP"] == pytest.approx(expected([3, 4, 5, 6], False))


def test_without_predicted_occlusion_masks_the_forks_rule_is_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="multimask.evaluation"):
        ev = MultiMaskCOCOEvaluator(
            register("occ_protocols"),
            mask_names=("amodal",),
            distributed=False,
            occlusion_thresholds=[0.15],
        )
        inputs, outputs = predictions()
        outputs[0]["instances"].pred_multimasks = outputs[0]["instances"].pred_multimasks[:, :1]
        ev.process(inputs, outputs)
        results = ev.evaluate()
    assert math.isnan(results["segm_amodal_occ0.15"]["AP"])
    assert "does not predict both 'amodal' and 'visible'" in caplog.text
    # the ground truth alone selects the strict subsets
    strict = results["segm_amodal_occ0.15_strict"]["AP"]
    assert strict == pytest.approx(expected([2, 3, 4, 5, 6], True))


def test_unknown_occlusion_masks_give_nan_and_a_warning(caplog):
    dataset = register("occ_protocols_unknown", names=("full", "seen"), explicit_rate=False)
    with caplog.at_level(logging.INFO, logger="multimask.evaluation"):
        results = evaluate(dataset, mask_names=("full", "seen"), occlusion_thresholds=[0.15])
    assert math.isnan(results["segm_full_occ0.15_strict"]["AP"])
    assert math.isnan(results["segm_seen_occluded"]["AP"])
    assert results["segm_full"]["AP"] == pytest.approx(expected(range(len(COLS)), True))
    assert "OCCLUSION_MASKS" in caplog.text


def test_empty_subset_is_nan_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="multimask.evaluation"):
        results = evaluate(register("occ_protocols"), occlusion_thresholds=[0.15, 0.9])
    assert math.isnan(results["segm_amodal_occ0.9"]["AP"])
    assert math.isnan(results["segm_amodal_occ0.9_strict"]["AP"])
    assert results["segm_amodal_occ0.15"]["AP"] == pytest.approx(expected([2, 3, 4, 5, 6], False))
    assert "segm_amodal_occ0.9: no instance occluded >= 0.9" in caplog.text


def test_uoais_key_counts_the_occluded_regions_of_the_images_with_an_occluded_detection():
    names = ("amodal", "visible", "occluded")
    dataset = register("occ_protocols_uoais", names=names)
    results = evaluate(dataset, k=3)
    # ground truth: the occluded masks of objects > 5 % hidden (1-6; 7 unknown: not annotated);
    # detections predicted < 95 % visible: the false positive (17 / 20) and objects 1, 4, 5
    assert list(results)[-1] == "segm_occluded_uoais"
    assert results["segm_occluded_uoais"]["AP"] == pytest.approx(coco_ap([False] + [True] * 3, 6))
    # an image whose detections are all unoccluded is not evaluated: its objects are not missed
    ev = MultiMaskCOCOEvaluator(dataset, names, distributed=False, eval_backend="pycocotools")
    inputs, outputs = predictions(detected=(0,), false_positive=False, k=3)
    ev.process(inputs, outputs)
    assert math.isnan(ev.evaluate()["segm_occluded_uoais"]["AP"])


def test_bad_thresholds_and_masks_raise():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        check_occlusion_thresholds([1.5])
    with pytest.raises(ValueError, match="repeat"):
        check_occlusion_thresholds([0.15, 0.150])
    assert check_occlusion_masks(["a", "v"]) == ("a", "v", None)
    assert check_occlusion_masks(["a", "v", "o"]) == ("a", "v", "o")
    with pytest.raises(ValueError, match="two or three different mask names"):
        MultiMaskCOCOEvaluator(register("occ_protocols"), occlusion_masks=["amodal"])
    with pytest.raises(ValueError, match="two or three different mask names"):
        check_occlusion_masks(["a", "a"])
