"""AmodalSynthDrive readers: the per-frame layout (``asd_instances``) and APSNet's COCO conversion
(``asd_apsnet``), on fixtures in the released field layouts."""

import json
import os
import uuid

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from multimask.data.datasets.amodal import load_amodal_json, register_amodal_instances
from multimask.structures import segmentation_to_bitmask

from .test_data_coco import rle_of, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 60


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


CAR, PERSON, PERSON_FULL = rect(5, 30, 5, 30), rect(10, 35, 30, 45), rect(10, 35, 20, 45)


def write_asd(root, entries=None, id_map=None, image_size=(H, W)):
    """One video, one frame, as released: <video>/<frame>_aminseg.{json,png} and the RGB jpg."""
    gt, img = os.path.join(root, "amodal_instance_seg/front"), os.path.join(root, "images/front")
    for d in (gt, img):
        os.makedirs(os.path.join(d, "vid01"), exist_ok=True)
    cv2.imwrite(os.path.join(img, "vid01", "front_full_0022_rgb.jpg"),
                np.zeros((*image_size, 3), np.uint8))
    if id_map is None:
        id_map = np.zeros((H, W), np.uint16)
        id_map[CAR] = 3
        id_map[PERSON] = 1205  # ids above 255: a 16-bit map
    cv2.imwrite(os.path.join(gt, "vid01", "front_full_0022_aminseg.png"), id_map)
    if entries is None:
        entries = {
            "3": {"category_id": 26, "track_id": 3, "occluded": False, "amodal_mask": [],
                  "occlusion_mask": []},
            "1205": {"category_id": 24, "track_id": 9, "occluded": True,
                     "amodal_mask": rle_of(PERSON_FULL),
                     "occlusion_mask": rle_of(PERSON_FULL & ~PERSON)},
            # S-AModal's wrong label (21 for a truck), unoccluded and with no pixel: dropped
            "40": {"category_id": 21, "track_id": 4, "occluded": False, "amodal_mask": [],
                   "occlusion_mask": []},
        }
    with open(os.path.join(gt, "vid01", "front_full_0022_aminseg.json"), "w") as f:
        json.dump(entries, f)
    return gt, img


def bits(segm):
    return segmentation_to_bitmask(segm, H, W)


def test_asd_instances(tmp_path):
    gt, img = write_asd(tmp_path)
    name = f"test_asd_{uuid.uuid4().hex}"
    register_amodal_instances(name, "asd_instances", gt, img)
    assert MetadataCatalog.get(name).thing_classes == [
        "person", "rider", "car", "truck", "bus", "motor", "bike"
    ]
    (d,) = DatasetCatalog.get(name)
    assert d["image_id"] == "vid01/front_full_0022"
    assert d["file_name"] == os.path.join(img, "vid01", "front_full_0022_rgb.jpg")
    car, person = d["annotations"]
    assert (car["category_id"], person["category_id"]) == (2, 0)
    assert (car["track_id"], person["track_id"]) == (3, 9)
    np.testing.assert_array_equal(bits(car["multimask"]["amodal"]), CAR)
    assert car["multimask"]["amodal"] is car["multimask"]["visible"]  # one RLE, shared
    assert car["multimask"]["occluded"] == [] and car["occlude_rate"] == 0.0
    np.testing.assert_array_equal(bits(person["multimask"]["visible"]), PERSON)
    assert person["multimask"]["amodal"]["counts"] == rle_of(PERSON_FULL)["counts"]  # as given
    np.testing.assert_array_equal(bits(person["multimask"]["occluded"]), PERSON_FULL & ~PERSON)
    assert person["occlude_rate"] == pytest.approx(1 - PERSON.sum() / PERSON_FULL.sum())
    assert person["bbox"] == [20.0, 10.0, 25.0, 25.0]  # the amodal box


def test_asd_category_fix(tmp_path):
    id_map = np.zeros((H, W), np.uint16)
    id_map[CAR] = 40
    entries = {"40": {"category_id": 21, "occluded": False, "amodal_mask": []}}
    gt, img = write_asd(tmp_path, entries, id_map)
    (d,) = load_amodal_json(gt, img, "asd_instances")
    assert d["annotations"][0]["category_id"] == 3  # truck, S-AModal's fix of id 21


