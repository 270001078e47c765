"""Amodal panoptic layout (formats ``amodal_panoptic`` and ``kitti360_aps``): things of a uint16
``*_ampano.png`` and their ``*_ampano.json`` entries, on a fixture in the released layout."""

import json
import os
import uuid

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from multimask.data.datasets.amodal import load_amodal_json, register_amodal_instances
from multimask.structures import segmentation_to_bitmask

from .test_data_coco import rle_of

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 60


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


PERSON, CAR, CAR_FULL, CARAVAN = (
    rect(5, 30, 5, 15), rect(10, 30, 30, 45), rect(10, 30, 20, 45), rect(32, 40, 40, 60)
)


def write_frame(root, entries=None, size=(H, W)):
    ann = os.path.join(root, "amodal_panoptic_seg", "front", "seq01")
    img = os.path.join(root, "images", "front", "seq01")
    for d in (ann, img):
        os.makedirs(d, exist_ok=True)
    cv2.imwrite(os.path.join(img, "0007_rgb.jpg"), np.zeros((*size, 3), np.uint8))
    pano = np.full((H, W), 7, np.uint16)  # stuff: road
    pano[PERSON] = 24 * 1000 + 1
    pano[CAR] = 26 * 1000 + 3
    pano[CARAVAN] = 29 * 1000 + 1  # a thing class without train id in ASD
    cv2.imwrite(os.path.join(ann, "0007_ampano.png"), pano)
    if entries is None:
        entries = {
            "24001": {"occluded": False},
            "26003": {"occluded": True, "amodal_mask": rle_of(CAR_FULL),
                      "occlusion_mask": rle_of(CAR_FULL & ~CAR)},
            "29001": {"occluded": False},
            "33002": {"occluded": True, "amodal_mask": rle_of(rect(0, 4, 0, 4)),
                      "occlusion_mask": rle_of(rect(0, 4, 0, 4))},  # no pixel: not an object
        }
    with open(os.path.join(ann, "0007_ampano.json"), "w") as f:
        json.dump(entries, f)
    return os.path.join(root, "amodal_panoptic_seg"), os.path.join(root, "images")


def bits(segm):
    return segmentation_to_bitmask(segm, H, W)


def test_amodal_panoptic_things(tmp_path):
    ann, img = write_frame(tmp_path)
    name = f"test_ampano_{uuid.uuid4().hex}"
    register_amodal_instances(name, "amodal_panoptic", ann, img)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["person", "car", "truck", "bus", "motor", "bike"]
    (d,) = DatasetCatalog.get(name)
    assert d["file_name"] == os.path.join(img, "front", "seq01", "0007_rgb.jpg")
    person, car = d["annotations"]  # the caravan is skipped, stuff too
    assert (person["category_id"], car["category_id"]) == (0, 1)
    np.testing.assert_array_equal(bits(person["multimask"]["amodal"]), PERSON)
    assert person["multimask"]["occluded"] == [] and person["occlude_rate"] == 0.0
    np.testing.assert_array_equal(bits(car["multimask"]["visible"]), CAR)
    np.testing.assert_array_equal(bits(car["multimask"]["amodal"]), CAR_FULL)
    np.testing.assert_array_equal(bits(car["multimask"]["occluded"]), CAR_FULL & ~CAR)
    assert car["occlude_rate"] == pytest.approx(1 - CAR.sum() / CAR_FULL.sum())


def test_kitti360_aps_classes_from_the_files(tmp_path):
    ann, img = write_frame(tmp_path)
    name = f"test_kitti360_{uuid.uuid4().hex}"
    register_amodal_instances(name, "kitti360_aps", ann, img)
    assert MetadataCatalog.get(name).get("thing_classes") is None  # not known before loading
    (d,) = DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).thing_classes == ["person", "car", "caravan"]
    assert [a["category_id"] for a in d["annotations"]] == [0, 1, 2]


def test_amodal_panoptic_bad_input_names_the_file(tmp_path):
    ann, img = write_frame(tmp_path / "a", entries={"24001": {"occluded": False}})
    with pytest.raises(ValueError, match=r"0007_ampano.png: thing id 26003 \(class 26\) has no "
                       r"entry in .*seq01/0007_ampano.json"):
        load_amodal_json(ann, img, "amodal_panoptic")
    ann, img = write_frame(tmp_path / "b", entries={"24001": {}, "26003": {"occluded": False}})
    with pytest.raises(ValueError, match=r"0007_ampano.json: thing 24001 has no 'occluded' flag"):
        load_amodal_json(ann, img, "amodal_panoptic")
    ann, img = write_frame(tmp_path / "c", size=(H - 1, W))
    with pytest.raises(ValueError, match=r"0007_ampano.png is 40 x 60 .* image is 39 x 60"):
        load_amodal_json(ann, img, "amodal_panoptic")
    ann, img = write_frame(tmp_path / "d")
    os.remove(os.path.join(img, "front", "seq01", "0007_rgb.jpg"))
    with pytest.raises(FileNotFoundError, match=r"frame front/seq01/0007: no image found; tried"):
        load_amodal_json(ann, img, "amodal_panoptic")


def test_kitti360_aps_builtin_names(tmp_path):
    """kitti360_aps_{train,val}: <split>/amodal_panoptic_seg and <split>/images under the root."""
    from multimask.data.datasets.builtin import BUILTIN_AMODAL_LAYOUT_SPLITS, _load_builtin

    fmt, image_dir, ann_dir = BUILTIN_AMODAL_LAYOUT_SPLITS["kitti360_aps_val"]
    ann, img = write_frame(tmp_path / "kitti360_aps" / "val")
    assert (str(tmp_path / ann_dir), str(tmp_path / image_dir)) == (ann, img)
    (d,) = _load_builtin("kitti360_aps_val", fmt, ann, img, str(tmp_path))
    assert [a["category_id"] for a in d["annotations"]] == [0, 1, 2]
    assert MetadataCatalog.get("kitti360_aps_val").thing_classes == ["person", "car", "caravan"]
