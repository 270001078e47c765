"""WALT reader (format ``walt``): the nested ``segmentation: [{"full", "visible"}]`` layout."""

import copy

import numpy as np
import pytest

from detectron2.structures.masks import polygons_to_bitmask

from multimask.data.datasets.amodal import load_amodal_json

from .test_data_coco import H, W, bits, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FULL = [10.0, 10.0, 40.0, 10.0, 40.0, 30.0, 10.0, 30.0]
VISIBLE = [25.0, 10.0, 40.0, 10.0, 40.0, 30.0, 25.0, 30.0]
SMALL = [45.0, 5.0, 55.0, 5.0, 55.0, 15.0, 45.0, 15.0]
# WALT's ann.json: category id 0, file names under images/, occ_percentage 0-100
CATEGORIES = [{"name": "car", "id": 0, "supercategory": "car"}]
IMAGES = [{"id": 0, "file_name": "cam1.png", "height": H, "width": W, "license": 1}]
ANNS = [
    {"image_id": 0, "category_id": 0, "iscrowd": 0, "occ_percentage": 50.0, "id": 0,
     "area": 600, "bbox": [10, 10, 30, 20],
     "segmentation": [{"full": [FULL], "visible": [VISIBLE]}]},
    {"image_id": 0, "category_id": 0, "iscrowd": 0, "occ_percentage": 0, "id": 1, "area": 100,
     "bbox": [45, 5, 10, 10], "segmentation": [{"full": [SMALL], "visible": [SMALL]}]},
    # WALT reads an entry without "full" as visible-only
    {"image_id": 0, "category_id": 0, "iscrowd": 0, "id": 2, "area": 100, "bbox": [45, 20, 10, 10],
     "segmentation": [{"visible": [[45.0, 20.0, 55.0, 20.0, 55.0, 30.0, 45.0, 30.0]]}]},
]


def poly(p):
    return polygons_to_bitmask([np.array(p)], H, W)


def test_walt_nested_masks_and_rate(tmp_path):
    json_file, image_root = write_dataset(tmp_path, ANNS, IMAGES, CATEGORIES)
    (d,) = load_amodal_json(json_file, image_root, "walt", "test_walt_classes")
    car, small, visible_only = d["annotations"]
    np.testing.assert_array_equal(bits(car["multimask"]["amodal"]), poly(FULL))
    np.testing.assert_array_equal(bits(car["multimask"]["visible"]), poly(VISIBLE))
    np.testing.assert_array_equal(bits(car["multimask"]["occluded"]), poly(FULL) & ~poly(VISIBLE))
    assert (car["occlude_rate"], small["occlude_rate"]) == (0.5, 0.0)
    assert visible_only["multimask"]["amodal"] is None and visible_only["bbox"] == [45, 20, 10, 10]
    assert visible_only["multimask"]["occluded"] is None and "occlude_rate" not in visible_only
    assert car["category_id"] == 0 and car["segmentation"] == [FULL]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"segmentation": [FULL]}, r"annotation id 0 \(image id 0\): 'segmentation' must be"),
        ({"segmentation": [{"amodal": [FULL]}]}, r"has keys \['amodal'\]"),
        ({"occ_percentage": 150}, r"annotation id 0 .*occ_percentage 150 is not a number in"),
    ],
)
def test_walt_bad_input_names_the_annotation(tmp_path, change, message):
    anns = copy.deepcopy(ANNS)
    anns[0].update(change)
    json_file, image_root = write_dataset(tmp_path, anns, IMAGES, CATEGORIES)
    with pytest.raises(ValueError, match=message):
        load_amodal_json(json_file, image_root, "walt")


def test_walt_builtin_names_read_walts_folders(tmp_path):
    """walt_train / walt_test: WALT's cwalt_{train,test}/ann.json with images/ beside it."""
    import json
    import os

    from multimask.data.datasets.builtin import BUILTIN_AMODAL_LAYOUT_SPLITS, _load_builtin

    from .test_data_coco import write_images

    for name in ("walt_train", "walt_test"):
        fmt, image_dir, json_rel = BUILTIN_AMODAL_LAYOUT_SPLITS[name]
        image_root, json_file = str(tmp_path / image_dir), str(tmp_path / json_rel)
        images = [dict(IMAGES[0], file_name="images/cam1.png")]  # as WALT's save_json names them
        os.makedirs(os.path.join(image_root, "images"))
        write_images(image_root, images)
        with open(json_file, "w") as f:
            json.dump({"images": images, "annotations": ANNS, "categories": CATEGORIES}, f)
        (d,) = _load_builtin(name, fmt, json_file, image_root, str(tmp_path))
        assert d["file_name"] == os.path.join(image_root, "images", "cam1.png")
        assert len(d["annotations"]) == 3 and fmt == "walt"
