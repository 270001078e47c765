"""LabelMe folders in (grouping, shape types, mask mapping, bad input), predictions back out."""

import base64
import json
import logging
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from multimask import add_multimask_config
from multimask.data import (
    MultiMaskDatasetMapper,
    check_same_classes,
    load_multimask_coco_json,
    load_multimask_labelme_json,
    register_multimask_labelme_instances,
)
from multimask.engine.trainer import check_datasets
from multimask.evaluation import MultiMaskCOCOEvaluator
from multimask.structures import segmentation_to_bitmask
from multimask.utils import LABELME_VERSION, instances_to_labelme, mask_to_polygons

H, W = 40, 60
SQUARE = [[10, 10], [30, 10], [30, 30], [10, 30]]  # 20 x 20 px
LEFT = [[10, 10], [16, 10], [16, 30], [10, 30]]
RIGHT = [[24, 10], [30, 10], [30, 30], [24, 30]]
MAPPING = {"amodal": "amodal", "visible": "visible or amodal", "occluded": "amodal - visible"}


def shape(label, points, shape_type="polygon", group_id=None, **extra):
    return dict(label=label, points=points, shape_type=shape_type, group_id=group_id, **extra)


def write_labelme(folder, name, shapes, image=True, size=(H, W), **extra):
    """A LabelMe JSON (and its image next to it); returns the JSON path."""
    os.makedirs(folder, exist_ok=True)
    if image:
        cv2.imwrite(os.path.join(folder, f"{name}.png"), np.full((*size, 3), 90, np.uint8))
    content = dict(
        version="5.4.1", flags={}, shapes=shapes, imagePath=f"{name}.png", imageData=None
    )
    content.update({"imageHeight": size[0], "imageWidth": size[1], **extra})
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump(content, f)
    return path


def png_b64(mask):
    return base64.b64encode(cv2.imencode(".png", mask.astype(np.uint8) * 255)[1]).decode()


def bits(segm):
    return segmentation_to_bitmask(segm, H, W)


