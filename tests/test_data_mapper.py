"""MultiMaskDatasetMapper: every mask follows the image through flip / resize / crop."""

import os
import uuid

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from iopath.common.file_io import PathHandler

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask
from detectron2.utils.file_io import PathManager

from multimask import add_multimask_config
from multimask.data import (
    MultiMaskDatasetMapper,
    load_multimask_coco_json,
    register_multimask_coco_instances,
)
from multimask.data.detection_utils import multimask_annotations_to_instances
from multimask.structures import NamedMasks, segmentation_to_rle

from .test_data_coco import rle_of, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H0, W0 = 40, 60
POLY = [8.0, 6.0, 40.0, 9.0, 34.0, 33.0, 12.0, 28.0]  # amodal, a quadrilateral
VISIBLE = np.zeros((H0, W0), dtype=bool)
VISIBLE[10:30, 20:38] = True  # an RLE mask overlapping it


@pytest.fixture
def image_file(tmp_path):
    path = str(tmp_path / "img.png")
    rng = np.random.default_rng(0)
    cv2.imwrite(path, rng.integers(0, 255, (H0, W0, 3), dtype=np.uint8))
    return path


def dataset_dict(file_name, annotations):
    return {
        "file_name": file_name,
        "height": H0,
        "width": W0,
        "image_id": 42,
        "annotations": annotations,
    }


def annotation(poly=POLY, visible=VISIBLE, category_id=1, bbox=(8, 6, 40, 33)):
    return {
        "bbox": list(bbox),
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": category_id,
        "iscrowd": 0,
        "segmentation": [poly],
        "multimask": {"amodal": [poly], "visible": None if visible is None else rle_of(visible)},
    }


def mapper(transforms, mask_names=("amodal", "visible"), **kwargs):
    return MultiMaskDatasetMapper(
        True,
        augmentations=list(transforms),
        image_format="BGR",
        mask_names=list(mask_names),
        **kwargs,
    )


TRANSFORMS = {
    "flip": [T.HFlipTransform(W0)],
    "resize": [T.ResizeTransform(H0, W0, 73, 101)],
    "crop": [T.CropTransform(5, 4, 44, 30)],
    "resize_flip_crop": [
        T.ResizeTransform(H0, W0, 80, 120),
        T.HFlipTransform(120),
        T.CropTransform(20, 10, 90, 60),
    ],
}


def primary_bits(instances) -> np.ndarray:
    """gt_masks as (N, H, W) bits, whether PolygonMasks or BitMasks."""
    m = instances.gt_masks
    if isinstance(m, PolygonMasks):
        h, w = instances.image_size
        return BitMasks.from_polygon_masks(m, h, w).tensor.numpy()
    return m.tensor.numpy()


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_masks_follow_the_image(image_file, name, mask_format):
    transforms = T.TransformList(TRANSFORMS[name])
    out = mapper(TRANSFORMS[name], mask_format=mask_format)(
        dataset_dict(image_file, [annotation()])
    )
    image = cv2.imread(image_file)
    expected_image = transforms.apply_image(image)
    assert tuple(out["image"].shape) == (3,) + expected_image.shape[:2]
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), expected_image)

    inst = out["instances"]
    h, w = expected_image.shape[:2]
    assert inst.image_size == (h, w) and len(inst) == 1
    got = inst.gt_multimask.tensor[0].numpy()  # (K, h, w)
    # the RLE mask goes exactly as the image does
    np.testing.assert_array_equal(
        got[1], transforms.apply_segmentation(VISIBLE.astype(np.uint8)) > 0
    )
    # a polygon is rasterised after the transform: as if the transformed polygon were rasterised...
    moved = transforms.apply_coords(np.array(POLY).reshape(-1, 2)).ravel()
    np.testing.assert_array_equal(got[0], polygons_to_bitmask([moved], h, w))
    # ...and, up to boundary pixels, as transforming the rasterised mask
    warped = (
        transforms.apply_segmentation(
            polygons_to_bitmask([np.array(POLY)], H0, W0).astype(np.uint8)
        )
        > 0
    )
    iou = (warped & got[0]).sum() / (warped | got[0]).sum()
    assert iou > 0.85, iou
    # the box goes with them
    box = inst.gt_boxes.tensor[0].numpy()
    expected_box = transforms.apply_box(np.array([[8, 6, 40, 33]], dtype=np.float64))[0]
    expected_box[0::2] = expected_box[0::2].clip(0, w)
    expected_box[1::2] = expected_box[1::2].clip(0, h)
    np.testing.assert_allclose(box, expected_box, atol=1e-4)
    # primary = amodal, a polygon: detectron2's type for the format
    # (with "bitmask", a view of gt_multimask: nothing at image size is copied per proposal)
    assert isinstance(inst.gt_masks, PolygonMasks if mask_format == "polygon" else NamedMasks)
    assert inst.gt_multimask.has_polygons == (mask_format == "polygon")
    np.testing.assert_array_equal(primary_bits(inst)[0], got[0])


