"""
MULTIMASK.EVAL_BOXES: evaluation of the masks predicted for ground-truth boxes (the completion
protocol, miou_*) or for a detections file, through ``train_net.py --eval-only`` (YAML, LazyConfig,
two processes). The references are computed here with numpy on the written predictions, from
C2F-Seg's rules (amazon-science/c2f-seg ``utils/evaluation.py``, ``test_c2f_seg.py``).
"""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

import train_net
from multimask.engine import launch
from multimask.evaluation import attach_given_boxes
from multimask.evaluation.given_boxes import gt_given_instances

from .reliability_common import VAL, register_tiny_splits, train_net_args

RESULTS = "multimask_instances_results.json"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny splits and random-init weights of the tiny config (masks neither empty nor full)."""
    root = tmp_path_factory.mktemp("eval_boxes")
    register_tiny_splits(str(root))
    DatasetCatalog.get(VAL)  # generated once, before any subprocess
    cfg = train_net.setup(train_net_args(root / "init"))
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("init")
    return root, str(root / "init.pth")


def _eval(setup, name, *opts):
    root, weights = setup
    out = root / name
    args = train_net_args(
        out, "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{VAL}',)", *opts, flags=["--eval-only"]
    )
    return train_net.main(args), out


def _predictions(out, folder=None):
    with open((folder or out / "inference" / VAL) / RESULTS) as f:
        records = json.load(f)
    by_image = {}
    for r in records:
        by_image.setdefault(r["image_id"], {}).setdefault(r["mask_name"], []).append(r)
    return by_image


def _mask(segm, h, w):
    """A ground-truth mask (polygons or RLE) as a bool (H, W) array, with pycocotools only."""
    if isinstance(segm, list):
        segm = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    elif isinstance(segm["counts"], list):
        segm = mask_util.frPyObjects(segm, h, w)
    return mask_util.decode(segm).astype(bool)


def _iou(a, b):
    inter, union = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
    return inter, union


def _reference_miou(by_image):
    """numpy: C2F-Seg's mIoU (smoothed, empty-empty = 1) and its occluded-part mIoU."""
    full = {"amodal": [], "visible": []}
    occ_sum, occ_count = 0.0, 0
    for d in DatasetCatalog.get(VAL):
        h, w = d["height"], d["width"]
        annos = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
        preds = by_image.get(d["image_id"], {})
        for name in full:
            assert len(preds.get(name, [])) == len(annos)  # one prediction per object
        for j, a in enumerate(annos):
            gt = {n: _mask(a["multimask"][n], h, w) for n in full}
            pred = {n: mask_util.decode(preds[n][j]["segmentation"]).astype(bool) for n in full}
            for n in full:
                inter, union = _iou(pred[n], gt[n])
                full[n].append((inter + 1e-10) / (union + 1e-10))
            vis = gt["visible"]
            inter, union = _iou(pred["amodal"] & ~vis, gt["amodal"] & ~vis)
            occ_sum += inter / union if union else 0.0
            occ_count += bool((gt["amodal"] & ~vis).any())
    ref = {f"miou_{n}": 100 * np.mean(v) for n, v in full.items()}
    ref["miou_amodal_occ"] = 100 * occ_sum / occ_count
    assert 0 < occ_count < sum(len(d["annotations"]) for d in DatasetCatalog.get(VAL))
    return ref


def test_gt_boxes_eval_only(setup):
    results, out = _eval(setup, "gt", "MULTIMASK.EVAL_BOXES", "gt")
    by_image = _predictions(out)
    for d in DatasetCatalog.get(VAL):  # one prediction per object, on its own box and class
        preds = by_image[d["image_id"]]["amodal"]
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS) for a in d["annotations"]
        ]
        np.testing.assert_allclose([p["bbox"] for p in preds], boxes, atol=1e-4)
        assert [p["category_id"] for p in preds] == [_dataset_id(a) for a in d["annotations"]]
        assert all(p["score"] == 1.0 for p in preds)
    ref = _reference_miou(by_image)
    for key, value in ref.items():
        assert results[key]["mIoU"] == pytest.approx(value, abs=1e-6), key
    assert 0 < ref["miou_amodal"] < 100
    for key in ("bbox", "segm_amodal", "segm_visible", "segm_amodal_occ0.15"):
        assert key in results
    assert results["bbox"]["AP"] == pytest.approx(100.0)  # the boxes are the ground truth


def _dataset_id(a, shift=0):
    """The dataset's category id of an annotation's class (shifted by `shift` classes)."""
    contiguous = MetadataCatalog.get(VAL).thing_dataset_id_to_contiguous_id
    to_dataset = {v: k for k, v in contiguous.items()}
    return to_dataset[(a["category_id"] + shift) % len(to_dataset)]


def _write_detections(path, shift_class=0, extra=None):
    """Detections: the ground-truth boxes moved by 1 px, scores 0.1..0.9, classes shifted."""
    records = []
    for d in DatasetCatalog.get(VAL):
        for j, a in enumerate(d["annotations"]):
            x, y, w, h = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS)
            box = [max(x - 1, 0.0), max(y - 1, 0.0), w, h]
            cls = _dataset_id(a, shift_class)
            score = 0.9 - 0.1 * j
            records.append(dict(image_id=d["image_id"], category_id=cls, bbox=box, score=score))
    records += extra or []
    with open(path, "w") as f:
        json.dump(records, f)
    return records


