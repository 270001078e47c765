"""KINS 2020 / 2019, COCOA, COCOA-cls and D2SA readers, on fixtures in each release's layout."""

import json
import os
import uuid

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures.masks import polygons_to_bitmask

from multimask.data import AMODAL_MASK_NAMES, load_amodal_json, register_amodal_instances
from multimask.data.datasets.builtin import (
    BUILTIN_AMODAL_SPLITS,
    BUILTIN_SYNTHETIC_SPLITS,
    _load_builtin,
)
from multimask.structures import segmentation_to_bitmask

from .test_data_coco import rle_of, write_images

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 50, 80
CAR = [10.0, 10.0, 50.0, 10.0, 50.0, 40.0, 10.0, 40.0]  # amodal polygon
CAR_VISIBLE = [30.0, 10.0, 50.0, 10.0, 50.0, 40.0, 30.0, 40.0]  # its right part
PERSON = [55.0, 5.0, 70.0, 5.0, 70.0, 45.0, 55.0, 45.0]
IMAGES = [{"id": 1, "file_name": "000001.png", "height": H, "width": W, "license": 1}]
# The categories as the released KINS files list them. 2019 (instances_*.json): 7, as AISFormer's
# tools/split_kins.py prints them from the file; 2020 (update_*_2020.json): the same and `rider`,
# id 3, which no annotation uses (the KINS repo's issue #15; VRSP's builtin_meta.py lists it,
# commented out, between pedestrian and car).
KINS_2019_CATEGORIES = [
    {"supercategory": "Living Thing", "id": 1, "name": "cyclist"},
    {"supercategory": "Living Thing", "id": 2, "name": "pedestrian"},
    {"supercategory": "vehicles", "id": 4, "name": "car"},
    {"supercategory": "vehicles", "id": 5, "name": "tram"},
    {"supercategory": "vehicles", "id": 6, "name": "truck"},
    {"supercategory": "vehicles", "id": 7, "name": "van"},
    {"supercategory": "vehicles", "id": 8, "name": "misc"},
]
KINS_2020_CATEGORIES = [
    {"supercategory": "Living Thing", "id": 1, "name": "cyclist"},
    {"supercategory": "Living Thing", "id": 2, "name": "pedestrian"},
    {"supercategory": "Living Thing", "id": 3, "name": "rider"},
    {"supercategory": "vehicles", "id": 4, "name": "car"},
    {"supercategory": "vehicles", "id": 5, "name": "tram"},
    {"supercategory": "vehicles", "id": 6, "name": "truck"},
    {"supercategory": "vehicles", "id": 7, "name": "van"},
    {"supercategory": "vehicles", "id": 8, "name": "misc"},
]


def bits(segm):
    return segmentation_to_bitmask(segm, H, W)


def poly_bits(poly):
    return polygons_to_bitmask([np.array(poly)], H, W)


def write(tmp_path, content):
    image_root = str(tmp_path / "images")
    write_images(image_root, IMAGES)
    json_file = str(tmp_path / "annotations.json")
    with open(json_file, "w") as f:
        json.dump(content, f)
    return json_file, image_root


def check_car_and_person(dicts, car_class, person_class):
    """The car is occluded on its left half; the person is not occluded."""
    (d,) = dicts
    car, person = d["annotations"]
    assert list(car["multimask"]) == AMODAL_MASK_NAMES
    assert (car["category_id"], person["category_id"]) == (car_class, person_class)
    np.testing.assert_array_equal(bits(car["multimask"]["amodal"]), poly_bits(CAR))
    np.testing.assert_array_equal(bits(car["multimask"]["visible"]), poly_bits(CAR_VISIBLE))
    np.testing.assert_array_equal(
        bits(car["multimask"]["occluded"]), poly_bits(CAR) & ~poly_bits(CAR_VISIBLE)
    )
    np.testing.assert_array_equal(bits(person["multimask"]["visible"]), poly_bits(PERSON))
    assert bits(person["multimask"]["occluded"]).sum() == 0
    assert car["bbox"] == pytest.approx([10, 10, 40, 30], abs=1)
    assert car["segmentation"] == car["multimask"]["amodal"]