def box_bits(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def load(folder, **kwargs):
    return load_multimask_labelme_json(str(folder), **kwargs)


def test_groups_mask_names_mapping_and_classes(tmp_path):
    write_labelme(
        tmp_path,
        "a",
        [
            shape("car_amodal", SQUARE, group_id=1),
            shape("car_visible", LEFT, group_id=1),  # a visible part split by an occluder
            shape("car_visible", RIGHT, group_id=1),
            shape("traffic_light_amodal", [[40, 5], [50, 25]], "rectangle"),  # unoccluded
        ],
    )
    name = f"test_labelme_{uuid.uuid4().hex}"
    (d,) = load(tmp_path, mask_names=("amodal", "visible"), mask_fields=MAPPING, dataset_name=name)
    assert (d["height"], d["width"], d["image_id"]) == (H, W, "a")
    assert d["file_name"] == os.path.join(str(tmp_path), "a.png")
    car, light = d["annotations"]
    assert MetadataCatalog.get(name).thing_classes == ["car", "traffic_light"]  # sorted labels
    assert (car["category_id"], light["category_id"]) == (0, 1)
    assert list(car["multimask"]) == ["amodal", "visible", "occluded"]
    assert car["bbox"] == [10.0, 10.0, 20.0, 20.0] and car["bbox_mode"] == BoxMode.XYWH_ABS
    assert car["iscrowd"] == 0 and car["segmentation"] == car["multimask"]["amodal"]
    visible = box_bits(10, 10, 16, 30) | box_bits(24, 10, 30, 30)
    np.testing.assert_array_equal(bits(car["multimask"]["visible"]), visible)
    np.testing.assert_array_equal(bits(car["multimask"]["occluded"]), box_bits(16, 10, 24, 30))
    assert car["multimask"]["occluded"]["op"] == "-"  # kept as its operands
    # no visible shape: visible = amodal, occluded empty
    np.testing.assert_array_equal(bits(light["multimask"]["visible"]), box_bits(40, 5, 50, 25))
    assert bits(light["multimask"]["occluded"]).sum() == 0


def test_group_ids_restart_per_class_and_ungrouped_shapes_are_objects(tmp_path):
    write_labelme(
        tmp_path,
        "a",
        [
            shape("car_amodal", SQUARE, group_id=3),
            shape("person_amodal", LEFT, group_id=3),  # same id, other class: another object
            shape("car_amodal", RIGHT),
            shape("car_amodal", LEFT),  # no group id: each its own object
        ],
    )
    anns = load(tmp_path, mask_names=("amodal",))[0]["annotations"]
    assert [a["category_id"] for a in anns] == [0, 1, 0, 0]
    assert [bits(a["multimask"]["amodal"]).sum() for a in anns] == [400, 120, 120, 120]


def test_shape_types_mask_union_and_skipped_shapes(tmp_path, caplog):
    blob = np.zeros((8, 12), bool)
    blob[1:7, 2:10] = True
    write_labelme(
        tmp_path,
        "a",
        [
            shape("cup_amodal", [[30, 20], [30, 32]], "circle", group_id=1),  # radius 12
            shape("cup_visible", [[20, 10], [31, 17]], "mask", group_id=1, mask=png_b64(blob)),
            shape("cup_visible", LEFT, group_id=1),  # polygon + mask in one mask: RLE union
            shape("cup_amodal", [[1, 1], [5, 5]], "line"),
            shape("cup_amodal", [[1, 1], [5, 5], [9, 1]], "linestrip"),
            shape("cup_amodal", [[3, 3]], "point"),
        ],
    )
    with caplog.at_level(logging.WARNING, logger="multimask.data.datasets.labelme"):
        (d,) = load(tmp_path)
    assert "'line': 1" in caplog.text and "'linestrip': 1" in caplog.text
    assert "'point': 1" in caplog.text
    (cup,) = d["annotations"]
    disk = np.zeros((H, W), np.uint8)
    cv2.circle(disk, (30, 20), 12, 1, -1)
    amodal = bits(cup["multimask"]["amodal"])
    assert (amodal & (disk > 0)).sum() / (amodal | (disk > 0)).sum() > 0.9
    expected = box_bits(10, 10, 16, 30)
    expected[11:17, 22:30] = True  # the PNG's pixels, placed at the box's corner (20, 10)
    assert isinstance(cup["multimask"]["visible"], dict)  # an RLE
    np.testing.assert_array_equal(bits(cup["multimask"]["visible"]), expected)
    assert cup["bbox"] == pytest.approx([18, 8, 24, 24], abs=1)


def test_ignore_is_a_crowd_region_of_every_class(tmp_path):
    write_labelme(
        tmp_path,
        "a",
        [
            shape("car_amodal", SQUARE),
            shape("bus_amodal", LEFT),
            shape("__ignore__", [[40, 5], [50, 25]], "rectangle"),
        ],
    )
    anns = load(tmp_path, mask_fields=MAPPING)[0]["annotations"]
    crowds = [a for a in anns if a["iscrowd"]]
    assert [a["category_id"] for a in crowds] == [0, 1]
    for a in crowds:
        assert a["bbox"] == [40.0, 5.0, 10.0, 20.0]
        for name in ("amodal", "visible", "occluded"):
            np.testing.assert_array_equal(bits(a["multimask"][name]), box_bits(40, 5, 50, 25))


def test_default_mask_and_thing_classes(tmp_path):
    write_labelme(tmp_path, "a", [shape("dog", SQUARE), shape("cat_visible", LEFT)])
    with pytest.raises(ValueError, match=r"a\.json: shape 0 .*'dog' ends with none of"):
        load(tmp_path)
    anns = load(tmp_path, default_mask="amodal", thing_classes=["dog", "cat"])[0]["annotations"]
    assert [a["category_id"] for a in anns] == [0, 1]  # the given order, not sorted
    assert anns[0]["multimask"]["visible"] is None and anns[1]["multimask"]["amodal"] is None
    assert anns[1]["bbox"] == [10.0, 10.0, 6.0, 20.0]  # from the annotated mask
    assert "segmentation" not in anns[1]
    with pytest.raises(ValueError, match=r"shape 1 .*class 'cat' is not in thing_classes"):
        load(tmp_path, default_mask="amodal", thing_classes=["dog"])


def test_embedded_image_data_is_cached_and_image_root(tmp_path):
    image = np.random.RandomState(0).randint(0, 256, (H, W, 3), dtype=np.uint8)
    data = base64.b64encode(cv2.imencode(".png", image)[1]).decode()
    folder = tmp_path / "json"
    write_labelme(folder, "a", [shape("car_amodal", SQUARE)], image=False, imageData=data)
    cache = tmp_path / "cache"
    first = load(folder, image_cache_dir=str(cache))[0]["file_name"]
    assert os.path.dirname(first) == str(cache) and first.endswith(".png")
    np.testing.assert_array_equal(cv2.imread(first), image)
    assert load(folder, image_cache_dir=str(cache))[0]["file_name"] == first
    assert len(os.listdir(cache)) == 1
    # image_root: imagePath relative to it (or its base name there)
    write_labelme(tmp_path / "images", "b", [])
    write_labelme(folder, "a", [], image=False, imagePath="../elsewhere/b.png")
    assert load(folder, image_root=str(tmp_path / "images"))[0]["file_name"].endswith("b.png")


def bad(tmp_path, shapes, **extra):
    write_labelme(tmp_path, "img7", [shape("car_amodal", SQUARE)] + shapes, **extra)


@pytest.mark.parametrize(
    "shapes, extra, message",
    [
        ([shape("car_amodal", [[1, 1], [5, 5]])], {}, r"shape 1 .*polygon needs at least 3"),
        ([shape("car_amodal", [[1, 1]], "rectangle")], {}, r"shape 1 .*rectangle needs at least 2"),
        ([shape("car_amodal", [[1, 1]], "circle")], {}, r"shape 1 .*circle needs at least 2"),
        ([shape("car_amodal", [[1, 1], [1, 9]], "rectangle")], {}, r"shape 1 .*zero width"),
        ([shape("car_amodal", [[1, "a"], [5, 5], [3, 3]])], {}, r"shape 1 .*\[x, y\]"),
        ([shape("_amodal", SQUARE)], {}, r"shape 1 .*'_amodal' has an empty class"),
        ([shape("car_amodal", SQUARE, group_id=[2])], {}, r"shape 1 .*group_id \[2\] is not an"),
        ([shape("car_amodal", SQUARE, "ellipse")], {}, r"shape 1 .*unknown shape_type 'ellipse'"),
        (
            [shape("car_amodal", SQUARE[:3], "oriented_rectangle")],
            {},
            r"shape 1 .*oriented_rectangle needs at least 4 points, got 3",
        ),
        (
            [shape("car_amodal", SQUARE + [[20, 35]], "oriented_rectangle")],
            {},
            r"shape 1 .*oriented_rectangle has 4 points, got 5",
        ),
        (
            [shape("car_amodal", [[50, 30], [59, 39]], "mask", mask=png_b64(np.ones((20, 20))))],
            {},
            r"shape 1 .*20x20 mask at \(50, 30\) leaves the 60x40 image",
        ),
        ([shape("car_amodal", [[0, 0], [3, 3]], "mask", mask="%%")], {}, r"shape 1 .*base64"),
        (
            [shape("car_visible", [[0, 0], [9e9, 0], [0, 9]], group_id=4)],
            {},
            r"object 'car' group_id 4: mask 'visible'.*coordinate",
        ),
        ([], {"imageHeight": 41}, r"imageHeight x imageWidth is 41 x 60, but image .* is 40 x 60"),
        ([], {"image": False}, r"image 'img7.png' not found .*no 'imageData'"),
    ],
)
def test_bad_input_names_file_and_shape(tmp_path, shapes, extra, message):
    bad(tmp_path, shapes, **extra)
    with pytest.raises((ValueError, FileNotFoundError), match=r"img7\.json: " + message):
        load(tmp_path)


def test_malformed_json_empty_folder_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no \\*.json files"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "x.json").write_text('{"shapes": [')
    with pytest.raises(ValueError, match=r"x\.json: malformed JSON"):
        load(tmp_path)
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"x\.json: not a LabelMe file"):
        load(tmp_path)
    with pytest.raises(ValueError, match="default_mask 'full' is not in mask_names"):
        register_multimask_labelme_instances("unused", str(tmp_path), default_mask="full")
    with pytest.raises(ValueError, match=r"label suffixes \['invisible'\] .* not in mask_names"):
        load(tmp_path, mask_fields={"amodal": "amodal", "occluded": "invisible"})


