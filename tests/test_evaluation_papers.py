"""
MultiMaskCOCOEvaluator's occlusion keys against the papers' evaluators, on every backend.

The references below are written here from the evaluators' code as read in the public
repositories (re-implemented on plain pycocotools, nothing imported from them), and never go
through multimask's evaluation code:

- VRSP (YutingXiao/Amodal-Segmentation-Based-on-Visible-Region-Segmentation-and-Shape-Prior),
  AISFormer and MAS-Net share one forked pycocotools (``detectron2/data/amodal_datasets/
  pycocotools``) and ``detectron2/evaluation/amodal_visible_evaluation.py``:
  ``COCO.createIndex`` overwrites each ground truth's ``area`` with ``1 - occlude_rate``, else
  ``area(inmodal_seg) / area``; ``Params.areaRng = [[0, 1.0], [0, 0.85], [0, 0.75], [0, 0.6]]``
  (so ``stats[3:6]``, COCO's APs / APm / APl, are the subsets occluded >= 0.15 / 0.25 / 0.4);
  ``amodal_instances_to_coco_json`` gives every detection, amodal and visible result alike, the
  area ``(torch.sum(amodal * visible).float() / torch.sum(amodal).float()).item()``, which the
  fork's ``loadRes`` keeps; the visible evaluation swaps the ground-truth masks for the visible
  ones and keeps the areas.
- UOAIS (gist-ailab/uoais, ``adet/evaluation/amodalvisible_evaluation.py`` and its pycocotools
  fork), task ``occlusion_segm``: ground truth with ``occluded_rate > 0.05`` gets
  ``segmentation = occluded_mask``, the others are deleted; ``createIndex`` sets ``area = area *
  occluded_rate``; the detections are those with ``torch.sum(visible) / torch.sum(amodal) < 0.95``,
  with their occluded mask and its pixel count as area; ``evaluate()`` keeps the images with a
  detection ("eval only forwarded data"); COCO's area ranges.

The data hits the edges: objects occluded exactly 0.15 / 0.25 / 0.4 (by their masks and by an
``occlude_rate``) and 0.05, a file ``area`` that is not the mask's, false positives whose
predicted visible fraction is exactly 0.85 / 0.75 / 0.6 in float32 (0.85 and 0.6 round up, 0.75
does not), empty predicted masks, an image without detection and one with more than 100.
"""

import contextlib
import copy
import io
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from multimask.evaluation import MultiMaskCOCOEvaluator, available_backends
from multimask.evaluation.occlusion import (
    predicted_occluded,
    predicted_visible_fraction,
    visible_bound,
)
from multimask.structures import derived_mask

H, W = 64, 192
CELL_W, CELL_H = 32, 16  # a 6 x 4 grid; an object is a 20 x 10 rectangle in its cell
NAMES = ("amodal", "visible", "occluded")
CLASSES = ("car", "person")
ID_MAP = {1: 0, 3: 1}  # dataset category ids -> contiguous
DATASET_IDS = {0: 1, 1: 3}
NUM_IMAGES = 14
MANY, NONE = 4, 5  # the image with more than 100 detections, the image with none
THRESHOLDS = (0.15, 0.25, 0.4)
FORK_RANGES = [[0, 1.0], [0, 0.85], [0, 0.75], [0, 0.6]]  # the forks' Params.areaRng
TOLERANCE = 0.1  # AP points