def test_polygon_format_targets_are_rasterised_per_roi(image_file):
    """MASK_FORMAT polygon: the loss targets of polygon masks are PolygonMasks' (rasterised on the
    ROI), those of RLE masks BitMasks'; the full-image masks equal the bitmask format's."""
    transforms = TRANSFORMS["resize_flip_crop"]
    d = dataset_dict(image_file, [annotation(), annotation(category_id=2)])
    poly = mapper(transforms, mask_format="polygon")(d)["instances"]
    bits = mapper(transforms, mask_format="bitmask")(d)["instances"]
    assert poly.gt_multimask.has_polygons and not bits.gt_multimask.has_polygons
    np.testing.assert_array_equal(poly.gt_multimask.tensor.numpy(), bits.gt_multimask.tensor.numpy())
    # proposals as matching makes them: rows repeat, in another order
    rows = torch.tensor([1, 0, 1])
    boxes = torch.tensor([[3.0, 2.0, 50.0, 40.0], [10.0, 5.0, 30.0, 33.0], [0.0, 0.0, 70.0, 50.0]])
    got = poly.gt_multimask[rows].crop_and_resize(boxes, 14)
    assert got.shape == (3, 2, 14, 14) and got.dtype == torch.bool
    np.testing.assert_array_equal(
        got[:, 0].numpy(), poly.gt_masks[rows].crop_and_resize(boxes, 14).numpy()
    )
    np.testing.assert_array_equal(
        got[:, 1].numpy(), bits.gt_multimask.get("visible")[rows].crop_and_resize(boxes, 14).numpy()
    )
    # the bitmask format's targets differ from the polygon format's at boundary pixels only
    from_bits = bits.gt_multimask[rows].crop_and_resize(boxes, 14)
    agree = (from_bits[:, 0] == got[:, 0]).float().mean().item()
    assert agree > 0.9, agree


def test_empty_boxes_dropped_with_all_their_masks(image_file):
    inside = annotation(category_id=2)
    outside_poly = [50.0, 32.0, 58.0, 32.0, 58.0, 38.0, 50.0, 38.0]
    outside_visible = np.zeros((H0, W0), dtype=bool)
    outside_visible[33:37, 51:57] = True
    outside = annotation(outside_poly, outside_visible, category_id=0, bbox=(50, 32, 58, 38))
    crowd = dict(annotation(category_id=3), iscrowd=1)
    crop = T.CropTransform(0, 0, 45, 30)  # cuts the second object away entirely
    out = mapper([crop])(dataset_dict(image_file, [outside, crowd, inside]))
    inst = out["instances"]
    assert len(inst) == len(inst.gt_multimask) == len(inst.gt_masks) == 1
    assert inst.gt_classes.tolist() == [2]
    np.testing.assert_array_equal(inst.gt_multimask.tensor[0, 1].numpy(), VISIBLE[:30, :45])