def labelme6_shape(label, points, shape_type, group_id=None, mask=None):
    """A shape as LabelMe 6's app writes it (labelme/app.py ``_shape_to_dict``, v6.3.1)."""
    return {
        "label": label,
        "points": [[float(x), float(y)] for x, y in points],
        "group_id": group_id,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        # labelme.utils.img_arr_to_b64(shape.mask.astype(np.uint8)): a PNG of 0 / 1 values
        "mask": None if mask is None else base64.b64encode(cv2.imencode(".png", mask)[1]).decode(),
    }


def test_labelme_6_file_with_oriented_rectangle_and_mask_shapes(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((H, W, 3), 90, np.uint8))
    tilted = [[20, 5], [35, 14], [29, 24], [14, 15]]  # a rotated rectangle, corners in order
    blob = np.zeros((6, 9), np.uint8)  # mask shape: points are its first and last pixel
    blob[1:5, 2:8] = 1
    shapes = [
        labelme6_shape("box_amodal", tilted, "oriented_rectangle", group_id=1),
        labelme6_shape("box_visible", [[40, 30], [48, 35]], "mask", group_id=1, mask=blob),
    ]
    # labelme/_label_file.py write_label_file (v6.3.1): the payload's keys, in its order
    content = {
        "version": "6.3.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": "a.png",
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }
    (tmp_path / "a.json").write_text(json.dumps(content, indent=2))
    (box,) = load(tmp_path)[0]["annotations"]
    # read as the polygon it is
    assert box["multimask"]["amodal"] == [[float(v) for p in tilted for v in p]]
    # LabelMe's own shape_to_mask draws it with PIL: ImageDraw.polygon(xy, outline=1, fill=1)
    drawn = Image.new("L", (W, H), 0)
    ImageDraw.Draw(drawn).polygon([tuple(p) for p in tilted], outline=1, fill=1)
    drawn = np.array(drawn, dtype=bool)
    amodal = bits(box["multimask"]["amodal"])
    assert (amodal & drawn).sum() / (amodal | drawn).sum() > 0.85  # PIL adds its outline
    # shapes_to_label: mask[y1 : y2 + 1, x1 : x2 + 1] = shape["mask"]
    expected = np.zeros((H, W), bool)
    expected[30:36, 40:49] = blob.astype(bool)
    np.testing.assert_array_equal(bits(box["multimask"]["visible"]), expected)