def test_kins_2020(tmp_path):
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 4,
            "a_segm": [CAR],
            "i_segm": [CAR_VISIBLE],
            "a_bbox": [10, 10, 40, 30],
            "i_bbox": [30, 10, 20, 30],
            "a_area": 1200,
            "i_area": 600,
            "iscrowd": 0,
            "oco_id": 1,
            "ico_id": 1,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 2,
            "a_segm": [PERSON],
            "i_segm": [PERSON],
            "a_bbox": [55, 5, 15, 40],
            "i_bbox": [55, 5, 15, 40],
            "a_area": 600,
            "i_area": 600,
            "iscrowd": 0,
            "oco_id": 2,
            "ico_id": 2,
        },
    ]
    json_file, image_root = write(
        tmp_path, {"images": IMAGES, "annotations": anns, "categories": KINS_2020_CATEGORIES}
    )
    name = f"test_kins20_{uuid.uuid4().hex}"
    dicts = load_amodal_json(json_file, image_root, "kins_2020", name)
    check_car_and_person(dicts, car_class=3, person_class=1)
    assert MetadataCatalog.get(name).thing_classes == [c["name"] for c in KINS_2020_CATEGORIES]


def test_kins_2019_with_rle_visible_mask(tmp_path):
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 4,
            "segmentation": [CAR],
            "inmodal_seg": rle_of(poly_bits(CAR_VISIBLE)),
            "bbox": [10, 10, 40, 30],
            "inmodal_bbox": [30, 10, 20, 30],
            "area": 1200,
            "iscrowd": 0,
            "ico_id": 1,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 2,
            "segmentation": [PERSON],
            "inmodal_seg": [PERSON],
            "bbox": [55, 5, 15, 40],
            "inmodal_bbox": [55, 5, 15, 40],
            "area": 600,
            "iscrowd": 0,
            "ico_id": 2,
        },
    ]
    json_file, image_root = write(
        tmp_path, {"images": IMAGES, "annotations": anns, "categories": KINS_2019_CATEGORIES}
    )
    check_car_and_person(
        load_amodal_json(json_file, image_root, "kins_2019"), car_class=2, person_class=1
    )


def test_cocoa_original_regions(tmp_path):
    regions = [
        {
            "segmentation": CAR,
            "name": "car",
            "area": 1200.0,
            "isStuff": 0,
            "occlude_rate": 0.5,
            "order": 2,
            "visible_mask": rle_of(poly_bits(CAR_VISIBLE)),
            "invisible_mask": rle_of(poly_bits(CAR) & ~poly_bits(CAR_VISIBLE)),
        },
        {
            "segmentation": PERSON,
            "name": "person",
            "area": 600.0,
            "isStuff": 0,
            "occlude_rate": 0.0,
            "order": 1,
        },
    ]
    # region 2 (the person, order 1) in front of region 1 (deocclusion's get_gt_ordering reading)
    anns = [{"id": 10, "image_id": 1, "size": 2, "depth_constraint": "2-1", "regions": regions}]
    json_file, image_root = write(tmp_path, {"images": IMAGES, "annotations": anns})
    name = f"test_cocoa_{uuid.uuid4().hex}"
    dicts = load_amodal_json(json_file, image_root, "cocoa", name)
    check_car_and_person(dicts, car_class=0, person_class=0)
    car, person = dicts[0]["annotations"]
    assert (car["occlude_rate"], car["order"], person["order"]) == (0.5, 2, 1)
    assert MetadataCatalog.get(name).thing_classes == ["object"]
    # the ground-truth occlusion order: annotation 1 (the person) occludes annotation 0
    assert dicts[0]["occlusion_order"] == [[1, 0]]
    anns[0]["depth_constraint"] = "2-3"
    json_file, image_root = write(tmp_path, {"images": IMAGES, "annotations": anns})
    with pytest.raises(ValueError, match=r"annotation id 10 \(image id 1\).*'2-3'.*1\.\.2"):
        load_amodal_json(json_file, image_root, "cocoa")
    anns[0]["depth_constraint"] = ""  # an image without occlusion: an order with no pair
    json_file, image_root = write(tmp_path, {"images": IMAGES, "annotations": anns})
    assert load_amodal_json(json_file, image_root, "cocoa")[0]["occlusion_order"] == []
    regions[0]["segmentation"] = "not a polygon"
    json_file, image_root = write(tmp_path, {"images": IMAGES, "annotations": anns})
    with pytest.raises(
        ValueError, match=r"annotation id 10 region 0 \(image id 1\).*neither polygons"
    ):
        load_amodal_json(json_file, image_root, "cocoa")


