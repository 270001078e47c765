"""The generic multi-mask COCO loader: mapping syntax, derived masks, registration and bad input."""

import json
import logging
import os
import uuid

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.structures.masks import polygons_to_bitmask

from multimask.data import (
    check_mask_names,
    load_multimask_coco_json,
    register_multimask_coco_instances,
)
from multimask.data.datasets.mask_fields import MaskFields
from multimask.structures import segmentation_to_bitmask

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 60
SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]  # amodal, 20 x 20
LEFT_HALF = [10.0, 10.0, 20.0, 10.0, 20.0, 30.0, 10.0, 30.0]


def rle_of(mask: np.ndarray) -> dict:
    """Compressed RLE with str counts, as it is stored in JSON."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def write_images(image_root, images) -> None:
    os.makedirs(image_root, exist_ok=True)
    for img in images:
        cv2.imwrite(
            os.path.join(image_root, img["file_name"]),
            np.full((img["height"], img["width"], 3), 90, np.uint8),
        )


def write_dataset(tmp_path, annotations, images=None, categories=None, name="ann.json"):
    """Write a JSON and its images under tmp_path; returns (json_file, image_root)."""
    images = (
        images if images is not None else [{"id": 7, "file_name": "a.png", "height": H, "width": W}]
    )
    categories = (
        categories
        if categories is not None
        else [{"id": 3, "name": "car"}, {"id": 5, "name": "person"}]
    )
    image_root = str(tmp_path / "images")
    write_images(image_root, images)
    json_file = str(tmp_path / name)
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, image_root


def ann(ann_id=1, **fields):
    base = {"id": ann_id, "image_id": 7, "category_id": 5, "bbox": [10, 10, 20, 20], "iscrowd": 0}
    base.update(fields)
    return base


AMODAL_VISIBLE = {
    "amodal": "segmentation",
    "visible": "visible_mask",
    "occluded": "amodal - visible",
}


def bits(segm):
    return segmentation_to_bitmask(segm, H, W)


def test_loader_fields_classes_and_derived_occluded(tmp_path):
    visible = polygons_to_bitmask([np.array(LEFT_HALF)], H, W)
    anns = [
        ann(1, segmentation=[SQUARE], visible_mask=rle_of(visible), occlude_rate=0.5),
        ann(2, category_id=3, segmentation=[SQUARE]),  # no visible mask: not annotated
    ]
    json_file, image_root = write_dataset(tmp_path, anns)
    name = f"test_coco_{uuid.uuid4().hex}"
    dicts = load_multimask_coco_json(json_file, image_root, AMODAL_VISIBLE, name)
    assert len(dicts) == 1
    d = dicts[0]
    assert d["file_name"] == os.path.join(image_root, "a.png")
    assert (d["height"], d["width"], d["image_id"]) == (H, W, 7)
    a1, a2 = d["annotations"]
    assert list(a1["multimask"]) == ["amodal", "visible", "occluded"]
    assert a1["bbox"] == [10.0, 10.0, 20.0, 20.0] and a1["bbox_mode"] == BoxMode.XYWH_ABS
    assert a1["category_id"] == 1 and a2["category_id"] == 0  # contiguous, sorted by dataset id
    assert a1["segmentation"] == [SQUARE] and a1["occlude_rate"] == 0.5
    amodal, occluded = bits(a1["multimask"]["amodal"]), bits(a1["multimask"]["occluded"])
    np.testing.assert_array_equal(occluded, amodal & ~visible)
    # kept as its operands, the annotation's own polygons (not rasterised at load time)
    assert occluded.sum() > 0 and a1["multimask"]["occluded"]["op"] == "-"
    assert a1["multimask"]["occluded"]["operands"][0] is a1["multimask"]["amodal"]
    assert a2["multimask"]["visible"] is None and a2["multimask"]["occluded"] is None
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["car", "person"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 5: 1}


@pytest.mark.parametrize("op", ["-", "&", "|"])
def test_set_operations_match_pixels(op):
    rng = np.random.default_rng(0)
    fields = MaskFields({"a": "pa", "b": "pb", "c": f"a {op} b", "d": f"b {op} a"})
    for _ in range(20):
        pa = [
            np.round(rng.uniform(-5, 65, 8), 2).tolist(),
            np.round(rng.uniform(0, 60, 6), 1).tolist(),
        ]
        mb = rng.random((H, W)) < 0.5
        masks, _ = fields.resolve({"pa": pa, "pb": rle_of(mb)}, H, W)
        a, b = bits(pa), mb
        expected = {"-": (a & ~b, b & ~a), "&": (a & b, a & b), "|": (a | b, a | b)}[op]
        # computed exactly (the difference on run lengths, no rasterisation at load time)
        np.testing.assert_array_equal(bits(masks["c"]), expected[0])
        np.testing.assert_array_equal(bits(masks["d"]), expected[1])


def test_fallback_empty_alias_and_flat_polygon():
    fields = MaskFields(
        {
            "amodal": "segmentation",
            "visible": "visible_mask or amodal",
            "occluded": "invisible_mask or empty",
            "copy": "amodal",
        }
    )
    masks, dropped = fields.resolve({"segmentation": SQUARE}, H, W)  # flat polygon, as in COCOA
    assert (
        masks["amodal"] == [SQUARE] and masks["visible"] == [SQUARE] and masks["copy"] == [SQUARE]
    )
    assert bits(masks["occluded"]).sum() == 0 and dropped == 0
    # an empty list is an annotated, empty mask; null is not annotated
    masks, _ = fields.resolve({"segmentation": [SQUARE], "visible_mask": []}, H, W)
    assert bits(masks["visible"]).sum() == 0
    assert MaskFields({"v": "visible_mask"}).resolve({"visible_mask": None}, H, W)[0]["v"] is None


def test_mapping_errors():
    with pytest.raises(ValueError, match="does not parse"):
        MaskFields({"amodal": "segmentation", "occluded": "amodal minus visible"})
    with pytest.raises(ValueError, match="cycle|each other"):
        MaskFields({"a": "b or k1", "b": "a - k2"})
    with pytest.raises(ValueError, match="non-empty"):
        MaskFields({})


def test_polygons_with_fewer_than_3_points_are_dropped_with_a_count(tmp_path, caplog):
    anns = [
        ann(1, segmentation=[SQUARE, [1.0, 1.0, 5.0, 5.0]]),  # one bad polygon of two
        ann(2, segmentation=[[1.0, 2.0, 3.0, 4.0]]),  # no valid polygon left: instance skipped
    ]
    json_file, image_root = write_dataset(tmp_path, anns)
    with caplog.at_level(logging.WARNING, logger="multimask.data.datasets.coco"):
        dicts = load_multimask_coco_json(json_file, image_root, {"amodal": "segmentation"})
    assert [a["multimask"]["amodal"] for a in dicts[0]["annotations"]] == [[SQUARE]]
    assert "dropped 2 polygons" in caplog.text and "1 instances" in caplog.text


def test_box_computed_from_primary_mask_when_absent(tmp_path):
    a = ann(1, segmentation=[SQUARE])
    del a["bbox"]
    json_file, image_root = write_dataset(tmp_path, [a])
    d = load_multimask_coco_json(json_file, image_root, {"amodal": "segmentation"})[0]
    assert d["annotations"][0]["bbox"] == pytest.approx([10, 10, 21, 21], abs=1)


@pytest.mark.parametrize(
    "bad_ann, message",
    [
        (
            ann(4, segmentation=[SQUARE], visible_mask="oops"),
            r"annotation id 4 .*visible_mask.*neither",
        ),
        (ann(4, segmentation=[SQUARE], visible_mask={"a": 1}), r"annotation id 4 .*not an RLE"),
        (ann(4, segmentation=[["x", 1]]), r"annotation id 4 .*neither polygons"),
        (
            ann(4, segmentation=[SQUARE], visible_mask=rle_of(np.ones((H + 1, W), bool))),
            r"annotation id 4 .*RLE of size \[41, 60\].*image is \[40, 60\]",
        ),
        (
            ann(4, segmentation=[SQUARE], category_id=99),
            r"annotation id 4 .*category_id 99 is not in",
        ),
        (
            ann(4, segmentation=[SQUARE], image_id=8),
            r"annotation id 4 .*image_id is not in 'images'",
        ),
        (
            ann(4, segmentation=[SQUARE], bbox=[1, 2, 3]),
            r"annotation id 4 .*\[x, y, width, height\]",
        ),
    ],
)
def test_bad_annotations_name_file_and_annotation(tmp_path, bad_ann, message):
    json_file, image_root = write_dataset(tmp_path, [bad_ann])
    with pytest.raises(ValueError, match=message) as e:
        load_multimask_coco_json(json_file, image_root, AMODAL_VISIBLE)
    assert json_file in str(e.value)


def test_malformed_json_and_missing_files(tmp_path):
    json_file, image_root = write_dataset(tmp_path, [ann(1, segmentation=[SQUARE])])
    with open(json_file, "a") as f:
        f.write("}{")
    with pytest.raises(ValueError, match="malformed JSON") as e:
        load_multimask_coco_json(json_file, image_root, AMODAL_VISIBLE)
    assert json_file in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_multimask_coco_json(str(tmp_path / "nope.json"), image_root, AMODAL_VISIBLE)

    images = [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (7, 8, 9)]
    json_file, image_root = write_dataset(
        tmp_path / "b", [ann(1, segmentation=[SQUARE])], images=images
    )
    os.remove(os.path.join(image_root, "8.png"))
    os.remove(os.path.join(image_root, "9.png"))
    with pytest.raises(
        FileNotFoundError, match=r"image id 8: file .*8\.png does not exist \(1 more"
    ):
        load_multimask_coco_json(json_file, image_root, AMODAL_VISIBLE)


def test_register_sets_metadata_and_loads_lazily(tmp_path):
    json_file, image_root = write_dataset(
        tmp_path, [ann(1, segmentation=[SQUARE], visible_mask=[LEFT_HALF])]
    )
    name = f"test_register_{uuid.uuid4().hex}"
    register_multimask_coco_instances(name, {"extra": 1}, json_file, image_root, AMODAL_VISIBLE)
    meta = MetadataCatalog.get(name)
    assert meta.mask_names == ["amodal", "visible", "occluded"]
    assert (meta.json_file, meta.image_root, meta.evaluator_type, meta.extra) == (
        json_file,
        image_root,
        "multimask_coco",
        1,
    )
    assert not meta.get("thing_classes")  # set only when loaded
    dicts = DatasetCatalog.get(name)
    assert dicts[0]["annotations"][0]["multimask"]["visible"] == [LEFT_HALF]
    assert meta.thing_classes == ["car", "person"]
    with pytest.raises(ValueError, match="does not parse"):
        register_multimask_coco_instances(f"{name}_bad", {}, json_file, image_root, {"a": "x y"})


def test_check_mask_names(tmp_path):
    json_file, image_root = write_dataset(tmp_path, [])
    name = f"test_check_{uuid.uuid4().hex}"
    register_multimask_coco_instances(name, {}, json_file, image_root, AMODAL_VISIBLE)
    check_mask_names([name], ["visible", "amodal"])  # subset, any order: fine
    with pytest.raises(
        ValueError, match=r"\['modal'\].*provides \['amodal', 'visible', 'occluded'\]"
    ):
        check_mask_names([name], ["amodal", "modal"])
    with pytest.raises(ValueError, match="no 'mask_names' metadata"):
        check_mask_names(["coco_2017_val"], ["amodal"])