OCCLUDER_MAPPING = {
    "amodal": "amodal",
    "visible": "visible or amodal",
    "occluder": "occluders(visible)",
}


def test_occluders_are_resolved_as_by_the_coco_loader(tmp_path):
    front, back = [[5, 5], [25, 5], [25, 25], [5, 25]], [[15, 10], [35, 10], [35, 30], [15, 30]]
    write_labelme(
        tmp_path / "labelme",
        "a",
        [
            shape("car_amodal", front, group_id=1),
            shape("car_amodal", back, group_id=2),
            shape("car_visible", [[25, 10], [35, 10], [35, 30], [25, 30]], group_id=2),
            shape("car_amodal", [[45, 5], [55, 5], [55, 15], [45, 15]], group_id=3),  # alone
            shape("__ignore__", [[0, 0], [60, 40]], "rectangle"),  # overlaps all: never an occluder
        ],
    )
    a, b, c, *crowd = load(tmp_path / "labelme", mask_names=("amodal", "visible"),
                           mask_fields=OCCLUDER_MAPPING)[0]["annotations"]  # fmt: skip
    # no depth order in LabelMe files: every other object whose box overlaps counts
    np.testing.assert_array_equal(
        bits(b["multimask"]["occluder"]), box_bits(5, 5, 25, 25) & box_bits(15, 10, 35, 30)
    )
    np.testing.assert_array_equal(
        bits(a["multimask"]["occluder"]), box_bits(25, 10, 35, 30) & box_bits(5, 5, 25, 25)
    )
    assert not bits(c["multimask"]["occluder"]).any() and c["multimask"]["occluder"] == []
    assert all(bits(r["multimask"]["occluder"]).all() for r in crowd)  # the region itself
    # the same objects as a COCO JSON give the same masks
    coco_anns = [
        {"id": i, "image_id": 1, "category_id": 1, "iscrowd": int(x["iscrowd"]), "bbox": x["bbox"],
         "amodal": x["multimask"]["amodal"], "visible": x["multimask"]["visible"]}
        for i, x in enumerate([a, b, c, crowd[0]])
    ]  # fmt: skip
    json_file, image_root = write_coco(tmp_path, coco_anns)
    coco = load_multimask_coco_json(json_file, image_root, OCCLUDER_MAPPING)[0]["annotations"]
    for x, y in zip([a, b, c, crowd[0]], coco):
        np.testing.assert_array_equal(
            bits(x["multimask"]["occluder"]), bits(y["multimask"]["occluder"])
        )