# With crop augmentation detectron2's mapper recomputes each box from gt_masks, the primary mask,
# whose polygons CropTransform.apply_polygons has intersected with the crop window (shapely): the
# box is that of polygon & window. The expected boxes below are that region's extent, by hand.
TRIANGLE = [0.0, 0.0, 40.0, 0.0, 0.0, 40.0]  # detectron2's own example of it, scaled by 20
V_NOTCH = [0.0, 0.0, 60.0, 0.0, 60.0, 40.0, 30.0, 10.0, 0.0, 40.0]  # concave: a V cut from below
RECOMPUTED = {
    # the triangle's part with x >= 20 is x in [20, 40], y <= 40 - x: box (20, 0, 40, 20); moved
    # by the crop. Its vertex extent cut to the crop would be (0, 0, 20, 40).
    "crop": (TRIANGLE, [T.CropTransform(20, 0, 40, 40)], (0, 0, 20, 20)),
    # the window's corners (20, 12) and (40, 12) lie inside the notched shape, which reaches down to
    # y = 20 at x = 20 and x = 40 only: box (20, 12, 40, 20), moved by the crop
    "corners": (V_NOTCH, [T.CropTransform(20, 12, 20, 28)], (0, 0, 20, 8)),
    # clipped first, then scaled by 2 and flipped in the 80 px wide image: x -> 80 - x
    "crop_resize_flip": (
        TRIANGLE,
        [T.CropTransform(20, 0, 40, 40), T.ResizeTransform(40, 40, 80, 80), T.HFlipTransform(80)],
        (40, 0, 80, 40),
    ),
    # a crop after a resize (as FixedSizeCrop after ResizeScale): the triangle is (0, 0, 80, 0, 0,
    # 80) when cut by the window x in [40, 120]: box (40, 0, 80, 40), moved by the crop
    "resize_crop": (
        TRIANGLE,
        [T.ResizeTransform(40, 60, 80, 120), T.CropTransform(40, 0, 80, 80)],
        (0, 0, 40, 40),
    ),
}


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
@pytest.mark.parametrize("case", list(RECOMPUTED))
def test_recomputed_boxes_are_the_cropped_primary_masks_as_in_detectron2(
    image_file, case, mask_format
):
    poly, transforms, expected = RECOMPUTED[case]
    # the visible mask, larger than the part of the amodal one left, does not count (not primary)
    anno = annotation(poly=poly, bbox=(0, 0, 60, 40), visible=np.ones((H0, W0), dtype=bool))
    out = mapper(transforms, recompute_boxes=True, mask_format=mask_format)(
        dataset_dict(image_file, [anno])
    )
    box = out["instances"].gt_boxes.tensor[0].numpy()
    if mask_format == "polygon":
        np.testing.assert_allclose(box, expected, atol=1e-4)
    else:  # bits: the tight box of the pixels (BitMasks.get_bounding_boxes), within one pixel
        np.testing.assert_allclose(box, expected, atol=1.0)


def test_recomputed_box_of_a_not_annotated_primary_is_the_union_and_cut_objects_go(image_file):
    crop = T.CropTransform(20, 0, 40, 40)
    visible = np.zeros((H0, W0), dtype=bool)
    visible[5:15, 25:35] = True  # pixels x 25-34, y 5-14: after the crop x 5-14
    no_primary = annotation(poly=TRIANGLE, visible=visible)
    no_primary["multimask"]["amodal"] = None
    gone = annotation(poly=[0.0, 0.0, 15.0, 0.0, 15.0, 30.0, 0.0, 30.0], visible=None)
    out = mapper([crop], recompute_boxes=True)(dataset_dict(image_file, [no_primary, gone]))
    inst = out["instances"]
    assert len(inst) == 1  # the second object lies left of the crop: detectron2 drops it too
    np.testing.assert_allclose(inst.gt_boxes.tensor[0].numpy(), [5, 5, 15, 15])


def test_not_annotated_masks_are_flagged_and_extra_names_ignored(image_file):
    a = annotation(visible=None)
    a["multimask"]["occluded"] = [POLY]  # a name the config does not ask for
    out = mapper([], mask_names=("visible", "amodal"), primary="amodal")(
        dataset_dict(image_file, [a])
    )
    mm = out["instances"].gt_multimask
    assert mm.mask_names == ("visible", "amodal")
    assert mm.annotated.tolist() == [[False, True]]
    assert not mm.tensor[0, 0].any() and mm.tensor[0, 1].any()
    np.testing.assert_array_equal(primary_bits(out["instances"])[0], mm.tensor[0, 1].numpy())