def rect(cell, cols=20, dx=0, rows=10):
    """A cell's rectangle, its first `cols` columns, moved `dx` px right."""
    x0, y0 = (cell % 6) * CELL_W + 4 + dx, (cell // 6) * CELL_H + 3
    m = np.zeros((H, W), dtype=bool)
    m[y0 : y0 + rows, x0 : x0 + cols] = True
    return m


def rle(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("utf-8")
    return r


def make_data(seed=0):
    """Per image, the objects (cell, class, visible columns, occlude_rate, file area) and the
    detections (class, score, amodal / visible masks)."""
    rng = np.random.default_rng(seed)
    cols_choices = [20, 19, 18, 17, 17, 16, 15, 15, 13, 12, 12, 11, 8, 4]
    images = []
    for i in range(NUM_IMAGES):
        cells = rng.permutation(24)
        objects = []
        for cell in cells[: rng.integers(2, 8)]:
            o = {
                "cell": int(cell),
                "cls": int(rng.integers(2)),
                "cols": int(rng.choice(cols_choices)),
            }
            u = rng.uniform()
            if u < 0.2:  # the file's rate wins over the masks
                o["rate"] = float(rng.choice([0.15, 0.25, 0.4, 0.05, 0.1]))
            elif u < 0.35:  # the file's area is not the mask's
                o["area"] = float(rng.choice([190.0, 210.0, 250.0]))
            if u < 0.35:  # occluded, so that UOAIS's ground truth has a non-empty occluded mask
                o["cols"] = min(o["cols"], 19)
            objects.append(o)
        dets = []
        if i != NONE:
            for o in objects:
                if rng.uniform() < 0.15:
                    continue
                dx = int(rng.choice([0, 0, 1, 2, 3, 5]))
                cols = int(np.clip(o["cols"] + rng.choice([0, 0, -1, 1, -2]), 1, 20))
                cls = o["cls"] if rng.uniform() > 0.1 else 1 - o["cls"]
                amodal = rect(o["cell"], dx=dx)
                dets.append((cls, rng.uniform(0.05, 1.0), amodal, rect(o["cell"], cols, dx)))
            free = cells[len(objects) :]
            for cell in free[: rng.integers(0, 4)]:  # false positives at the float32 edges
                cols = int(rng.choice([17, 15, 12, 20, 19, 18]))
                dets.append(
                    (int(rng.integers(2)), rng.uniform(0.3, 1.0), rect(cell), rect(cell, cols))
                )
        empty = np.zeros((H, W), dtype=bool)
        if i == 1:  # an empty prediction, scored high
            dets.append((0, 0.97, empty, empty))
        if i == 2:  # nothing visible: a false positive in every subset
            dets.append((1, 0.95, rect(int(cells[-1])), empty))
        if i == 3:  # an empty amodal mask with a visible one: visible fraction 0 / 0
            dets.append((0, 0.96, empty, rect(int(cells[-1]), 8)))
        if i == MANY:
            for _ in range(115):
                x0, y0 = rng.integers(0, W - 12), rng.integers(0, H - 8)
                m = np.zeros((H, W), dtype=bool)
                m[y0 : y0 + 8, x0 : x0 + 12] = True
                dets.append((0, rng.uniform(0.0, 1.0), m, m & (np.arange(W) < x0 + 9)))
        images.append({"objects": objects, "dets": dets})
    return images


DATA = make_data()


def gt_masks(o):
    amodal = rect(o["cell"])
    visible = rect(o["cell"], o["cols"])
    return amodal, visible, amodal & ~visible


def dataset_dicts():
    dicts = []
    for i, image in enumerate(DATA):
        anns = []
        for o in image["objects"]:
            amodal, visible, _ = gt_masks(o)
            a, v = rle(amodal), rle(visible)
            ann = {
                "bbox": list(mask_util.toBbox(a)),
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": o["cls"],
                "multimask": {"amodal": a, "visible": v, "occluded": derived_mask("-", a, v)},
            }
            if "rate" in o:
                ann["occlude_rate"] = o["rate"]
            if "area" in o:
                ann["area"] = o["area"]
            anns.append(ann)
        dicts.append({"file_name": f"p{i}.png", "image_id": 10 + i, "height": H, "width": W})
        dicts[-1]["annotations"] = anns
    return dicts


def register(name="multimask_eval_papers"):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, dataset_dicts)
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASSES), thing_dataset_id_to_contiguous_id=ID_MAP
        )
    return name


def model_outputs():
    inputs, outputs = [], []
    for i, image in enumerate(DATA):
        dets = image["dets"]
        masks = np.zeros((len(dets), 3, H, W), dtype=bool)
        for j, (_, _, amodal, visible) in enumerate(dets):
            masks[j] = amodal, visible, amodal & ~visible
        boxes = [mask_util.toBbox(rle(m[0])) for m in masks]
        inst = Instances((H, W))
        xyxy = BoxMode.convert(np.asarray(boxes, np.float32).reshape(-1, 4), BoxMode.XYWH_ABS, 0)
        inst.pred_boxes = Boxes(torch.from_numpy(xyxy))
        inst.scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.int64)
        inst.pred_multimasks = torch.from_numpy(masks)
        inputs.append({"image_id": 10 + i, "height": H, "width": W})
        outputs.append({"instances": inst})
    return inputs, outputs


# ------------------------------------------------------------------ the references
def released_json():
    """The ground truth as an amodal dataset's file holds it: amodal ``segmentation``,
    ``inmodal_seg``, ``occluded_mask``, ``occlude_rate`` where given, ``area``."""
    images, anns = [], []
    for i, image in enumerate(DATA):
        images.append({"id": i + 1, "height": H, "width": W})
        for o in image["objects"]:
            amodal, visible, occluded = gt_masks(o)
            ann = {
                "id": len(anns) + 1,
                "image_id": i + 1,
                "category_id": DATASET_IDS[o["cls"]],
                "iscrowd": 0,
                "bbox": list(mask_util.toBbox(rle(amodal))),
                "segmentation": rle(amodal),
                "inmodal_seg": rle(visible),
                "occluded_mask": rle(occluded),
                "area": o.get("area", float(amodal.sum())),
            }
            if "rate" in o:
                ann["occlude_rate"] = o["rate"]
            anns.append(ann)
    categories = [{"id": DATASET_IDS[k], "name": c} for k, c in enumerate(CLASSES)]
    return {"images": images, "annotations": anns, "categories": categories}