def test_cocoa_layout_errors_point_at_the_format(tmp_path):
    anns = [{"id": 3, "image_id": 1, "category_id": 1, "segmentation": [CAR]}]  # a flattened file
    json_file, image_root = write(
        tmp_path, {"images": IMAGES, "annotations": anns, "categories": KINS_2020_CATEGORIES}
    )
    with pytest.raises(ValueError, match=r"annotation id 3 has no 'regions'.*cocoa_cls"):
        load_amodal_json(json_file, image_root, "cocoa")
    with pytest.raises(ValueError, match="unknown amodal format 'kins'"):
        load_amodal_json(json_file, image_root, "kins")


@pytest.mark.parametrize("fmt", ["cocoa_cls", "d2sa"])
def test_cocoa_cls_and_d2sa_visible_defaults_to_amodal(tmp_path, fmt):
    categories = [
        {"supercategory": "vehicle", "id": 3, "name": "car"},
        {"supercategory": "person", "id": 1, "name": "person"},
    ]
    anns = [
        {
            "id": 5,
            "image_id": 1,
            "category_id": 3,
            "segmentation": [CAR],
            "visible_mask": rle_of(poly_bits(CAR_VISIBLE)),
            "invisible_mask": rle_of(poly_bits(CAR) & ~poly_bits(CAR_VISIBLE)),
            "occlude_rate": 0.5,
            "bbox": [10, 10, 40, 30],
            "area": 1200,
            "iscrowd": 0,
        },
        # unoccluded: no visible_mask; COCOA-cls also stores flat amodal polygons
        {
            "id": 6,
            "image_id": 1,
            "category_id": 1,
            "segmentation": PERSON if fmt == "cocoa_cls" else [PERSON],
            "occlude_rate": 0.0,
            "bbox": [55, 5, 15, 40],
            "area": 600,
            "iscrowd": 0,
        },
    ]
    json_file, image_root = write(
        tmp_path, {"images": IMAGES, "annotations": anns, "categories": categories}
    )
    check_car_and_person(load_amodal_json(json_file, image_root, fmt), car_class=1, person_class=0)


def test_register_amodal_instances(tmp_path):
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 4,
            "a_segm": [CAR],
            "i_segm": [CAR_VISIBLE],
            "a_bbox": [10, 10, 40, 30],
        }
    ]
    json_file, image_root = write(
        tmp_path, {"images": IMAGES, "annotations": anns, "categories": KINS_2020_CATEGORIES}
    )
    name = f"test_register_kins_{uuid.uuid4().hex}"
    register_amodal_instances(name, "kins_2020", json_file, image_root)
    meta = MetadataCatalog.get(name)
    assert (meta.mask_names, meta.evaluator_type, meta.json_file) == (
        AMODAL_MASK_NAMES,
        "multimask_coco",
        json_file,
    )
    assert len(DatasetCatalog.get(name)[0]["annotations"]) == 1


def test_builtin_names_are_registered_with_their_metadata():
    for name, (fmt, image_dir, json_rel) in BUILTIN_AMODAL_SPLITS.items():
        meta = MetadataCatalog.get(name)
        assert name in DatasetCatalog.list()
        assert meta.mask_names == AMODAL_MASK_NAMES and meta.evaluator_type == "multimask_coco"
        assert meta.json_file.endswith(json_rel) and meta.image_root.endswith(image_dir)
        assert meta.amodal_format == fmt
    for name in (
        "kins_2020_train",
        "kins_2020_test",
        "kins_2019_train",
        "kins_2019_test",
        "cocoa_train",
        "cocoa_val",
        "cocoa_cls_train",
        "cocoa_cls_val",
        "d2sa_train",
        "d2sa_val",
    ):
        assert name in BUILTIN_AMODAL_SPLITS
    for name in BUILTIN_SYNTHETIC_SPLITS:
        # the amodal formats' masks, plus the synthetic data's occluder mask (it has a depth order)
        assert MetadataCatalog.get(name).mask_names == [*AMODAL_MASK_NAMES, "occluder"]


