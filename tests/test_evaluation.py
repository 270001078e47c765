"""MultiMaskCOCOEvaluator on a tiny hand-made dataset, with hand-made predictions."""

import json
import math
import os
import socket

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from multimask import add_multimask_config
from multimask.evaluation import MultiMaskCOCOEvaluator

SIZE = 128
NAMES = ("amodal", "visible", "occluded")
DATASET = "multimask_eval_test"
# dataset category ids 3 and 7 are contiguous 0 and 1
ID_MAP = {3: 0, 7: 1}


def rect(x0, y0, x1, y1):
    m = np.zeros((SIZE, SIZE), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("utf-8")
    return r


# Each object: image, class, amodal rectangle, occluder rectangle (visible = amodal minus it),
# whether visible/occluded are annotated, and an explicit occlude_rate if any.
OBJECTS = [
    dict(img=1, cls=0, amodal=(10, 10, 60, 60), occluder=(40, 0, 128, 128)),  # 40 % occluded
    dict(img=1, cls=1, amodal=(70, 20, 120, 70), occluder=None),  # fully visible
    dict(img=2, cls=0, amodal=(20, 30, 80, 90), occluder=(0, 0, 128, 60), annotated=False),
    dict(img=2, cls=1, amodal=(84, 80, 124, 120), occluder=(84, 100, 128, 128), rate=0.5),
]


def object_masks(o):
    amodal = rect(*o["amodal"])
    visible = amodal & ~rect(*o["occluder"]) if o["occluder"] else amodal.copy()
    return {"amodal": amodal, "visible": visible, "occluded": amodal & ~visible}


def dataset_dicts():
    dicts = {
        i: {"file_name": f"img{i}.png", "image_id": i, "height": SIZE, "width": SIZE}
        for i in (1, 2, 3)
    }  # image 3 has no annotation
    for d in dicts.values():
        d["annotations"] = []
    for o in OBJECTS:
        m = object_masks(o)
        x0, y0, x1, y1 = o["amodal"]
        ann = {
            "bbox": [x0, y0, x1, y1],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": o["cls"],
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            # amodal as polygons, the others as RLE, as the amodal datasets mix them
            "multimask": {"amodal": [[x0, y0, x1, y0, x1, y1, x0, y1]]},
        }
        for n in ("visible", "occluded"):
            ann["multimask"][n] = rle(m[n]) if o.get("annotated", True) else None
        if "rate" in o:
            ann["occlude_rate"] = o["rate"]
        dicts[o["img"]]["annotations"].append(ann)
    return list(dicts.values())


def register(name=DATASET):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, dataset_dicts)
        MetadataCatalog.get(name).set(
            thing_classes=["a", "b"],
            thing_dataset_id_to_contiguous_id=ID_MAP,
            mask_names=list(NAMES),
            json_file=None,
            evaluator_type="multimask_coco",
        )
    return name