def test_no_annotations_and_inference_mode(image_file):
    out = mapper([])(dataset_dict(image_file, []))
    assert tuple(out["instances"].gt_multimask.tensor.shape) == (0, 2, H0, W0)
    test_mapper = MultiMaskDatasetMapper(
        False, augmentations=[], image_format="BGR", mask_names=["amodal"]
    )
    out = test_mapper(dataset_dict(image_file, [annotation()]))
    assert "instances" not in out and "annotations" not in out and out["image_id"] == 42


def test_from_cfg_reads_augmentations_names_and_checks_the_dataset(tmp_path):
    json_file, image_root = write_dataset(tmp_path, [])
    name = f"test_mapper_{uuid.uuid4().hex}"
    fields = {"amodal": "segmentation", "visible": "visible_mask", "occluded": "amodal - visible"}
    register_multimask_coco_instances(name, {}, json_file, image_root, fields)
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["amodal", "visible"]
    cfg.MODEL.ROI_MULTI_MASK_HEAD.PRIMARY = "visible"
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.CROP.ENABLED = True
    m = MultiMaskDatasetMapper(cfg, is_train=True)
    assert (m.mask_names, m.primary, m.recompute_boxes) == (["amodal", "visible"], "visible", True)
    assert m.mask_format == "polygon"  # detectron2's default INPUT.MASK_FORMAT
    cfg.INPUT.MASK_FORMAT = "bitmask"
    assert MultiMaskDatasetMapper(cfg, is_train=True).mask_format == "bitmask"
    cfg.INPUT.MASK_FORMAT = "rle"
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT must be 'polygon' or 'bitmask', got 'rle'"):
        MultiMaskDatasetMapper(cfg, is_train=True)
    cfg.INPUT.MASK_FORMAT = "polygon"
    augs = [type(a).__name__ for a in m.augmentations.augs]
    assert augs == ["RandomCrop", "ResizeShortestEdge", "RandomFlip"]
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["visible", "modal"]
    with pytest.raises(
        ValueError, match=r"\['modal'\].*provides \['amodal', 'visible', 'occluded'\]"
    ):
        MultiMaskDatasetMapper(cfg, is_train=True)
    MultiMaskDatasetMapper(cfg, is_train=False)  # inference does not need the masks


def test_missing_or_unreadable_image_names_file_and_id(tmp_path):
    missing = str(tmp_path / "missing.png")
    with pytest.raises(
        FileNotFoundError, match=r"image id 42: image file .*missing\.png does not exist"
    ):
        mapper([])(dataset_dict(missing, []))
    corrupt = str(tmp_path / "corrupt.png")
    with open(corrupt, "wb") as f:
        f.write(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"image id 42: cannot read image file .*corrupt\.png"):
        mapper([])(dataset_dict(corrupt, []))


class _FolderHandler(PathHandler):
    """An iopath handler of ``mmtest-images://<name>``: files of one folder, as a remote store."""

    PREFIX = "mmtest-images://"

    def __init__(self, root):
        super().__init__()
        self.root = root

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        return os.path.join(self.root, path[len(self.PREFIX) :])

    def _open(self, path, mode="r", **kwargs):
        return open(self._get_local_path(path), mode)


def test_image_uris_are_read_through_the_path_manager(image_file):
    """A file name may be any URI detectron2's read_image (iopath's PathManager) can open."""
    PathManager.register_handler(_FolderHandler(os.path.dirname(image_file)), allow_override=True)
    uri = _FolderHandler.PREFIX + os.path.basename(image_file)
    out = mapper([])(dataset_dict(uri, [annotation()]))
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), cv2.imread(image_file))
    assert len(out["instances"]) == 1
    with pytest.raises(
        FileNotFoundError, match=r"image id 42: image file mmtest-images://gone\.png does not exist"
    ):
        mapper([])(dataset_dict(_FolderHandler.PREFIX + "gone.png", []))


def test_rle_of_wrong_size_at_map_time_names_the_image(image_file):
    a = annotation()
    a["multimask"]["visible"] = rle_of(np.ones((H0 + 2, W0), dtype=bool))
    with pytest.raises(ValueError, match=r"image id 42 \(.*img\.png\): RLE size \[42, 60\]"):
        mapper([])(dataset_dict(image_file, [a]))


