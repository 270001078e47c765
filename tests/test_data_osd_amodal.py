"""OSD-Amodal reader (format ``osd_amodal``) on a folder in UOAIS's released layout."""

import os
import uuid

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from multimask.data.datasets.amodal import load_amodal_json, register_amodal_instances
from multimask.data.datasets.builtin import _load_builtin
from multimask.structures import segmentation_to_bitmask

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 60


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


# object 1 in front; object 2 behind it (its left part hidden); object 3 hidden entirely by 1
FRONT, BACK, HIDDEN = rect(5, 30, 5, 25), rect(10, 35, 15, 50), rect(10, 20, 8, 18)


def write_osd(root, size=(H, W)):
    """learn0 as released: color image, visible id map, per-object amodal / occlusion PNGs."""
    for sub in ("image_color", "annotation", "amodal_annotation", "occlusion_annotation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    cv2.imwrite(os.path.join(root, "image_color", "learn0.png"), np.zeros((*size, 3), np.uint8))
    visible = np.zeros((H, W), np.uint8)
    visible[BACK] = 2
    visible[FRONT] = 1
    cv2.imwrite(os.path.join(root, "annotation", "learn0.png"), visible)
    for k, mask in ((1, FRONT), (2, BACK), (3, HIDDEN)):
        path = os.path.join(root, "amodal_annotation", f"learn0_{k}.png")
        cv2.imwrite(path, mask * np.uint8(255))
    for k, mask in ((2, BACK & FRONT), (3, HIDDEN)):
        path = os.path.join(root, "occlusion_annotation", f"learn0_{k}.png")
        cv2.imwrite(path, mask * np.uint8(255))
    return str(root), os.path.join(str(root), "image_color")


def bits(segm):
    return segmentation_to_bitmask(segm, H, W)


def test_osd_amodal_masks_as_rle(tmp_path):
    root, images = write_osd(tmp_path / "OSD-0.2-depth")
    name = f"test_osd_{uuid.uuid4().hex}"
    register_amodal_instances(name, "osd_amodal", root, images)
    meta = MetadataCatalog.get(name)
    # classes known before loading; the folder is no COCO ground truth for COCOEvaluator
    assert meta.thing_classes == ["object"] and meta.get("json_file") is None
    assert meta.annotation_path == root
    (d,) = DatasetCatalog.get(name)
    assert (d["file_name"], d["height"], d["width"]) == (os.path.join(images, "learn0.png"), H, W)
    front, back, hidden = d["annotations"]
    for obj, amodal, visible in ((front, FRONT, FRONT), (back, BACK, BACK & ~FRONT)):
        mm = obj["multimask"]
        assert all(isinstance(m, dict) and isinstance(m["counts"], str) for m in mm.values() if m)
        np.testing.assert_array_equal(bits(mm["amodal"]), amodal)
        np.testing.assert_array_equal(bits(mm["visible"]), visible)
        np.testing.assert_array_equal(bits(mm["occluded"]), amodal & ~visible)
    assert front["multimask"]["occluded"] == []  # no occlusion file: an annotated empty mask
    assert hidden["multimask"]["visible"] == []
    np.testing.assert_array_equal(bits(hidden["multimask"]["occluded"]), HIDDEN)
    assert front["occlude_rate"] == 0.0 and hidden["occlude_rate"] == 1.0
    assert back["occlude_rate"] == pytest.approx((BACK & FRONT).sum() / BACK.sum())
    assert back["bbox"] == [15.0, 10.0, 35.0, 25.0]
    assert [o["category_id"] for o in d["annotations"]] == [0, 0, 0]


def test_osd_amodal_bad_input_names_the_file(tmp_path):
    root, images = write_osd(tmp_path / "a")
    os.remove(os.path.join(root, "amodal_annotation", "learn0_2.png"))
    with pytest.raises(FileNotFoundError, match=r"annotation/learn0.png labels objects \[2\].*"
                       r"amodal_annotation/learn0_2.png does not exist"):
        load_amodal_json(root, images, "osd_amodal")
    root, images = write_osd(tmp_path / "b")
    os.remove(os.path.join(root, "amodal_annotation", "learn0_3.png"))
    with pytest.raises(ValueError, match=r"occlusion_annotation/learn0_3.png is the occlusion"):
        load_amodal_json(root, images, "osd_amodal")
    root, images = write_osd(tmp_path / "c", size=(H + 2, W))  # image and masks disagree
    with pytest.raises(ValueError, match=r"annotation/learn0.png is 40 x 60 .* image is 42 x 60"):
        load_amodal_json(root, images, "osd_amodal")
    root, images = write_osd(tmp_path / "d")
    os.rename(
        os.path.join(root, "amodal_annotation", "learn0_1.png"),
        os.path.join(root, "amodal_annotation", "learn0_x.png"),
    )
    with pytest.raises(ValueError, match=r"learn0_x.png: a per-object mask must be named"):
        load_amodal_json(root, images, "osd_amodal")
    root, images = write_osd(tmp_path / "e")
    os.remove(os.path.join(root, "annotation", "learn0.png"))
    with pytest.raises(FileNotFoundError, match=r"visible id map of image learn0: file .*"):
        load_amodal_json(root, images, "osd_amodal")


def test_osd_without_occlusion_folder_and_builtin_name(tmp_path):
    root, images = write_osd(tmp_path / "OSD-0.2-depth")
    for name in os.listdir(os.path.join(root, "occlusion_annotation")):
        os.remove(os.path.join(root, "occlusion_annotation", name))
    os.rmdir(os.path.join(root, "occlusion_annotation"))
    os.remove(os.path.join(root, "amodal_annotation", "learn0_3.png"))
    (d,) = _load_builtin("osd_amodal", "osd_amodal", root, images, str(tmp_path))
    assert [a["multimask"]["occluded"] for a in d["annotations"]] == [[], []]
    meta = MetadataCatalog.get("osd_amodal")
    assert meta.annotation_path.endswith("OSD-0.2-depth") and meta.thing_classes == ["object"]
    with pytest.raises(FileNotFoundError, match=r"dataset 'osd_amodal'.*DETECTRON2_DATASETS"):
        _load_builtin("osd_amodal", "osd_amodal", str(tmp_path / "none"), images, str(tmp_path))