def write_coco(tmp_path, annotations):
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    image_root = str(tmp_path / "coco")
    os.makedirs(image_root, exist_ok=True)
    cv2.imwrite(os.path.join(image_root, "a.png"), np.full((H, W, 3), 90, np.uint8))
    json_file = os.path.join(image_root, "a.json")
    with open(json_file, "w") as f:
        categories = [{"id": 1, "name": "car"}]
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, image_root


def test_a_test_split_with_other_classes_fails_before_training(tmp_path):
    write_labelme(tmp_path / "train", "a", [shape("bus_amodal", LEFT), shape("car_amodal", RIGHT)])
    write_labelme(tmp_path / "test", "b", [shape("car_amodal", SQUARE)])  # no bus: car would be 0
    train, test = (f"test_labelme_{s}_{uuid.uuid4().hex}" for s in ("train", "test"))
    register_multimask_labelme_instances(train, str(tmp_path / "train"))
    register_multimask_labelme_instances(test, str(tmp_path / "test"))
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (test,)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["amodal"]
    with pytest.raises(ValueError, match=rf"'{train}' and '{test}' have different classes "
                       r"\(missing \['bus'\].*thing_classes"):  # fmt: skip
        check_datasets(cfg)  # MultiMaskTrainer's first step, before the model is built
    # the same list for both splits: fine
    test2 = f"test_labelme_test2_{uuid.uuid4().hex}"
    register_multimask_labelme_instances(
        test2, str(tmp_path / "test"), metadata={"thing_classes": ["bus", "car"]}
    )
    check_same_classes([train, test2])
    assert [a["category_id"] for a in DatasetCatalog.get(test2)[0]["annotations"]] == [1]


def test_registration_mapper_and_evaluator(tmp_path):
    write_labelme(
        tmp_path,
        "a",
        [shape("car_amodal", SQUARE, group_id=1), shape("car_visible", LEFT, group_id=1)],
    )
    write_labelme(tmp_path, "b", [shape("bus_amodal", [[5, 5], [40, 30]], "rectangle")])
    name = f"test_labelme_{uuid.uuid4().hex}"
    register_multimask_labelme_instances(
        name, str(tmp_path), metadata={"thing_classes": ["bus", "car"]}, mask_fields=MAPPING
    )
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "multimask_coco" and meta.mask_names == list(MAPPING)
    dicts = DatasetCatalog.get(name)
    assert [a["category_id"] for d in dicts for a in d["annotations"]] == [1, 0]

    mapper = MultiMaskDatasetMapper(
        True, augmentations=[], image_format="BGR", mask_names=list(MAPPING)
    )
    inst = mapper(dicts[0])["instances"]
    masks = inst.gt_multimask.tensor  # (N, K, H, W)
    assert masks.shape == (1, 3, H, W)
    np.testing.assert_array_equal(masks[0, 2].numpy(), box_bits(16, 10, 30, 30))

    ev = MultiMaskCOCOEvaluator(name, distributed=False)
    ev.reset()
    for d in dicts:  # the ground truth as predictions: every mask name at AP 100
        ev.process([{"image_id": d["image_id"]}], [{"instances": as_predictions(d)}])
    results = ev.evaluate()
    for n in MAPPING:
        assert results[f"segm_{n}"]["AP"] == pytest.approx(100.0), n