ODD = [8.0, 6.0, 40.0, 9.0, 34.0, 33.0, 12.0]  # 7 numbers: no polygon (detectron2 drops it)
FOUR = [8.0, 6.0, 40.0, 9.0]  # 2 points


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_bad_polygons_from_other_loaders_are_dropped_by_the_one_rule(image_file, mask_format):
    a = annotation(visible=None)
    a["multimask"]["amodal"] = [ODD, POLY, FOUR]  # the valid one is kept
    b = annotation(visible=None)
    b["multimask"]["amodal"] = [ODD]  # nothing valid: not annotated, as the loaders make it
    b["multimask"]["visible"] = {"op": "-", "operands": [[POLY, ODD], [FOUR]]}
    inst = mapper([], mask_format=mask_format)(dataset_dict(image_file, [a, b]))["instances"]
    expected = polygons_to_bitmask([np.array(POLY)], H0, W0)
    np.testing.assert_array_equal(inst.gt_multimask.tensor[0, 0].numpy(), expected)
    np.testing.assert_array_equal(inst.gt_multimask.tensor[1, 1].numpy(), expected)
    assert inst.gt_multimask.annotated.tolist() == [[True, False], [False, True]]
    # the rasteriser everything else uses skips them too
    rle = segmentation_to_rle([ODD, POLY, FOUR], H0, W0)
    np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), expected)


def test_one_coordinate_limit_for_loaders_and_mapper(image_file, tmp_path):
    far = [8.0, 6.0, 40.0, 9.0, 700.0, 33.0]  # 700 px: more than 10 image sizes from a 60 px image
    a = annotation(poly=far, visible=None)
    with pytest.raises(ValueError, match=r"image id 42 .*coordinate 700, more than 10x the 40 x"):
        mapper([])(dataset_dict(image_file, [a]))
    images = [{"id": 7, "file_name": "a.png", "height": H0, "width": W0}]
    json_file, image_root = write_dataset(
        tmp_path, [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": [far]}], images
    )
    with pytest.raises(ValueError, match=r"annotation id 1 .*coordinate 700, more than 10x the 40"):
        load_multimask_coco_json(json_file, image_root, {"amodal": "segmentation"})
    a = annotation(poly=[8.0, 6.0, 40.0, 9.0, 590.0, 33.0], visible=None)  # within: fine
    assert len(mapper([])(dataset_dict(image_file, [a]))["instances"]) == 1


@pytest.mark.parametrize(
    "transforms",
    [
        [T.ResizeTransform(H0, W0, 73, 101), T.HFlipTransform(101), T.CropTransform(5, 4, 60, 50)],
        [T.VFlipTransform(H0), T.RotationTransform(H0, W0, 30, expand=False)],
    ],
    ids=["resize_flip_crop", "vflip_rotate"],
)
def test_rle_masks_transformed_together_equal_one_by_one(transforms):
    """RLE masks go through apply_segmentation eight per call (one bit each): the result must be
    what transforming each mask alone gives, for 11 masks (two planes)."""
    rng = np.random.default_rng(0)
    annos, expected = [], []
    transforms = T.TransformList(transforms)
    for i in range(11):
        m = np.zeros((H0, W0), dtype=bool)
        x, y = int(rng.integers(0, W0 - 20)), int(rng.integers(0, H0 - 15))
        m[y : y + 15, x : x + 20] = rng.random((15, 20)) > 0.3
        annos.append(
            {
                "bbox": [x, y, x + 20, y + 15],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 0,
                "multimask": {"visible": rle_of(m)},
            }
        )
        expected.append(transforms.apply_segmentation(m.astype(np.uint8)) > 0)
    h, w = expected[0].shape
    inst = multimask_annotations_to_instances(
        annos, (h, w), ["visible"], transforms=transforms, original_size=(H0, W0)
    )
    kept = inst.gt_multimask.tensor[:, 0].numpy()
    # instances whose box left the image are dropped; compare the kept ones by their masks
    boxes = transforms.apply_box(np.array([a["bbox"] for a in annos], dtype=np.float64))
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    assert len(kept) == keep.sum() >= 9
    np.testing.assert_array_equal(kept, np.stack(expected)[keep])
