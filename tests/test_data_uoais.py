"""UOAIS-Sim / SynTable reader (format ``uoais``) on a file in UOAIS's released layout."""

import os
import uuid

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures.masks import polygons_to_bitmask

from multimask.data.datasets.amodal import load_amodal_json, register_amodal_instances
from multimask.data.datasets.builtin import BUILTIN_AMODAL_LAYOUT_SPLITS

from .test_data_coco import H, W, bits, rle_of, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BOX = [10.0, 10.0, 40.0, 10.0, 40.0, 30.0, 10.0, 30.0]  # amodal polygon
RIGHT = [25.0, 10.0, 40.0, 10.0, 40.0, 30.0, 25.0, 30.0]  # its visible part
# UOAIS-Sim's images: one entry per image, with the depth image's name
IMAGES = [
    {"id": 1, "file_name": "1.png", "depth_file_name": "1_depth.png", "height": H, "width": W}
]


def poly(p):
    return polygons_to_bitmask([np.array(p)], H, W)


def uncompressed(mask):
    """pycocotools' uncompressed RLE (a list of runs), which UOAIS's load_segm also accepts."""
    flat = mask.astype(np.uint8).flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    return {"size": [H, W], "counts": [int(r) for r in runs]}


def uoais_anns():
    occluded = poly(BOX) & ~poly(RIGHT)
    return [
        {
            "id": 11,
            "image_id": 1,
            "category_id": 1,
            "bbox": [10, 10, 30, 20],
            "area": 600,
            "iscrowd": 0,
            "segmentation": [BOX],
            "visible_mask": rle_of(poly(RIGHT)),
            "occluded_mask": uncompressed(occluded),
            "occluded_rate": 0.5,
        },
        {
            "id": 12,
            "image_id": 1,
            "category_id": 1,
            "bbox": [45, 5, 10, 10],
            "iscrowd": 0,
            "segmentation": rle_of(poly([45, 5, 55, 5, 55, 15, 45, 15])),
            "visible_mask": rle_of(poly([45, 5, 55, 5, 55, 15, 45, 15])),
            "occluded_mask": rle_of(np.zeros((H, W), bool)),
            "occluded_rate": 0.0,
        },
    ]


def test_uoais_masks_rate_and_registration(tmp_path):
    json_file, image_root = write_dataset(
        tmp_path, uoais_anns(), images=IMAGES, categories=[{"id": 1, "name": "object"}]
    )
    name = f"test_uoais_{uuid.uuid4().hex}"
    register_amodal_instances(name, "uoais", json_file, image_root)
    (d,) = DatasetCatalog.get(name)
    box, small = d["annotations"]
    assert list(box["multimask"]) == ["amodal", "visible", "occluded"]
    np.testing.assert_array_equal(bits(box["multimask"]["amodal"]), poly(BOX))
    np.testing.assert_array_equal(bits(box["multimask"]["visible"]), poly(RIGHT))
    np.testing.assert_array_equal(bits(box["multimask"]["occluded"]), poly(BOX) & ~poly(RIGHT))
    # the file's masks are kept as they are: no decoding at load
    assert box["multimask"]["visible"]["counts"] == uoais_anns()[0]["visible_mask"]["counts"]
    assert isinstance(box["multimask"]["occluded"]["counts"], list)
    assert (box["occlude_rate"], small["occlude_rate"]) == (0.5, 0.0)
    assert "occluded_rate" not in box
    assert bits(small["multimask"]["occluded"]).sum() == 0
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["object"] and meta.json_file == json_file


def test_uoais_bad_rate_and_double_key_name_the_annotation(tmp_path):
    anns = uoais_anns()
    anns[1]["occluded_rate"] = 1.5
    json_file, image_root = write_dataset(tmp_path, anns, images=IMAGES,
                                          categories=[{"id": 1, "name": "object"}])
    with pytest.raises(ValueError, match=r"ann.json: annotation id 12 .*occlude_rate 1.5"):
        load_amodal_json(json_file, image_root, "uoais")
    anns = uoais_anns()
    anns[0]["occlude_rate"] = 0.5
    json_file, image_root = write_dataset(tmp_path, anns, images=IMAGES,
                                          categories=[{"id": 1, "name": "object"}])
    with pytest.raises(ValueError, match=r"annotation id 11 has both 'occluded_rate'"):
        load_amodal_json(json_file, image_root, "uoais")
    anns = uoais_anns()
    anns[0]["visible_mask"] = rle_of(np.zeros((H + 1, W), bool))  # another size than the image
    json_file, image_root = write_dataset(tmp_path, anns, images=IMAGES,
                                          categories=[{"id": 1, "name": "object"}])
    with pytest.raises(ValueError, match=r"annotation id 11 .*'visible_mask' holds an RLE of size"):
        load_amodal_json(json_file, image_root, "uoais")


def test_uoais_builtin_names_use_the_released_paths():
    assert BUILTIN_AMODAL_LAYOUT_SPLITS["uoais_sim_train"] == (
        "uoais",
        "UOAIS-Sim/train",
        "UOAIS-Sim/annotations/coco_anns_uoais_sim_train.json",
    )
    assert BUILTIN_AMODAL_LAYOUT_SPLITS["syntable_val"][2] == "syntable/validation/uoais_val.json"
    meta = MetadataCatalog.get("uoais_sim_val")
    assert meta.amodal_format == "uoais" and meta.mask_names == ["amodal", "visible", "occluded"]


def test_syntable_occlusion_order_matrix(tmp_path):
    # SynTable's images name the scene's occlusion-order matrix (row / column i: the image's
    # i-th annotation in file order; A[i, j] = 1: i occludes j), relative to the dataset root
    images = [dict(IMAGES[0], occlusion_order_file_name="occlusion_order/1.npy")]
    json_file, image_root = write_dataset(
        tmp_path, uoais_anns(), images=images, categories=[{"id": 1, "name": "object"}]
    )
    os.makedirs(os.path.join(image_root, "occlusion_order"))
    npy = os.path.join(image_root, "occlusion_order", "1.npy")
    np.save(npy, np.array([[0.0, 0.0], [1.0, 0.0]]))
    (d,) = load_amodal_json(json_file, image_root, "uoais")
    assert d["occlusion_order"] == [[1, 0]]  # annotation 12 occludes annotation 11
    np.save(npy, np.zeros((3, 3)))
    match = r"image id 1 \(1.png\).*1.npy has shape \(3, 3\).*2 annotations"
    with pytest.raises(ValueError, match=match):
        load_amodal_json(json_file, image_root, "uoais")
    os.remove(npy)
    with pytest.raises(FileNotFoundError, match=r"image id 1 .*occlusion order file .*1.npy"):
        load_amodal_json(json_file, image_root, "uoais")
    # UOAIS-Sim names no matrix: no stated order
    json_file, image_root = write_dataset(
        tmp_path, uoais_anns(), images=IMAGES, categories=[{"id": 1, "name": "object"}]
    )
    assert "occlusion_order" not in load_amodal_json(json_file, image_root, "uoais")[0]
