"""
MultiMaskCOCOEvaluator's COCOeval backends agree with pycocotools, occluded subsets included: the
subsets are further runs of one COCOeval with other areas and ignore flags, which every backend
must read from the annotation dicts (``cocoeval_backend._Rerunnable``).
"""

import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from multimask.evaluation import MultiMaskCOCOEvaluator, available_backends, coco_eval_backend
from multimask.evaluation.cocoeval_backend import BACKENDS
from multimask.structures import derived_mask, segmentation_to_rle

H, W = 96, 128
NAMES = ("amodal", "visible", "occluded")
CLASSES = ("car", "person", "cyclist")
NUM_IMAGES = 36
# contiguous id -> dataset id, as KINS's ids are not 0..C-1
ID_MAP = {1: 0, 2: 1, 4: 2}
TOLERANCE = 0.05  # AP points


def star_polygon(rng, cx, cy, radius, vertices=8):
    """A simple (star-shaped) polygon around (cx, cy): angles sorted, radii jittered."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.6, 1.0, vertices)
    xs = np.clip(cx + radii * np.cos(angles), 0, W)
    ys = np.clip(cy + radii * np.sin(angles), 0, H)
    return [np.stack([xs, ys], axis=1).ravel().tolist()]


def left_of(x_cut):
    """RLE of the image part left of column x_cut: what an occluder on the right leaves visible."""
    m = np.zeros((H, W), dtype=np.uint8, order="F")
    m[:, : max(0, int(x_cut))] = 1
    return mask_util.encode(m)


def visible_part(amodal_polys, x_cut):
    """amodal & left_of(x_cut), as an RLE with str counts (the datasets' RLE form)."""
    rle = mask_util.merge([segmentation_to_rle(amodal_polys, H, W), left_of(x_cut)], intersect=True)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def make_objects(seed=0):
    """Per image, a list of objects: class, amodal polygons, occluder cut (None: fully visible)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(NUM_IMAGES):
        objects = []
        for _ in range(rng.integers(1, 6)):
            cx, cy = rng.uniform(10, W - 10), rng.uniform(10, H - 10)
            radius = rng.choice([6.0, 14.0, 30.0])  # small, medium and (clipped) large areas
            cut = None if rng.uniform() < 0.3 else cx + rng.uniform(-radius, 0.8 * radius)
            objects.append(
                {
                    "cls": int(rng.integers(0, len(CLASSES))),
                    "amodal": star_polygon(rng, cx, cy, radius),
                    "cut": cut,
                    "annotated": rng.uniform() > 0.15,  # else visible / occluded are not annotated
                    "center": (cx, cy, radius),
                }
            )
        images.append(objects)
    return images


OBJECTS = make_objects()


def dataset_dicts():
    dicts = []
    for i, objects in enumerate(OBJECTS):
        anns = []
        for o in objects:
            amodal = o["amodal"]
            visible = visible_part(amodal, W + 1 if o["cut"] is None else o["cut"])
            multimask = {"amodal": amodal, "visible": None, "occluded": None}
            if o["annotated"]:
                multimask.update(visible=visible, occluded=derived_mask("-", amodal, visible))
            box = mask_util.toBbox(segmentation_to_rle(amodal, H, W)).tolist()
            anns.append(
                {
                    "bbox": box,
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": o["cls"],
                    "segmentation": amodal,
                    "multimask": multimask,
                }
            )
        dicts.append(
            {
                "file_name": f"gen{i}.png",
                "image_id": 100 + i,
                "height": H,
                "width": W,
                "annotations": anns,
            }
        )
    return dicts


def register(name, dicts_fn=dataset_dicts):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, dicts_fn)
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASSES),
            thing_dataset_id_to_contiguous_id=ID_MAP,
            mask_names=list(NAMES),
        )
    return name


def decode(segm):
    return mask_util.decode(segmentation_to_rle(segm, H, W)).astype(bool)


def predictions(seed=1):
    """
    Model-like inputs and outputs: a noisy detection of most objects (jittered polygons, a jittered
    occluder cut, now and then the wrong class), a few random false positives, random scores.
    """
    rng = np.random.default_rng(seed)
    inputs, outputs = [], []
    for i, objects in enumerate(OBJECTS):
        dets = []  # (amodal polygons, cut, class)
        for o in objects:
            if rng.uniform() < 0.15:
                continue  # missed
            cx, cy, radius = o["center"]
            poly = np.asarray(o["amodal"][0]) + rng.normal(0, 0.08 * radius, len(o["amodal"][0]))
            cut = None if o["cut"] is None else o["cut"] + rng.normal(0, 2.0)
            cls = o["cls"] if rng.uniform() > 0.1 else int(rng.integers(0, len(CLASSES)))
            dets.append(([poly.tolist()], cut, cls))
        for _ in range(rng.integers(0, 4)):
            cx, cy = rng.uniform(10, W - 10), rng.uniform(10, H - 10)
            poly = star_polygon(rng, cx, cy, rng.choice([6.0, 14.0, 30.0]))
            dets.append((poly, cx + rng.normal(0, 5), int(rng.integers(0, len(CLASSES)))))
        masks = np.zeros((len(dets), len(NAMES), H, W), dtype=bool)
        for j, (poly, cut, _) in enumerate(dets):
            masks[j, 0] = decode(poly)
            masks[j, 1] = masks[j, 0] & decode(left_of(W + 1 if cut is None else cut))
            masks[j, 2] = masks[j, 0] & ~masks[j, 1]
        boxes = [mask_util.toBbox(segmentation_to_rle(d[0], H, W)).tolist() for d in dets]
        inst = Instances((H, W))
        inst.pred_boxes = Boxes(
            torch.tensor(BoxMode.convert(np.asarray(boxes).reshape(-1, 4), BoxMode.XYWH_ABS, 0))
        )
        inst.scores = torch.from_numpy(rng.uniform(0.05, 1.0, len(dets))).float()
        inst.pred_classes = torch.tensor([d[2] for d in dets], dtype=torch.int64)
        inst.pred_multimasks = torch.from_numpy(masks)
        inputs.append({"image_id": 100 + i, "height": H, "width": W})
        outputs.append({"instances": inst})
    return inputs, outputs


PREDICTIONS = predictions()


def evaluate(backend, dataset="multimask_backends_test", **kwargs):
    ev = MultiMaskCOCOEvaluator(
        register(dataset), mask_names=NAMES, distributed=False, eval_backend=backend, **kwargs
    )
    ev.process(*PREDICTIONS)
    return ev.evaluate()


@pytest.fixture(scope="module")
def reference():
    return evaluate("pycocotools")


def assert_close(results, expected):
    assert list(results) == list(expected)
    for key in expected:
        assert list(results[key]) == list(expected[key]), key
        for metric, value in expected[key].items():
            got = results[key][metric]
            if math.isnan(value):
                assert math.isnan(got), (key, metric, got)
            else:
                assert abs(got - value) <= TOLERANCE, (key, metric, got, value)


def test_reference_exercises_subsets_and_crowds(reference):
    """The data makes a backend that drops the subset flag, or the crowd regions, disagree."""
    keys = ["bbox"] + [f"segm_{n}{s}" for n in NAMES for s in ("", "_occluded")]
    keys += ["segm_occluded_uoais"]
    assert list(reference) == keys
    for key in keys:
        assert 5 < reference[key]["AP"] < 95, key
    # the occluded masks' objects are all occluded: only the amodal and visible subsets differ
    for name in NAMES[:2]:
        assert abs(reference[f"segm_{name}_occluded"]["AP"] - reference[f"segm_{name}"]["AP"]) > 1


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "pycocotools"])
def test_backend_matches_pycocotools(backend, reference):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed here")
    assert_close(evaluate(backend), reference)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "pycocotools"])
def test_backend_honours_protocols_and_max_dets(backend, reference):
    """The papers' occlusion subsets and a detection limit of 2 per image and class, as well."""
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed here")
    kwargs = dict(occlusion_thresholds=(0.15, 0.4), max_dets_per_image=2)
    expected = evaluate("pycocotools", **kwargs)
    assert expected["segm_amodal"]["AP"] < reference["segm_amodal"]["AP"] - 1  # the limit bites
    assert 5 < expected["segm_amodal_occ0.4"]["AP"] < 95
    assert_close(evaluate(backend, **kwargs), expected)


def test_string_image_ids():
    """COCO image ids are the evaluator's own integers: string image_ids work on every backend."""

    def dicts_with_str_ids():
        return [dict(d, image_id=f"img-{d['image_id']}") for d in dataset_dicts()]

    dataset = register("multimask_backends_test_str_ids", dicts_with_str_ids)
    inputs, outputs = PREDICTIONS
    inputs = [dict(inp, image_id=f"img-{inp['image_id']}") for inp in inputs]
    expected = evaluate("pycocotools")
    for backend in available_backends():
        ev = MultiMaskCOCOEvaluator(dataset, distributed=False, eval_backend=backend)
        ev.process(inputs, outputs)
        assert_close(ev.evaluate(), expected)


def test_backend_choice():
    available = available_backends()
    assert available[-1] == "pycocotools"
    assert coco_eval_backend().name == available[0]
    assert coco_eval_backend("pycocotools").name == "pycocotools"
    with pytest.raises(ValueError, match="unknown COCOeval backend"):
        coco_eval_backend("cocoapi")
    for name in set(BACKENDS) - set(available):
        with pytest.raises(ImportError, match=name):
            coco_eval_backend(name)