def index(dataset):
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def results(mask_index, area_of):
    """COCO results of every detection's mask `mask_index` (0 amodal, 1 visible, 2 occluded)."""
    out = []
    for i, image in enumerate(DATA):
        for cls, score, amodal, visible in image["dets"]:
            mask = (amodal, visible, amodal & ~visible)[mask_index]
            if mask_index == 2 and not mask.any():
                # multimask's rule for the occluded-region mask (README): an empty prediction
                # there says "not occluded" and is no detection; the other masks score it
                continue
            out.append(
                {
                    "image_id": i + 1,
                    "category_id": DATASET_IDS[cls],
                    "score": float(score),
                    "segmentation": rle(mask),
                    "area": area_of(torch.from_numpy(amodal), torch.from_numpy(visible)),
                }
            )
    return out


def vrsp_area(amodal_mask, visible_mask):
    """amodal_instances_to_coco_json's area, as written there."""
    return (torch.sum(amodal_mask * visible_mask).float() / torch.sum(amodal_mask).float()).item()


def run_cocoeval(coco_gt, dts, area_rng=None, keep_dt_area=False, img_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(dts))
    if keep_dt_area:  # the fork's loadRes does not recompute a mask result's area
        for ann, r in zip(coco_dt.dataset["annotations"], dts):
            ann["area"] = r["area"]
    ev = COCOeval(coco_gt, coco_dt, "segm")
    if area_rng is not None:
        ev.params.areaRng = area_rng
    if img_ids is not None:
        ev.params.imgIds = img_ids
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        if len(ev.params.areaRng) == 4:
            ev.summarize()
    return ev


def metrics_at(ev, a):
    """AP, AP50, AP75 and AP-<class> on area range index `a`, maxDets 100, in percent."""
    p = ev.eval["precision"][..., a, -1]

    def mean(x):
        x = x[x > -1]
        return float(x.mean() * 100) if x.size else float("nan")

    out = {"AP": mean(p), "AP50": mean(p[0]), "AP75": mean(p[5])}
    for k, c in enumerate(CLASSES):
        out[f"AP-{c}"] = mean(p[:, :, k])
    return out


def full_metrics(ev):
    out = metrics_at(ev, 0)
    out.update(APs=ev.stats[3] * 100, APm=ev.stats[4] * 100, APl=ev.stats[5] * 100)
    return {k: float("nan") if v < 0 else v for k, v in out.items()}


def fork_ground_truth(mask_key):
    """The fork's createIndex, then the evaluator's swap of the ground-truth masks."""
    coco = index(released_json())
    for ann in coco.dataset["annotations"]:
        if "occlude_rate" in ann:
            ann["area"] = 1 - ann["occlude_rate"]
        else:
            ann["area"] = mask_util.area(ann["inmodal_seg"]) / ann["area"]
        ann["segmentation"] = ann[mask_key]
    # multimask's rule for a mask annotated empty (the occluded mask of an unoccluded object):
    # no object; the forks never evaluate the occluded masks
    coco.dataset["annotations"] = [
        a for a in coco.dataset["annotations"] if mask_util.area(a["segmentation"]) > 0
    ]
    return index(coco.dataset)


def plain_ground_truth(mask_key):
    coco = index(released_json())
    anns = []
    for ann in coco.dataset["annotations"]:
        ann["segmentation"] = ann[mask_key]
        ann["area"] = float(mask_util.area(ann["segmentation"]))
        if ann["area"] > 0:
            anns.append(ann)
    coco.dataset["annotations"] = anns
    return index(coco.dataset)


def uoais_reference():
    dataset = released_json()
    kept = []
    for ann in dataset["annotations"]:
        if "occlude_rate" in ann:
            rate = ann["occlude_rate"]
        else:  # the rate of the masks, hidden / whole
            rate = (ann["area"] - mask_util.area(ann["inmodal_seg"])) / ann["area"]
        if rate > 0.05:
            kept.append(dict(ann, segmentation=ann["occluded_mask"], area=ann["area"] * rate))
    coco = index({**dataset, "annotations": kept})
    dts = []
    for i, image in enumerate(DATA):
        for cls, score, amodal, visible in image["dets"]:
            a, v = torch.from_numpy(amodal), torch.from_numpy(visible)
            ratio = torch.sum(v) / torch.sum(a)
            if ratio < 0.95:
                occluded = amodal & ~visible
                dts.append(
                    {
                        "image_id": i + 1,
                        "category_id": DATASET_IDS[cls],
                        "score": float(score),
                        "segmentation": rle(occluded),
                        "area": float(occluded.sum()),
                    }
                )
    # "eval only forwarded data": the images with a detection (UOAIS lists an image once per
    # class with a detection there; its datasets have one class)
    img_ids = sorted({d["image_id"] for d in dts})
    return full_metrics(run_cocoeval(coco, dts, keep_dt_area=True, img_ids=img_ids))