def test_detections_file_eval_only_and_class_agnostic(setup):
    root, _ = setup
    dets = _write_detections(root / "wrong_class.json", shift_class=1)
    results, out = _eval(setup, "dets", "MULTIMASK.EVAL_BOXES", str(root / "wrong_class.json"))
    written = [p for preds in _predictions(out).values() for p in preds["amodal"]]
    key = lambda r: (r["image_id"], -r["score"])  # noqa: E731
    assert len(written) == len(dets)
    for p, r in zip(sorted(written, key=key), sorted(dets, key=key)):
        np.testing.assert_allclose(p["bbox"], r["bbox"], atol=1e-4)
        assert (p["category_id"], p["score"]) == (r["category_id"], pytest.approx(r["score"]))
    assert not any(k.startswith("miou") for k in results)
    # every class is wrong: per class a box matches only another object of that class that it
    # happens to overlap; class-agnostically (SAMEO) each matches its own object
    assert results["bbox"]["AP"] < 10
    agnostic, _ = _eval(
        setup, "agnostic", "MULTIMASK.EVAL_BOXES", str(root / "wrong_class.json"),
        "MULTIMASK.CLASS_AGNOSTIC_EVAL", "True",
    )  # fmt: skip
    assert agnostic["bbox"]["AP"] > 50
    assert "AP-object" in agnostic["segm_amodal"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ([dict(image_id=999, category_id=1, bbox=[1, 1, 5, 5], score=1.0)], r"image ids \[999\]"),
        ([dict(image_id=0, category_id=0, bbox=[1, 1, 5, 5], score=1.0)], r"category ids \[0\]"),
        ([dict(image_id=0, category_id=1, bbox=[90, 1, 10, 5], score=1.0)], "outside"),
        ([dict(image_id=0, category_id=1, bbox=[1, 1, 5, 5], mask_name="amodal")], "mask_name"),
    ],
)
def test_bad_detections_file_names_it(setup, tmp_path, extra, message):
    path = tmp_path / "bad.json"
    _write_detections(path, extra=extra)
    with pytest.raises(ValueError, match=message) as e:
        attach_given_boxes(DatasetCatalog.get(VAL), str(path), VAL)
    assert str(path) in str(e.value)


def test_eval_boxes_must_be_gt_or_a_file(setup):
    with pytest.raises(FileNotFoundError, match="MULTIMASK.EVAL_BOXES"):
        _eval(setup, "missing", "MULTIMASK.EVAL_BOXES", "/no/such/dets.json")


def test_gt_boxes_skip_crowd_and_clip():
    d = {
        "image_id": 5, "file_name": "x.png", "height": 20, "width": 30,
        "annotations": [
            {"bbox": [-2, 3, 10, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
            {"bbox": [1, 1, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 1},
            {"bbox": [20, 10, 35, 25], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},
        ],
    }  # fmt: skip
    given = gt_given_instances(d, num_classes=3)
    assert given.pred_boxes.tensor.tolist() == [[0, 3, 8, 11], [20, 10, 30, 20]]
    assert given.pred_classes.tolist() == [1, 2]
    d["annotations"][0]["bbox"] = [-20, 3, 10, 8]  # inside nothing once clipped
    with pytest.raises(ValueError, match="image_id 5 .*degenerate"):
        gt_given_instances(d, num_classes=3)


def test_lazyconfig_eval_only(setup):
    """The LazyConfig path: dataloader.evaluator.eval_boxes=gt, the same numbers as the YAML's."""
    root, _ = setup
    from multimask.engine.lazy_train import lazy_setup

    from .test_distributed import LAZY_OPTS, QUICK_PY

    opts = LAZY_OPTS + [f"train.output_dir={root / 'lazy'}", "dataloader.evaluator.eval_boxes=gt"]
    cfg = lazy_setup(QUICK_PY, opts)
    from detectron2.config import instantiate

    torch.manual_seed(0)
    DetectionCheckpointer(instantiate(cfg.model), save_dir=str(root)).save("lazy_init")
    weights = f"train.init_checkpoint={root}/lazy_init.pth"
    argv = ["--config-file", QUICK_PY, "--eval-only", *opts, weights]
    args = train_net.get_parser().parse_args(argv)
    results = train_net.main(args)
    by_image = _predictions(None, root / "lazy" / "inference")  # the LazyConfig's output_dir
    ref = _reference_miou(by_image)
    for key, value in ref.items():
        assert results[key]["mIoU"] == pytest.approx(value, abs=1e-6), key


def _ddp_eval(args, data_root, results_file):
    register_tiny_splits(data_root)
    results = train_net.main(args)
    from detectron2.utils import comm

    if comm.is_main_process():
        with open(results_file, "w") as f:
            json.dump(results, f)


def test_two_processes_match_one(setup, monkeypatch):
    root, weights = setup
    single, _ = _eval(setup, "gt_single", "MULTIMASK.EVAL_BOXES", "gt")
    args = train_net_args(
        root / "gt_ddp", "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{VAL}',)",
        "MULTIMASK.EVAL_BOXES", "gt",
        flags=["--eval-only", "--num-gpus", "2", "--dist-url", "auto"],
    )  # fmt: skip
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results_file = root / "ddp_results.json"
    launch(_ddp_eval, 2, dist_url="auto", args=(args, str(root), str(results_file)), device="cpu")
    ddp = json.loads(results_file.read_text())
    for key in ("miou_amodal", "miou_visible", "miou_amodal_occ"):
        assert ddp[key]["mIoU"] == pytest.approx(single[key]["mIoU"], abs=1e-4), key
    assert os.path.exists(root / "gt_ddp" / "inference" / VAL / RESULTS)