RELEASED_CLASSES = {
    "kins_2020": KINS_2020_CATEGORIES,
    "kins_2019": KINS_2019_CATEGORIES,
    "cocoa": [{"id": 1, "name": "object"}],  # COCOA's files have no categories: one class
}


def _released_file(tmp_path, fmt):
    """A one-object file of format `fmt` laid out as released, with the release's categories."""
    keys = {"kins_2020": ("a_segm", "a_bbox"), "kins_2019": ("segmentation", "bbox")}
    if fmt == "cocoa":
        regions = [{"segmentation": CAR, "name": "car", "order": 1, "occlude_rate": 0.0}]
        content = {"images": IMAGES, "annotations": [{"id": 1, "image_id": 1, "regions": regions}]}
    else:
        segm, bbox = keys[fmt]
        anns = [{"id": 1, "image_id": 1, "category_id": 4, segm: [CAR], bbox: [10, 10, 40, 30]}]
        content = {"images": IMAGES, "annotations": anns, "categories": RELEASED_CLASSES[fmt]}
    return write(tmp_path, content)


@pytest.mark.parametrize("name", sorted(BUILTIN_AMODAL_SPLITS))
def test_builtin_metadata_before_loading_agrees_with_loading_or_is_unset(tmp_path, name):
    fmt = BUILTIN_AMODAL_SPLITS[name][0]
    meta = MetadataCatalog.get(name)
    if fmt not in RELEASED_CLASSES:  # COCOA-cls, D2SA: the classes come from the file
        assert meta.get("thing_classes") is None
        return
    cats = sorted(RELEASED_CLASSES[fmt], key=lambda c: c["id"])
    assert meta.thing_classes == [c["name"] for c in cats]
    assert meta.thing_dataset_id_to_contiguous_id == {c["id"]: i for i, c in enumerate(cats)}
    # loading the builtin name from a file as released sets the same (detectron2 would raise)
    json_file, image_root = _released_file(tmp_path, fmt)
    (d,) = _load_builtin(name, fmt, json_file, image_root, str(tmp_path))
    assert d["annotations"][0]["category_id"] == meta.thing_dataset_id_to_contiguous_id[
        4 if fmt.startswith("kins") else 1
    ]


def test_a_file_of_the_other_kins_release_is_a_clear_error(tmp_path):
    json_file, image_root = _released_file(tmp_path, "kins_2019")  # 7 categories
    with open(json_file) as f:
        content = json.load(f)
    content["annotations"][0].update(a_segm=[CAR], a_bbox=[10, 10, 40, 30])
    with open(json_file, "w") as f:
        json.dump(content, f)
    with pytest.raises(ValueError, match=r"annotations.json: its categories give thing_classes .*"
                       r"'kins_2020_train' was registered with \['cyclist', 'pedestrian', 'rider'"):
        _load_builtin("kins_2020_train", "kins_2020", json_file, image_root, str(tmp_path))


def test_kins_configs_have_the_released_class_count():
    from detectron2.config import get_cfg

    from multimask import add_multimask_config

    configs = os.path.join(os.path.dirname(__file__), "..", "configs", "Amodal")
    for yaml in os.listdir(configs):
        cfg = get_cfg()
        add_multimask_config(cfg)
        cfg.merge_from_file(os.path.join(configs, yaml))
        for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
            classes = MetadataCatalog.get(name).get("thing_classes")
            if classes is not None:
                assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(classes), (yaml, name)


def test_builtin_missing_file_names_the_expected_path():
    expected = MetadataCatalog.get("d2sa_val").json_file
    if os.path.exists(expected):
        pytest.skip(f"{expected} exists on this machine")
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS") as e:
        DatasetCatalog.get("d2sa_val")
    assert expected in str(e.value) and "d2s/annotations/D2S_amodal_validation.json" in str(e.value)