def test_asd_bad_input_names_the_frame(tmp_path):
    entries = {"3": {"category_id": 26, "occluded": False}}
    gt, img = write_asd(tmp_path / "a", entries)
    with pytest.raises(ValueError, match=r"front_full_0022_aminseg.png: instance ids \[1205\] of "
                       r"the id map have no entry in .*vid01/front_full_0022_aminseg.json"):
        load_amodal_json(gt, img, "asd_instances")
    gt, img = write_asd(tmp_path / "b", image_size=(H, W + 4))
    with pytest.raises(ValueError, match=r"0022_aminseg.png is 40 x 60 .* image is 40 x 64"):
        load_amodal_json(gt, img, "asd_instances")
    wrong_size = rle_of(np.ones((H + 1, W), bool))
    entries = {"3": {"category_id": 26, "occluded": False},
               "1205": {"category_id": 24, "occluded": True, "amodal_mask": wrong_size}}
    gt, img = write_asd(tmp_path / "c", entries)
    with pytest.raises(ValueError, match=r"annotation id vid01/front_full_0022_aminseg.json "
                       r"instance 1205 .*RLE of size \[41, 60\]"):
        load_amodal_json(gt, img, "asd_instances")
    entries = {"3": {"category_id": 26, "occluded": False}, "1205": {"category_id": 24,
                                                                      "occluded": True}}
    gt, img = write_asd(tmp_path / "d", entries)
    with pytest.raises(ValueError, match=r"instance 1205 is occluded but has no 'amodal_mask'"):
        load_amodal_json(gt, img, "asd_instances")
    with pytest.raises(FileNotFoundError, match=r"no <video>/<frame>_aminseg.json file under"):
        load_amodal_json(str(tmp_path / "d"), img, "asd_instances")


def poly(m):
    ys, xs = np.nonzero(m)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]


def test_asd_apsnet_coco_swapped_roles(tmp_path):
    """APSNet's conversion: `segmentation` / `bbox` are the visible ones."""
    anns = [
        {"id": 0, "image_id": 7, "category_id": 11, "iscrowd": 0, "occluded": True,
         "segmentation": poly(PERSON), "bbox": [30, 10, 15, 25],
         "amodal_segmentation": poly(PERSON_FULL), "amodal_bbox": [20, 10, 25, 25],
         "occlusion_segmentation": poly(PERSON_FULL & ~PERSON), "occluder_segmentation": poly(CAR)},
        {"id": 1, "image_id": 7, "category_id": 12, "iscrowd": 0, "occluded": 0,
         "segmentation": poly(CAR), "bbox": [5, 5, 25, 25], "amodal_segmentation": poly(CAR),
         "amodal_bbox": [5, 5, 25, 25], "occlusion_segmentation": [], "occluder_segmentation": []},
    ]
    json_file, image_root = write_dataset(
        tmp_path, anns, categories=[{"id": 11, "name": "person"}, {"id": 12, "name": "car"}]
    )
    (d,) = load_amodal_json(json_file, image_root, "asd_apsnet",
                            mask_fields={"occluder": "occluder_segmentation"})
    person, car = d["annotations"]
    assert person["bbox"] == [20.0, 10.0, 25.0, 25.0]  # amodal_bbox, not the visible bbox
    np.testing.assert_array_equal(bits(person["multimask"]["amodal"]), PERSON_FULL)
    np.testing.assert_array_equal(bits(person["multimask"]["visible"]), PERSON)
    np.testing.assert_array_equal(bits(person["multimask"]["occluded"]), PERSON_FULL & ~PERSON)
    np.testing.assert_array_equal(bits(person["multimask"]["occluder"]), CAR)
    assert person["segmentation"] == person["multimask"]["amodal"]  # primary = amodal
    assert car["multimask"]["occluded"] == [] and car["multimask"]["occluder"] == []
