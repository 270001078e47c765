"""``occluders(NAME)`` masks: the union of the other objects in front, cropped to the object's box."""

import numpy as np
import pytest
import torch

from multimask.data.datasets.coco import load_multimask_coco_json
from multimask.data.datasets.mask_fields import MaskFields
from multimask.data.detection_utils import multimask_annotations_to_instances

from .test_data_coco import H, W, ann, bits, write_dataset

FIELDS = {"amodal": "segmentation", "visible": "visible", "occluder": "occluders(visible)"}


def _box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _box_mask(x0, y0, x1, y1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _three_objects(tmp_path):
    # a: front (order 1), b: behind a and overlapping it (order 2), c: far right, alone (order 1)
    anns = [
        ann(1, segmentation=_box_polygon(5, 5, 25, 25), visible=_box_polygon(5, 5, 25, 25),
            bbox=[5, 5, 20, 20], order=1),
        ann(2, segmentation=_box_polygon(15, 10, 35, 30), visible=_box_polygon(25, 10, 35, 30),
            bbox=[15, 10, 20, 20], order=2),
        ann(3, segmentation=_box_polygon(45, 5, 55, 15), visible=_box_polygon(45, 5, 55, 15),
            bbox=[45, 5, 10, 10], order=1),
    ]  # fmt: skip
    return write_dataset(tmp_path, anns)


def test_occluders_follow_the_depth_order(tmp_path):
    json_file, image_root = _three_objects(tmp_path)
    (d,) = load_multimask_coco_json(json_file, image_root, FIELDS, depth_key="order")
    a, b, c = (x["multimask"]["occluder"] for x in d["annotations"])
    # b is occluded by a's visible mask, cropped to b's box; a (in front) and c (alone) by nothing
    np.testing.assert_array_equal(bits(b), _box_mask(5, 5, 25, 25) & _box_mask(15, 10, 35, 30))
    assert a == [] and c == []  # annotated, empty
    assert d["annotations"][1]["order"] == 2  # the depth key is kept in the dataset dicts


def test_occluders_without_order_take_every_overlapping_object(tmp_path):
    json_file, image_root = _three_objects(tmp_path)
    (d,) = load_multimask_coco_json(json_file, image_root, FIELDS)
    a, b, c = (bits(x["multimask"]["occluder"]) for x in d["annotations"])
    np.testing.assert_array_equal(a, _box_mask(25, 10, 35, 30) & _box_mask(5, 5, 25, 25))
    np.testing.assert_array_equal(b, _box_mask(5, 5, 25, 25) & _box_mask(15, 10, 35, 30))
    assert not c.any()


def test_occluder_masks_train_through_the_mapper(tmp_path):
    json_file, image_root = _three_objects(tmp_path)
    (d,) = load_multimask_coco_json(json_file, image_root, FIELDS, depth_key="order")
    names = ("amodal", "visible", "occluder")
    inst = multimask_annotations_to_instances(d["annotations"], (H, W), names)
    mm = inst.gt_multimask
    assert mm.annotated.all()
    expected = np.stack([bits(x["multimask"]["occluder"]) for x in d["annotations"]])
    np.testing.assert_array_equal(mm.tensor[:, 2].numpy(), expected)
    # the ROI targets are those of the other object's polygon on this object's ROI, inside its box
    crops = mm.crop_and_resize(inst.gt_boxes.tensor, 20)
    assert crops[1, 2].any() and not crops[0, 2].any() and not crops[2, 2].any()
    assert torch.equal(crops[1, 2], crops[1, 2] & ~crops[1, 1])  # a's visible lies outside b's


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"a": "segmentation", "o": "occluders(nope)"}, "another mask name"),
        ({"a": "segmentation", "o": "occluders(o)"}, "another mask name"),
        ({"a": "segmentation", "o": "occluders(a)", "x": "a - o"}, "occluder mask 'o'"),
    ],
)
def test_occluder_mapping_errors_name_the_entry(fields, match):
    with pytest.raises(ValueError, match=match):
        MaskFields(fields)