@pytest.fixture(scope="module")
def reference():
    expected = {}
    for k, (name, key) in enumerate(
        [("amodal", "segmentation"), ("visible", "inmodal_seg"), ("occluded", "occluded_mask")]
    ):
        expected[f"segm_{name}"] = full_metrics(
            run_cocoeval(plain_ground_truth(key), results(k, lambda a, v: 0.0))
        )
        coco = fork_ground_truth(key)
        fork = run_cocoeval(coco, results(k, vrsp_area), FORK_RANGES, keep_dt_area=True)
        strict = run_cocoeval(coco, results(k, lambda a, v: 0.0), FORK_RANGES, keep_dt_area=True)
        occluded = run_cocoeval(coco, results(k, lambda a, v: 0.0), [[0, 0.9]], keep_dt_area=True)
        expected[f"segm_{name}_occluded"] = metrics_at(occluded, 0)
        for a, t in enumerate(THRESHOLDS, 1):
            expected[f"segm_{name}_occ{t:g}"] = metrics_at(fork, a)
            expected[f"segm_{name}_occ{t:g}_strict"] = metrics_at(strict, a)
    expected["segm_occluded_uoais"] = uoais_reference()
    return expected


@pytest.fixture(scope="module")
def outputs():
    return model_outputs()


def evaluate(backend, outputs, **kwargs):
    ev = MultiMaskCOCOEvaluator(
        register(),
        mask_names=NAMES,
        distributed=False,
        eval_backend=backend,
        tasks=("segm",),
        occluded_threshold=0.1,
        occlusion_thresholds=THRESHOLDS,
        **kwargs,
    )
    ev.process(*outputs)
    return ev.evaluate()


def test_the_data_hits_the_edges(reference):
    counts = [len(image["dets"]) for image in DATA]
    assert counts[NONE] == 0 and counts[MANY] > 100
    fractions = [vrsp_area(torch.from_numpy(d[2]), torch.from_numpy(d[3])) for d in DATA[2]["dets"]]
    assert min(fractions) == 0.0
    # the float32 edges: 17 / 20 and 12 / 20 are above 0.85 and 0.6, 15 / 20 is 0.75
    assert vrsp_area(torch.ones(20), torch.arange(20) < 17) > 0.85
    assert vrsp_area(torch.ones(20), torch.arange(20) < 15) == 0.75
    assert vrsp_area(torch.ones(20), torch.arange(20) < 12) > 0.6
    for t in THRESHOLDS:
        fork, strict = reference[f"segm_amodal_occ{t:g}"], reference[f"segm_amodal_occ{t:g}_strict"]
        assert 5 < strict["AP"] < fork["AP"] < 95, t  # the detection rule matters
    assert reference["segm_amodal_occ0.15"]["AP"] != reference["segm_amodal_occ0.25"]["AP"]
    assert 5 < reference["segm_occluded_uoais"]["AP"] < 95


@pytest.mark.parametrize("backend", available_backends())
def test_every_key_matches_the_papers_evaluators(backend, reference, outputs):
    results = evaluate(backend, outputs)
    assert set(reference) <= set(results)
    for key, expected in reference.items():
        for metric, value in expected.items():
            got = results[key][metric]
            if math.isnan(value):
                assert math.isnan(got), (key, metric, got)
            else:
                assert abs(got - value) <= TOLERANCE, (key, metric, got, value)


def test_predicted_occlusion_rules_are_float32():
    inter, whole = np.array([17, 15, 12, 0, 0]), np.array([20, 20, 20, 20, 0])
    fractions = predicted_visible_fraction(inter, whole)
    assert fractions[0] > 0.85 and fractions[1] == 0.75 and fractions[2] > 0.6
    assert fractions[3] == 0.0 and math.isnan(fractions[4])
    # UOAIS: 19 / 20 is not below 0.95, 18 / 20 is; an empty whole mask is never occluded
    assert predicted_occluded(np.array([19, 18, 5, 5]), np.array([20, 20, 20, 0])).tolist() == [
        False,
        True,
        True,
        False,
    ]
    assert [visible_bound(t) for t in (0.15, 0.25, 0.4, 0.7)] == [0.85, 0.75, 0.6, 0.3]