def predictions(objects, shift=None):
    """
    Model-like inputs and outputs of images 1-3: one detection per object with its true masks
    (pred_multimasks (N, 3, 128, 128) bool), the i-th object of the list scored 0.9 - 0.1 * i.

    Args:
        shift: {index in objects: pixels} moving every mask of that object right.
    """
    shift = shift or {}
    per_image = {i: [] for i in (1, 2, 3)}
    for i, o in enumerate(objects):
        m = object_masks(o)
        stack = np.stack([np.roll(m[n], shift.get(i, 0), axis=1) for n in NAMES])
        per_image[o["img"]].append((stack, o["cls"], 0.9 - 0.1 * i))
    inputs, outputs = [], []
    for img, dets in per_image.items():
        inst = Instances((SIZE, SIZE))
        masks = np.stack([d[0] for d in dets]) if dets else np.zeros((0, 3, SIZE, SIZE), bool)
        inst.pred_multimasks = torch.from_numpy(masks)
        boxes = [
            BoxMode.convert(
                list(mask_util.toBbox(rle(d[0][0]))), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
            )
            for d in dets
        ]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor([d[2] for d in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([d[1] for d in dets], dtype=torch.int64)
        inputs.append({"image_id": img, "height": SIZE, "width": SIZE})
        outputs.append({"instances": inst})
    return inputs, outputs


def evaluate(inputs, outputs, **kwargs):
    kwargs.setdefault("mask_names", NAMES)
    ev = MultiMaskCOCOEvaluator(register(), distributed=False, **kwargs)
    ev.reset()
    ev.process(inputs, outputs)
    return ev.evaluate()


def assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k] == pytest.approx(b[k], nan_ok=True), k


def test_perfect_predictions_give_ap_100_and_all_keys():
    results = evaluate(*predictions(OBJECTS))
    keys = ["bbox"] + [f"segm_{n}{s}" for n in NAMES for s in ("", "_occluded")]
    keys += ["segm_occluded_uoais"]  # the occluded mask: UOAIS's occluded-region task
    assert list(results) == keys
    # every detection counts, as in COCOEvaluator, except an empty predicted mask of the
    # occluded region: the correctly empty occluded mask of the fully visible object 1 claims no
    # occluded region, so it is no false positive
    for key in keys:
        for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP-a", "AP-b"):
            assert metric in results[key]
        assert results[key]["AP"] == pytest.approx(100.0), key
        assert results[key]["AP50"] == pytest.approx(100.0), key


def test_perturbed_predictions_lower_ap():
    perfect = evaluate(*predictions(OBJECTS))
    shifted = evaluate(*predictions(OBJECTS, shift={0: 12, 3: 4}))
    for key in ("bbox", "segm_amodal", "segm_visible", "segm_amodal_occluded"):
        assert 0 < shifted[key]["AP"] < perfect[key]["AP"], key
    # object 0 (class "a") is moved 12 px; the per-category AP sees it
    assert shifted["segm_amodal"]["AP-a"] < 100


def test_not_annotated_masks_are_ignored_for_that_name_only():
    annotated = [o for o in OBJECTS if o.get("annotated", True)]
    without = evaluate(*predictions(annotated))
    # a top-scoring prediction of object 2, whose visible mask is not annotated
    with_it = evaluate(*predictions([OBJECTS[2]] + annotated))
    assert_same(with_it["segm_visible"], without["segm_visible"])
    assert with_it["segm_visible"]["AP"] == pytest.approx(100.0)
    # but the amodal mask of object 2 is annotated: not predicting it costs recall
    assert without["segm_amodal"]["AP"] < with_it["segm_amodal"]["AP"] == pytest.approx(100.0)
    # the same masks placed where there is no object are false positives
    o2 = dict(OBJECTS[2], img=3)
    elsewhere = evaluate(*predictions([o2] + annotated))
    assert elsewhere["segm_visible"]["AP"] < 100


def _hand_built_subset_ap(objects, shift):
    """Plain pycocotools on the occluded objects alone and their own predictions."""
    gt, dt = [], []
    for i, o in enumerate(objects):
        m = object_masks(o)
        gt.append(
            {
                "id": i + 1,
                "image_id": o["img"],
                "category_id": 3 if o["cls"] == 0 else 7,
                "segmentation": rle(m["amodal"]),
                "area": float(m["amodal"].sum()),
                "bbox": list(mask_util.toBbox(rle(m["amodal"]))),
                "iscrowd": 0,
            }
        )
        dt.append(
            {
                "image_id": o["img"],
                "category_id": gt[-1]["category_id"],
                "segmentation": rle(np.roll(m["amodal"], shift.get(i, 0), axis=1)),
                "score": 0.9 - 0.1 * o["rank"],
            }
        )
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "height": SIZE, "width": SIZE} for i in (1, 2, 3)],
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": gt,
    }
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dt), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0] * 100


def test_occluded_subset_is_a_real_subset():
    shift = {0: 7, 3: 4}  # the two occluded objects (0: 40 % by its masks, 3: occlude_rate 0.5)
    results = evaluate(*predictions(OBJECTS, shift=shift))
    occluded = [dict(OBJECTS[0], rank=0), dict(OBJECTS[3], rank=3)]
    expected = _hand_built_subset_ap(occluded, {0: 7, 1: 4})
    assert results["segm_amodal_occluded"]["AP"] == pytest.approx(expected)
    assert results["segm_amodal_occluded"]["AP"] < results["segm_amodal"]["AP"]
    # with a threshold above every occlusion rate the subset is empty: NaN, no crash
    none = evaluate(*predictions(OBJECTS), occluded_threshold=0.6)
    assert math.isnan(none["segm_amodal_occluded"]["AP"])
    assert none["segm_amodal"]["AP"] == pytest.approx(100.0)


