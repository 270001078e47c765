"""``occluders(NAME)`` masks: the union of the other objects in front, cropped to the object's box."""

import json

import numpy as np
import pytest
import torch

from multimask.data.datasets.amodal import AMODAL_FORMATS
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


def test_many_occluders_are_one_nary_union(tmp_path, monkeypatch):
    """Five objects in front of one: its occluder is one n-ary merge (not a chain of 4)."""
    import pycocotools.mask as mask_util

    fronts = [(2 + 9 * k, 2, 9 + 9 * k, 12) for k in range(5)]  # five boxes across the back one
    anns = [ann(1, segmentation=_box_polygon(0, 0, 50, 30), visible=_box_polygon(0, 20, 50, 30),
                bbox=[0, 0, 50, 30], order=9)]  # fmt: skip
    for k, (x0, y0, x1, y1) in enumerate(fronts):
        box = _box_polygon(x0, y0, x1, y1)
        anns.append(ann(2 + k, segmentation=box, visible=box, bbox=[x0, y0, x1 - x0, y1 - y0],
                        order=1))  # fmt: skip
    (d,) = load_multimask_coco_json(*write_dataset(tmp_path, anns), FIELDS, depth_key="order")
    occluder = d["annotations"][0]["multimask"]["occluder"]
    assert occluder["op"] == "&" and occluder["operands"][0]["op"] == "|"
    assert len(occluder["operands"][0]["operands"]) == 5
    merges = []
    merge = mask_util.merge
    monkeypatch.setattr(mask_util, "merge", lambda rles, **kw: merges.append(len(rles)) or merge(
        rles, **kw))  # fmt: skip
    expected = np.zeros((H, W), dtype=bool)
    for x0, y0, x1, y1 in fronts:
        expected |= _box_mask(x0, y0, x1, y1)
    np.testing.assert_array_equal(bits(occluder), expected & _box_mask(0, 0, 50, 30))
    # the union is one merge of 5 (a chain would be 4 merges of 2), then the '&' with the box
    assert merges.count(5) == 1 and merges.count(2) == 1


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


def _kins_objects(tmp_path):
    """
    Four objects in the KINS 2020 layout: a (cluster 1, ico_id 1, the front) overlaps b (cluster 1,
    ico_id 2); c (cluster 2, ico_id 1) is the front of its own cluster, and its box overlaps b's;
    d (cluster 3, ico_id 0: overlaps nothing, per the KINS README) has a box overlapping a's.
    """
    def obj(i, box, order, cluster):
        x0, y0, x1, y1 = box
        poly = _box_polygon(x0, y0, x1, y1)
        return ann(i, segmentation=poly, visible=poly, bbox=[x0, y0, x1 - x0, y1 - y0],
                   ico_id=order, oco_id=cluster)  # fmt: skip

    anns = [
        obj(1, (5, 5, 25, 25), 1, 1),
        obj(2, (15, 10, 35, 30), 2, 1),
        obj(3, (30, 20, 50, 35), 1, 2),
        obj(4, (0, 0, 8, 8), 0, 3),
    ]
    return write_dataset(tmp_path, anns)


def test_kins_ico_id_orders_objects_within_one_oco_id_cluster_only(tmp_path):
    json_file, image_root = _kins_objects(tmp_path)
    kwargs = dict(depth_key="ico_id", cluster_key="oco_id")
    (d,) = load_multimask_coco_json(json_file, image_root, FIELDS, **kwargs)
    a, b, c, e = (bits(x["multimask"]["occluder"]) for x in d["annotations"])
    # b: behind a in cluster 1; c's box overlaps b's and c has the smaller ico_id, but c is in
    # cluster 2: the two orders do not compare
    np.testing.assert_array_equal(b, _box_mask(5, 5, 25, 25) & _box_mask(15, 10, 35, 30))
    assert not a.any() and not c.any() and not e.any()
    assert [x["oco_id"] for x in d["annotations"]] == [1, 1, 2, 3]  # kept in the dataset dicts
    # one order for the whole image (what the loader did before): c would occlude b, d would
    # occlude a (ico_id 0 < 1)
    (d,) = load_multimask_coco_json(json_file, image_root, FIELDS, depth_key="ico_id")
    a, b = (bits(x["multimask"]["occluder"]) for x in d["annotations"][:2])
    assert (b & _box_mask(30, 20, 35, 30)).any() and a.any()


def test_kins_formats_read_the_clusters():
    for fmt in ("kins_2020", "kins_2019"):
        assert (AMODAL_FORMATS[fmt]["depth_key"], AMODAL_FORMATS[fmt]["cluster_key"]) == (
            "ico_id",
            "oco_id",
        )


def test_crowd_regions_are_never_occluders(tmp_path):
    crowd = ann(9, segmentation=_box_polygon(0, 0, 60, 40), visible=_box_polygon(0, 0, 60, 40),
                bbox=[0, 0, 60, 40], iscrowd=1, order=0)  # fmt: skip
    json_file, image_root = _three_objects(tmp_path)
    with open(json_file) as f:
        content = json.load(f)
    content["annotations"].append(crowd)
    with open(json_file, "w") as f:
        json.dump(content, f)
    for depth_key in ("order", None):
        (d,) = load_multimask_coco_json(json_file, image_root, FIELDS, depth_key=depth_key)
        *objects, region = d["annotations"]
        # in front of everything and overlapping everything, yet nobody's occluder
        a, b, c = (bits(x["multimask"]["occluder"]) for x in objects)
        np.testing.assert_array_equal(b, _box_mask(5, 5, 25, 25) & _box_mask(15, 10, 35, 30))
        assert not a.any() and not c.any()
        # the region's own occluder mask is the region, as its other masks are
        assert region["multimask"]["occluder"] is region["multimask"]["visible"]
