"""benchmarks/scale_data.py's KINS-like and COCOA-like data, read through the public loaders."""

import json
import os
import uuid

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from benchmarks.scale_data import make_cocoa_like, make_kins_like
from multimask.data import AMODAL_MASK_NAMES, register_amodal_instances
from multimask.structures import segmentation_to_bitmask


def _registered_dicts(fmt, json_file, image_root):
    name = f"test_bench_scale_{fmt}_{uuid.uuid4().hex}"
    register_amodal_instances(name, fmt, json_file, image_root)
    try:
        return DatasetCatalog.get(name), MetadataCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _check_masks(d, max_outside):
    """Every object has the 3 masks; visible lies in amodal; occluded = amodal - visible."""
    h, w = d["height"], d["width"]
    assert cv2.imread(d["file_name"]).shape == (h, w, 3)
    for ann in d["annotations"]:
        assert list(ann["multimask"]) == AMODAL_MASK_NAMES
        amodal, visible, occluded = (
            segmentation_to_bitmask(ann["multimask"][n], h, w) for n in AMODAL_MASK_NAMES
        )
        assert visible.sum() >= 40 and amodal.sum() > 0
        assert (visible & ~amodal).sum() <= max_outside * visible.sum()
        np.testing.assert_array_equal(occluded, amodal & ~visible)


def test_kins_like(tmp_path):
    json_file, image_root = make_kins_like(str(tmp_path / "kins"), 2, seed=3)
    dicts, meta = _registered_dicts("kins_2019", json_file, image_root)
    assert len(meta.thing_classes) == 7
    sizes = [(d["height"], d["width"], len(d["annotations"])) for d in dicts]
    assert sizes == [(375, 1242, 12)] * 2
    for d in dicts:
        # polygon simplification may move the visible outline by up to 1 px
        _check_masks(d, max_outside=0.01)
        assert any(
            segmentation_to_bitmask(a["multimask"]["occluded"], 375, 1242).any()
            for a in d["annotations"]
        ), "no object is occluded"
    with open(json_file) as f:
        anns = json.load(f)["annotations"]
    assert all(isinstance(a["inmodal_seg"], list) for a in anns), "visible masks are polygons"
    assert all(20 <= len(a["segmentation"][0]) // 2 <= 60 for a in anns)
    # the same seed writes the same annotations
    again, _ = make_kins_like(str(tmp_path / "again"), 2, seed=3)
    with open(again) as f:
        assert json.load(f)["annotations"] == anns


def test_cocoa_like(tmp_path):
    json_file, image_root = make_cocoa_like(str(tmp_path / "cocoa"), 2, seed=0)
    dicts, meta = _registered_dicts("cocoa", json_file, image_root)
    assert meta.thing_classes == ["object"]
    sizes = [(d["height"], d["width"], len(d["annotations"])) for d in dicts]
    assert sizes == [(480, 640, 8)] * 2
    for d in dicts:
        _check_masks(d, max_outside=0.0)  # visible is an RLE of the amodal raster minus occluders
        for ann in d["annotations"]:
            amodal, visible = (
                segmentation_to_bitmask(ann["multimask"][n], 480, 640)
                for n in ("amodal", "visible")
            )
            assert ann["occlude_rate"] == pytest.approx(1 - visible.sum() / amodal.sum(), abs=1e-3)
    assert os.path.isdir(image_root)