def test_empty_predictions_and_missing_ground_truth():
    inputs, outputs = predictions([])
    results = evaluate(inputs, outputs)
    assert results["segm_amodal"]["AP"] == 0.0 and results["bbox"]["AP"] == 0.0
    # "extra" is predicted but the dataset has no such mask: NaN with a warning
    inputs, outputs = predictions(OBJECTS)
    for out in outputs:
        masks = out["instances"].pred_multimasks
        out["instances"].pred_multimasks = masks[:, :2]
    results = evaluate(inputs, outputs, mask_names=("amodal", "extra"), tasks=("segm",))
    assert list(results) == [
        "segm_amodal",
        "segm_amodal_occluded",
        "segm_extra",
        "segm_extra_occluded",
    ]
    assert results["segm_amodal"]["AP"] == pytest.approx(100.0)
    assert math.isnan(results["segm_extra"]["AP"]) and math.isnan(
        results["segm_extra_occluded"]["AP"]
    )


def test_from_cfg_saves_results_with_dataset_ids(tmp_path):
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK = 3
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = list(NAMES)
    cfg.MULTIMASK.OCCLUDED_THRESHOLD = 0.45  # keeps object 3 (rate 0.5) only
    ev = MultiMaskCOCOEvaluator(register(), cfg=cfg, output_dir=str(tmp_path), distributed=False)
    inputs, outputs = predictions(OBJECTS, shift={0: 7})
    ev.process(inputs, outputs)
    results = ev.evaluate()
    assert results["segm_amodal_occluded"]["AP"] == pytest.approx(100.0)
    assert results["segm_amodal"]["AP"] < 100
    with open(os.path.join(tmp_path, "multimask_instances_results.json")) as f:
        records = json.load(f)
    assert len(records) == len(OBJECTS) * len(NAMES)
    assert {r["mask_name"] for r in records} == set(NAMES)
    assert {r["category_id"] for r in records} == {3, 7}


def test_bad_predictions_raise():
    inputs, outputs = predictions(OBJECTS)
    ev = MultiMaskCOCOEvaluator(register(), mask_names=NAMES[:2], distributed=False)
    with pytest.raises(ValueError, match="pred_multimasks has shape"):
        ev.process(inputs, outputs)
    ev = MultiMaskCOCOEvaluator(register(), mask_names=NAMES, distributed=False)
    inputs[0]["image_id"] = 99
    ev.process(inputs, outputs)
    with pytest.raises(ValueError, match="image_id 99"):
        ev.evaluate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_outputs():
    inputs, outputs = predictions(OBJECTS)
    outputs = [{"instances": o["instances"].to("cuda")} for o in outputs]
    assert evaluate(inputs, outputs)["segm_visible"]["AP"] == pytest.approx(100.0)


def _distributed_worker(out_file):
    from detectron2.utils import comm

    rank = comm.get_rank()
    inputs, outputs = predictions(OBJECTS, shift={0: 7})
    ev = MultiMaskCOCOEvaluator(register(), mask_names=NAMES, distributed=True)
    ev.process(inputs[rank::2], outputs[rank::2])  # each process sees its own images
    results = ev.evaluate()
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(results, f)
    else:
        assert results == {}


def test_distributed_gathers_to_main_process(tmp_path):
    from multimask.engine.launch import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_file = str(tmp_path / "results.json")
    launch(
        _distributed_worker, 2, dist_url=f"tcp://127.0.0.1:{port}", args=(out_file,), device="cpu"
    )
    with open(out_file) as f:
        gathered = json.load(f)
    single = evaluate(*predictions(OBJECTS, shift={0: 7}))
    assert list(gathered) == list(single)
    for key in single:
        assert_same(gathered[key], single[key])


def test_bad_ground_truth_names_the_file():
    def bad_dicts():
        dicts = dataset_dicts()
        dicts[1]["annotations"][1]["multimask"]["visible"]["size"] = [64, 64]
        return dicts

    name = "multimask_eval_test_bad_gt"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, bad_dicts)
        MetadataCatalog.get(name).set(thing_classes=["a", "b"], mask_names=list(NAMES))
    ev = MultiMaskCOCOEvaluator(name, distributed=False)
    ev.process(*predictions(OBJECTS))
    with pytest.raises(ValueError, match=r"img2.png \(image_id 2, annotation 1\), mask 'visible'"):
        ev.evaluate()
