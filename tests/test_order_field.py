"""
The dataset's own occlusion order (``occludes`` ids -> the image's ``occlusion_order``) and
OOACC scored against it (``MULTIMASK.ORDER_GT``).
"""

import uuid

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from multimask.config import get_multimask_cfg
from multimask.data.datasets.coco import load_multimask_coco_json
from multimask.evaluation import MultiMaskCOCOEvaluator

from .test_data_coco import AMODAL_VISIBLE, ann, write_dataset
from .test_occlusion_order import AMODAL, VISIBLE, H, W, _output, rle

SQUARE = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]


def _load(tmp_path, anns):
    json_file, image_root = write_dataset(tmp_path, anns)
    return load_multimask_coco_json(json_file, image_root, AMODAL_VISIBLE)


def test_occludes_ids_become_position_pairs(tmp_path):
    anns = [
        ann(1, segmentation=SQUARE, occludes=[3, 2]),
        ann(2, segmentation=[[1.0, 1.0]], occludes=[]),  # no valid mask: dropped at load
        ann(3, segmentation=SQUARE, occludes=[]),
    ]
    (d,) = _load(tmp_path, anns)
    assert len(d["annotations"]) == 2
    # annotation 1 (position 0) occludes 3 (position 1); the dropped 2 is left out
    assert d["occlusion_order"] == [[0, 1]]
    # a file without the key: no stated order
    (d,) = _load(tmp_path, [ann(1, segmentation=SQUARE)])
    assert "occlusion_order" not in d


def test_bad_occludes_are_errors_naming_the_annotation(tmp_path):
    with pytest.raises(ValueError, match=r"ann.json: annotation id 1 \(image id 7\).*\[9\]"):
        _load(tmp_path, [ann(1, segmentation=SQUARE, occludes=[9])])
    with pytest.raises(ValueError, match=r"image id 7: annotations \[2\] have no 'occludes'"):
        _load(tmp_path, [ann(1, segmentation=SQUARE, occludes=[]), ann(2, segmentation=SQUARE)])
    with pytest.raises(ValueError, match=r"annotation id 1 .*must be a list of annotation ids"):
        _load(tmp_path, [ann(1, segmentation=SQUARE, occludes=2)])


@pytest.fixture()
def stated_scene():
    """The scene of test_occlusion_order (A > B > C by the masks, D alone), with a stated order."""
    name = f"stated_{uuid.uuid4().hex[:8]}"
    annos = [
        {"bbox": [0, 0, 1, 1], "bbox_mode": 0, "category_id": 0, "iscrowd": 0,
         "multimask": {"amodal": rle(a), "visible": rle(v)}}
        for a, v in zip(AMODAL, VISIBLE)
    ]  # fmt: skip
    # the dataset states A > B, B > C as the masks do, and D > A, which no mask shows
    dicts = [{"file_name": "1.png", "image_id": 1, "height": H, "width": W,
              "annotations": annos, "occlusion_order": [[0, 1], [1, 2], [3, 0]]}]  # fmt: skip
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["obj"], mask_names=["amodal", "visible"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("order_gt, correct", [("auto", 11), ("masks", 12)])
def test_ooacc_against_the_stated_order(stated_scene, order_gt, correct):
    perfect = [(AMODAL[k], VISIBLE[k]) for k in range(4)]
    ev = MultiMaskCOCOEvaluator(stated_scene, mask_names=["amodal", "visible"], distributed=False,
                                order_eval=True, order_gt=order_gt,
                                occlusion_thresholds=[])  # fmt: skip
    ev.reset()
    ev.process([{"image_id": 1}], [_output(perfect, [0.9] * 4)])
    order = ev.evaluate()["order"]
    # predictions equal to the masks: every pair right against the masks' order; against the
    # stated one, D -> A is missed (D's visible mask does not touch A): 11 of the 12 pairs
    assert (order["correct"], order["pairs"]) == (correct, 12)
    assert order["OOACC"] == pytest.approx(100 * correct / 12)
    assert order["images_stated_order"] == (1 if order_gt == "auto" else 0)


def test_order_gt_option_is_checked(stated_scene):
    cfg = get_multimask_cfg(None, ["MULTIMASK.ORDER_GT", "depth"])
    with pytest.raises(ValueError, match=r"MULTIMASK.ORDER_GT .*\('auto', 'masks'\).*'depth'"):
        MultiMaskCOCOEvaluator(stated_scene, cfg=cfg, distributed=False)
