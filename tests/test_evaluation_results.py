"""
MultiMaskCOCOEvaluator next to detectron2's COCOEvaluator on a synthetic dataset registered as the
builtin ones are: the same AP for the PRIMARY mask and boxes, max_dets_per_image, the same
coco_instances_results.json; and the builtin datasets' classes before loading.
"""

import json
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from multimask import add_multimask_config
from multimask.data.datasets.amodal import KINS_2020_CATEGORIES, load_amodal_json
from multimask.data.datasets.synthetic import SYNTHETIC_CLASSES, register_synthetic_dataset
from multimask.evaluation import MultiMaskCOCOEvaluator
from multimask.structures import segmentation_to_rle
from multimask.utils.results_json import instances_to_coco_json

from . import test_evaluation_papers as papers

NAMES = ("amodal", "visible", "occluded")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 4-image synthetic dataset, registered (no json_file) as multimask_synthetic_* are."""
    name = f"test_eval_results_{uuid.uuid4().hex}"
    register_synthetic_dataset(name, 4, seed=3, root=str(tmp_path_factory.mktemp("cache")))
    return name


def predictions(dataset, extra=12):
    """
    Every ground-truth object found with its true masks, every other one shifted 3 px, plus
    `extra` false positives of class 0 per image (so that a limit of 10 detections bites); random
    scores; pred_masks is the amodal (PRIMARY) mask.
    """
    rng = np.random.default_rng(0)
    inputs, outputs = [], []
    for d in DatasetCatalog.get(dataset):
        h, w = d["height"], d["width"]
        masks = []
        for j, a in enumerate(d["annotations"]):
            m = [mask_util.decode(segmentation_to_rle(a["multimask"][n], h, w)) for n in NAMES]
            masks.append(np.roll(np.stack(m), 3 * (j % 2), axis=2))
        for k in range(extra):
            masks.append(np.roll(masks[0], (h // 3 + 2 * k, w // 3), axis=(1, 2)))
        masks = torch.from_numpy(np.stack(masks).astype(bool))
        inst = Instances((h, w))
        inst.pred_multimasks = masks
        inst.pred_masks = masks[:, 0]
        boxes = [mask_util.toBbox(mask_util.encode(np.asfortranarray(m))) for m in masks[:, 0]]
        xyxy = BoxMode.convert(np.asarray(boxes, dtype=np.float32), BoxMode.XYWH_ABS, 0)
        inst.pred_boxes = Boxes(torch.from_numpy(xyxy))
        inst.scores = torch.from_numpy(rng.uniform(0.1, 1.0, len(masks))).float()
        classes = [a["category_id"] for a in d["annotations"]] + [0] * extra
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inputs.append({"image_id": d["image_id"], "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs


def run(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


@pytest.mark.parametrize("max_dets", [None, 10])
def test_same_ap_and_results_file_as_detectron2(synthetic, tmp_path, max_dets):
    inputs, outputs = predictions(synthetic)
    d2 = COCOEvaluator(
        synthetic,
        output_dir=str(tmp_path / "d2"),
        max_dets_per_image=max_dets,
        use_fast_impl=False,
    )
    expected = run(d2, inputs, outputs)
    ours = MultiMaskCOCOEvaluator(
        synthetic,
        NAMES,
        distributed=False,
        output_dir=str(tmp_path / "mm"),
        eval_backend="pycocotools",
        max_dets_per_image=max_dets,
    )
    results = run(ours, inputs, outputs)
    for theirs, mine in (("bbox", "bbox"), ("segm", "segm_amodal")):
        for metric in ("AP", "AP50", "AP75"):
            assert results[mine][metric] == pytest.approx(expected[theirs][metric], abs=1e-6)
        assert 20 < results[mine]["AP"] < 95  # neither trivial nor empty
    with open(tmp_path / "d2" / "coco_instances_results.json") as f:
        d2_records = json.load(f)
    with open(tmp_path / "mm" / "coco_instances_results.json") as f:
        assert json.load(f) == d2_records
    with open(tmp_path / "mm" / "multimask_instances_results.json") as f:
        records = json.load(f)
    assert len(records) == len(NAMES) * len(d2_records)
    primary = [{k: v for k, v in r.items() if k != "mask_name"} for r in records[:: len(NAMES)]]
    assert primary == d2_records


@pytest.fixture(scope="module")
def with_json_file(tmp_path_factory):
    """The papers' test data registered with a COCO json_file of its amodal masks, as builtin
    datasets with COCO ground truth are: COCOEvaluator reads that file."""
    name = f"test_eval_json_file_{uuid.uuid4().hex}"
    dicts = papers.dataset_dicts()
    images, anns = [], []
    for d in dicts:
        images.append({"id": d["image_id"], "height": d["height"], "width": d["width"]})
        for a in d["annotations"]:
            rle = a["multimask"]["amodal"]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": d["image_id"],
                    "category_id": papers.DATASET_IDS[a["category_id"]],
                    "segmentation": rle,
                    "area": float(mask_util.area(rle)),
                    "bbox": list(a["bbox"]),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": papers.DATASET_IDS[k], "name": c} for k, c in enumerate(papers.CLASSES)]
    json_file = tmp_path_factory.mktemp("json") / "gt.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(
        thing_classes=list(papers.CLASSES),
        thing_dataset_id_to_contiguous_id=papers.ID_MAP,
        json_file=str(json_file),
    )
    return name


@pytest.mark.parametrize("k", [1, 2])
def test_primary_ap_is_coco_evaluator_ap_empty_masks_included(with_json_file, k):
    """segm_<primary> is COCOEvaluator's segm AP on the same predictions: every detection counts,
    an empty mask too, images without detection and with more than 100 included."""
    inputs, outputs = papers.model_outputs()
    for out in outputs:
        inst = out["instances"]
        inst.pred_masks = inst.pred_multimasks[:, 0]
        inst.pred_multimasks = inst.pred_multimasks[:, :k]
    assert any(not m.any() for out in outputs for m in out["instances"].pred_masks)
    d2 = COCOEvaluator(with_json_file, tasks=("segm",), distributed=False, use_fast_impl=False)
    expected = run(d2, inputs, outputs)["segm"]
    names = papers.NAMES[:k]
    ours = MultiMaskCOCOEvaluator(
        with_json_file, names, distributed=False, eval_backend="pycocotools", tasks=("segm",)
    )
    results = run(ours, inputs, outputs)["segm_amodal"]
    assert set(expected) == set(results)
    for metric, value in expected.items():
        assert results[metric] == pytest.approx(value, abs=1e-6, nan_ok=True), metric
    assert 10 < results["AP"] < 80


def test_max_dets_per_image_from_cfg(synthetic):
    inputs, outputs = predictions(synthetic)
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK = len(NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = list(NAMES)
    cfg.MULTIMASK.OCCLUSION_THRESHOLDS = []
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    kwargs = dict(distributed=False, eval_backend="pycocotools")

    def evaluate(**more):
        return run(MultiMaskCOCOEvaluator(synthetic, **kwargs, **more), inputs, outputs)

    from_cfg, ten = evaluate(cfg=cfg), evaluate(mask_names=NAMES, max_dets_per_image=10)
    default, three = evaluate(mask_names=NAMES), evaluate(mask_names=NAMES, max_dets_per_image=3)
    assert list(from_cfg) == list(ten) == list(default)
    for key in ten:
        assert from_cfg[key]["AP"] == pytest.approx(ten[key]["AP"], nan_ok=True), key
    # below 10 too: pycocotools would sort [1, 10, 3] and count 10
    assert three["segm_amodal"]["AP"] < ten["segm_amodal"]["AP"] < default["segm_amodal"]["AP"]
    with pytest.raises(ValueError, match="max_dets_per_image"):
        MultiMaskCOCOEvaluator(synthetic, NAMES, max_dets_per_image=0)


def test_primary_mask_file_follows_cfg_primary(synthetic, tmp_path):
    inputs, outputs = predictions(synthetic)
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = list(NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.PRIMARY = "visible"
    ev = MultiMaskCOCOEvaluator(
        synthetic, cfg=cfg, distributed=False, output_dir=str(tmp_path), tasks=("segm",)
    )
    run(ev, inputs, outputs)
    with open(tmp_path / "coco_instances_results.json") as f:
        coco = json.load(f)
    with open(tmp_path / "multimask_instances_results.json") as f:
        visible = [r for r in json.load(f) if r["mask_name"] == "visible"]
    assert [r["segmentation"] for r in coco] == [r["segmentation"] for r in visible]
    assert {r["category_id"] for r in coco} <= {1, 2, 3}  # the dataset's ids, not 0..2
    with pytest.raises(ValueError, match="primary mask 'mask9'"):
        MultiMaskCOCOEvaluator(synthetic, NAMES, primary_mask="mask9")


def test_instances_to_coco_json_layout(synthetic):
    inputs, outputs = predictions(synthetic)
    inst = outputs[0]["instances"]
    probs = inst.pred_multimasks.float() * 0.8  # probabilities: >= 0.5 is foreground
    inst.pred_multimasks = probs
    records = instances_to_coco_json(inst, 7, NAMES, file_name="x.png", dataset_ids=[1, 2, 3])
    assert len(records) == len(inst) * len(NAMES)
    keys = "image_id file_name category_id bbox score mask_name segmentation"
    assert " ".join(records[0]) == keys
    assert [r["mask_name"] for r in records[: len(NAMES)]] == list(NAMES)
    first = mask_util.decode(records[0]["segmentation"]).astype(bool)
    assert np.array_equal(first, probs[0, 0].numpy() >= 0.5)
    with pytest.raises(ValueError, match="pred_multimasks has shape"):
        instances_to_coco_json(inst, 7, NAMES[:2])


def test_builtin_classes_are_known_before_loading(tmp_path):
    # the synthetic ones from the generator, KINS's and COCOA's from their formats
    for name in ("multimask_synthetic_train", "multimask_synthetic_val"):
        assert MetadataCatalog.get(name).thing_classes == SYNTHETIC_CLASSES
    # as the files list them: 2019 7 categories, 2020 8 (`rider`, id 3, unused)
    kins = ["cyclist", "pedestrian", "car", "tram", "truck", "van", "misc"]
    for name in ("kins_2019_train", "kins_2019_test"):
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == kins
        assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 4: 2, 5: 3, 6: 4, 7: 5, 8: 6}
    for name in ("kins_2020_train", "kins_2020_test"):
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == [*kins[:2], "rider", *kins[2:]]
        assert meta.thing_dataset_id_to_contiguous_id == {i: i - 1 for i in range(1, 9)}
    for name in ("cocoa_train", "cocoa_val"):
        assert MetadataCatalog.get(name).thing_classes == ["object"]
    # loading a file with KINS's categories sets the same metadata (a different one would raise)
    (tmp_path / "img.png").write_bytes(b"")
    coco = {
        "images": [{"id": 1, "file_name": "img.png", "height": 40, "width": 60}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 4, "a_segm": [[5, 5, 30, 5, 30, 20]]}
        ],
        "categories": list(reversed(KINS_2020_CATEGORIES)),
    }
    json_file = tmp_path / "kins.json"
    json_file.write_text(json.dumps(coco))
    name = f"test_kins_classes_{uuid.uuid4().hex}"
    load_amodal_json(str(json_file), str(tmp_path), "kins_2020", name)
    meta = MetadataCatalog.get(name)
    builtin = MetadataCatalog.get("kins_2020_train")
    assert meta.thing_classes == builtin.thing_classes
    assert meta.thing_dataset_id_to_contiguous_id == builtin.thing_dataset_id_to_contiguous_id


def test_detectron2_evaluator_converts_the_synthetic_dataset(tmp_path):
    """No json_file in the metadata: COCOEvaluator converts the dataset dicts (amodal polygons)."""
    synthetic = f"test_eval_convert_{uuid.uuid4().hex}"
    register_synthetic_dataset(synthetic, 2, seed=5, root=str(tmp_path / "cache"))
    assert not hasattr(MetadataCatalog.get(synthetic), "json_file")
    COCOEvaluator(synthetic, output_dir=str(tmp_path))
    converted = os.path.join(tmp_path, f"{synthetic}_coco_format.json")
    with open(converted) as f:
        coco = json.load(f)
    num = sum(len(d["annotations"]) for d in DatasetCatalog.get(synthetic))
    assert len(coco["annotations"]) == num and {c["id"] for c in coco["categories"]} == {1, 2, 3}