def as_predictions(d, names=tuple(MAPPING)):
    """The dataset dict's masks as model outputs (the round trip's fake predictions)."""
    h, w = d["height"], d["width"]
    anns = [a for a in d["annotations"] if not a["iscrowd"]]
    inst = Instances((h, w))
    masks = [[segmentation_to_bitmask(a["multimask"][n], h, w) for n in names] for a in anns]
    inst.pred_multimasks = torch.as_tensor(
        np.array(masks, dtype=bool).reshape(-1, len(names), h, w)
    )
    boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.linspace(0.9, 0.5, len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    inst.pred_masks = inst.pred_multimasks[:, 0]
    return inst


def test_mask_to_polygons_traces_pixel_borders():
    rng = np.random.RandomState(0)
    for _ in range(5):
        mask = np.zeros((H, W), np.uint8)
        pts = rng.randint(0, [W, H], size=(6, 2))
        cv2.fillPoly(mask, [cv2.convexHull(pts)], 1)
        mask[rng.randint(0, H), rng.randint(0, W)] = 1  # a lone pixel: its own square polygon
        polys = mask_to_polygons(mask, epsilon=0)  # every pixel corner
        flat = [np.asarray(p).ravel().tolist() for p in polys]
        np.testing.assert_array_equal(bits(flat), mask > 0)  # exact: no half-pixel shrinkage
        fewer = mask_to_polygons(mask, epsilon=1.0)
        assert sum(map(len, fewer)) <= sum(map(len, polys))
    ring = box_bits(5, 5, 25, 25) & ~box_bits(10, 10, 20, 20)
    (outline,) = mask_to_polygons(ring)  # the hole is filled
    np.testing.assert_array_equal(bits([np.ravel(outline).tolist()]), box_bits(5, 5, 25, 25))
    assert mask_to_polygons(np.zeros((H, W), bool)) == []


def test_instances_to_labelme_file(tmp_path):
    inst = Instances((H, W))
    probs = torch.zeros(2, 3, H, W)
    probs[0, 0, 10:30, 10:30] = 0.9
    probs[0, 1, 10:30, 10:16] = 0.8  # visible in two parts: two shapes, one group id
    probs[0, 1, 10:30, 24:30] = 0.7
    probs[1, 0, 2:8, 40:50] = 0.6
    probs[1, 1, 2:8, 40:50] = 0.4  # under the threshold: no visible shape
    inst.pred_multimasks = probs
    inst.pred_classes = torch.tensor([1, 7])
    inst.scores = torch.tensor([0.9, 0.6])
    image = tmp_path / "images" / "x.png"
    json_path = tmp_path / "labels" / "x.json"
    content = instances_to_labelme(
        inst,
        str(image),
        str(json_path),
        ["cat", "dog"],
        ["amodal", "visible"],
        pred_mask_names=["amodal", "visible", "occluded"],
    )
    with open(json_path) as f:
        assert json.load(f) == content
    assert content["version"] == LABELME_VERSION and content["imageData"] is None
    assert content["imagePath"] == "../images/x.png"
    assert (content["imageHeight"], content["imageWidth"]) == (H, W)
    labels = [(s["label"], s["group_id"], s["shape_type"]) for s in content["shapes"]]
    assert labels == [
        ("dog_amodal", 1, "polygon"),
        ("dog_visible", 1, "polygon"),
        ("dog_visible", 1, "polygon"),
        ("7_amodal", 2, "polygon"),  # a class id past class_names: the id
    ]
    assert content["shapes"][0]["description"] == "score 0.900"
    with pytest.raises(ValueError, match=r"\['occluded'\] are not among the predicted"):
        instances_to_labelme(inst, str(image), None, None, ["occluded"], pred_mask_names=["a"])
    none = Instances((H, W), pred_multimasks=probs[:0, :1], pred_classes=torch.zeros(0).long())
    empty = instances_to_labelme(none, str(image), None, None, ["amodal"])
    assert empty["shapes"] == [] and empty["imagePath"] == "x.png"


def test_round_trip_labelme_dicts_labelme_dicts(tmp_path):
    blob = np.zeros((10, 14), bool)
    blob[2:9, 1:12] = True
    shapes = [
        shape("car_amodal", SQUARE, group_id=1),
        shape("car_visible", LEFT, group_id=1),
        shape("car_visible", RIGHT, group_id=1),
        shape("cup_amodal", [[44, 20], [44, 31]], "circle", group_id=2),  # radius 11
        shape("cup_visible", [[36, 14], [49, 23]], "mask", group_id=2, mask=png_b64(blob)),
        shape("cup_amodal", [[32, 2], [58, 12]], "rectangle"),
    ]
    first = load(
        write_labelme(tmp_path / "in", "a", shapes).rsplit(os.sep, 1)[0], mask_fields=MAPPING
    )
    d = first[0]
    inst = as_predictions(d)
    instances_to_labelme(
        inst,
        d["file_name"],
        str(tmp_path / "out" / "a.json"),
        ["car", "cup"],
        ["amodal", "visible"],
        pred_mask_names=list(MAPPING),
    )
    (again,) = load(tmp_path / "out", mask_fields=MAPPING)
    assert again["file_name"] == d["file_name"] and len(again["annotations"]) == 3
    for a, b in zip(d["annotations"], again["annotations"]):
        assert a["category_id"] == b["category_id"]
        assert b["bbox"] == pytest.approx(a["bbox"], abs=1)
        for n in MAPPING:
            ma, mb = bits(a["multimask"][n]), bits(b["multimask"][n])
            union = (ma | mb).sum()
            # the written outlines are simplified, each keeping IoU >= 0.97 with its pixels
            assert union == 0 or (ma & mb).sum() / union >= 0.97, n
