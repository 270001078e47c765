"""Several training datasets of different formats and classes in one run (multimask/data/build.py)."""

import json
import os
import uuid
from collections import Counter

import cv2
import numpy as np
import pytest

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

import train_net
from multimask.config import get_multimask_cfg
from multimask.data import (
    multi_dataset_dicts,
    register_multimask_coco_instances,
    register_synthetic_dataset,
)
from multimask.data.build import dataset_weights_sampler
from multimask.engine import MultiMaskTrainer, check_datasets, check_num_classes
from multimask.engine import lazy_train

from .common import REPO_ROOT

CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/multimask_R18_FPN_instant_test_synthetic")
LAZY_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/multimask_R18_FPN_quick_synthetic.py")
SYN_CLASSES = ["ellipse", "rectangle", "triangle"]
# the COCO-like set: a class of its own and one the synthetic set has, by name, in another order
COCO_CLASSES = {4: "person", 9: "rectangle"}
NAMES = ["amodal", "visible"]


def _square(x0, y0, s):
    return [[x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A synthetic set (6 train + 3 val images, 3 classes) and a 2-image COCO JSON (amodal only)."""
    root = tmp_path_factory.mktemp("multi")
    tag = uuid.uuid4().hex[:8]
    syn, val, coco = f"mm_syn_{tag}", f"mm_syn_val_{tag}", f"mm_coco_{tag}"
    register_synthetic_dataset(syn, 6, 10, image_size=96, root=str(root / "syn"))
    register_synthetic_dataset(val, 3, 11, image_size=96, root=str(root / "syn"))
    os.makedirs(root / "coco")
    images, annos = [], []
    for i in range(2):
        cv2.imwrite(str(root / "coco" / f"c{i}.png"), np.full((96, 96, 3), 60 * i + 40, np.uint8))
        images.append({"id": 100 + i, "file_name": f"c{i}.png", "height": 96, "width": 96})
        for k, (cat, x) in enumerate(((4, 10), (9, 50))):
            seg = _square(x, 20 + 10 * i, 30)
            annos.append(dict(id=10 * i + k, image_id=100 + i, category_id=cat, iscrowd=0,
                              bbox=[x, 20 + 10 * i, 30, 30], segmentation=seg, area=900))  # fmt: skip
    cats = [{"id": i, "name": n} for i, n in COCO_CLASSES.items()]
    with open(root / "coco.json", "w") as f:
        json.dump({"images": images, "annotations": annos, "categories": cats}, f)
    register_multimask_coco_instances(
        coco, {}, str(root / "coco.json"), str(root / "coco"), mask_fields={"amodal": "segmentation"}
    )
    yield syn, val, coco
    for name in (syn, val, coco):
        DatasetCatalog.remove(name)


def _cfg(train, test, *opts):
    cfg = get_multimask_cfg(CONFIG + ".yaml", ["MODEL.DEVICE", "cpu", *opts])
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    return cfg


def _coco_ids(dicts, coco):
    return [[a["category_id"] for a in d["annotations"]] for d in dicts if coco in d["file_name"]]


def test_union_maps_classes_by_name(datasets):
    syn, val, coco = datasets
    out = multi_dataset_dicts([syn, coco], mask_names=NAMES, test_names=[val], class_union=True)
    assert out.classes == SYN_CLASSES + ["person"]
    assert out.sizes == [6, 2] and len(out) == 8
    # the COCO file's person (id 4) and rectangle (id 9) -> union ids 3 and 1
    coco_part = out[6:]
    assert [[a["category_id"] for a in d["annotations"]] for d in coco_part] == [[3, 1], [3, 1]]
    # its missing visible mask is "not annotated", the amodal one kept
    for a in coco_part[0]["annotations"]:
        assert a["multimask"]["visible"] is None and a["multimask"]["amodal"]
    # the synthetic part keeps its ids (its list is the union's beginning) and its masks
    assert out[:6] == DatasetCatalog.get(syn)
    # the catalog's dicts are not changed
    assert [a["category_id"] for a in DatasetCatalog.get(coco)[0]["annotations"]] == [0, 1]
    # reversed order: the COCO list first
    rev = multi_dataset_dicts([coco, syn], mask_names=NAMES, class_union=True)
    assert rev.classes == ["person", "rectangle", "ellipse", "triangle"]
    assert [a["category_id"] for a in rev[0]["annotations"]] == [0, 1]
    syn_ids = Counter(a["category_id"] for d in rev[2:] for a in d["annotations"])
    orig = Counter(
        ["rectangle", "ellipse", "triangle"].index(SYN_CLASSES[a["category_id"]])
        for d in DatasetCatalog.get(syn)
        for a in d["annotations"]
    )
    assert syn_ids == Counter({k + 1: v for k, v in orig.items()})


def test_class_agnostic_is_one_class(datasets):
    syn, val, coco = datasets
    out = multi_dataset_dicts([syn, coco], mask_names=NAMES, class_agnostic=True)
    assert out.classes == ["object"]
    assert {a["category_id"] for d in out for a in d["annotations"]} == {0}
    cfg = _cfg([syn, coco], [val], "MULTIMASK.CLASS_AGNOSTIC_TRAIN", "True")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    with pytest.raises(ValueError, match=r"CLASS_AGNOSTIC_TRAIN.*1 classes.*NUM_CLASSES is 3"):
        check_num_classes(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    check_num_classes(cfg)
    assert MultiMaskTrainer.build_evaluator(cfg, val)._class_agnostic


def test_errors_name_datasets_and_options(datasets):
    syn, val, coco = datasets
    with pytest.raises(ValueError, match=rf"'{syn}' and '{coco}' have different classes.*"
                       r"CLASS_AGNOSTIC_TRAIN True.*CLASS_UNION True"):  # fmt: skip
        check_datasets(_cfg([syn, coco], [val]))
    both = ["MULTIMASK.CLASS_AGNOSTIC_TRAIN", "True", "MULTIMASK.CLASS_UNION", "True"]
    with pytest.raises(ValueError, match="exclusive"):
        check_datasets(_cfg([syn, coco], [val], *both))
    # a test set with a class no training set has
    cfg = _cfg([syn], [coco], "MULTIMASK.CLASS_UNION", "True")
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["amodal"]
    with pytest.raises(ValueError, match=rf"test dataset '{coco}' has classes \['person'\]"):
        check_datasets(cfg)
    # a mask name no training set has, and one the only training set lacks
    cfg = _cfg([syn, coco], [val], "MULTIMASK.CLASS_UNION", "True")
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["amodal", "shadow"]
    with pytest.raises(ValueError, match=rf"\['shadow'\], which no training dataset provides: "
                       rf"'{syn}' provides .*'{coco}' provides \['amodal'\]"):  # fmt: skip
        check_datasets(cfg)
    with pytest.raises(ValueError, match=rf"asks for \['visible'\], which dataset '{coco}'"):
        check_datasets(_cfg([coco], []))
    cfg = _cfg([syn, coco], [val], "MULTIMASK.CLASS_UNION", "True")
    with pytest.raises(ValueError, match=r"CLASS_UNION.*4 classes.*NUM_CLASSES is 3; set it to 4"):
        check_num_classes(cfg)
    for weights, match in (([1.0], "2 training datasets"), ([1.0, 0.0], "finite and > 0")):
        with pytest.raises(ValueError, match=match):
            check_datasets(_cfg([syn, coco], [val], "MULTIMASK.CLASS_UNION", "True",
                                "MULTIMASK.DATASET_WEIGHTS", str(weights)))  # fmt: skip


def test_weights_set_the_sampling_shares():
    for weights, share in (([6, 2], 0.25), ([1, 1], 0.5), ([1, 3], 0.75)):
        sampler = dataset_weights_sampler([6, 2], weights, seed=3)
        assert isinstance(sampler, RepeatFactorTrainingSampler)
        it = iter(sampler)
        second = sum(next(it) >= 6 for _ in range(8000)) / 8000
        assert abs(second - share) < 0.02, (weights, second)


def _origins(loader, coco, batches):
    it = iter(loader)
    files = [d["file_name"] for _ in range(batches) for d in next(it)]
    return sum(coco in f for f in files) / len(files)


def test_train_loader_weights_change_the_origins(datasets):
    syn, val, coco = datasets
    opts = ["MULTIMASK.CLASS_UNION", "True", "MODEL.ROI_HEADS.NUM_CLASSES", "4", "SEED", "5"]
    plain = MultiMaskTrainer.build_train_loader(_cfg([syn, coco], [val], *opts))
    weighted = MultiMaskTrainer.build_train_loader(
        _cfg([syn, coco], [val], *opts, "MULTIMASK.DATASET_WEIGHTS", "[1.0, 3.0]")
    )
    # the COCO folder's share of the sampled images: 2 / 8 by size, 3 / 4 by weight
    assert _origins(plain, "coco", 40) < 0.4
    assert _origins(weighted, "coco", 40) > 0.6
    batch = next(iter(weighted))
    for d in batch:
        classes = d["instances"].gt_classes.tolist()
        if "coco" in d["file_name"]:
            assert sorted(classes) == [1, 3]
            assert not d["instances"].gt_multimask.annotated[:, 1].any()  # visible: not annotated


def test_lazy_config_multi_dataset(datasets):
    syn, val, coco = datasets
    cfg = LazyConfig.load(LAZY_CONFIG)
    cfg.dataloader.train.dataset = L(multi_dataset_dicts)(
        names=[syn, coco],
        mask_names="${model.roi_heads.mask_head.mask_names}",
        class_union=True,
        weights=[1.0, 3.0],
    )
    cfg.dataloader.train.total_batch_size, cfg.dataloader.train.num_workers = 2, 0
    cfg.dataloader.test.dataset.names = val
    with pytest.raises(ValueError, match="4 classes.*num_classes is 3"):
        lazy_train._check_datasets(cfg)
    cfg.model.roi_heads.num_classes = 4
    lazy_train._check_datasets(cfg)
    loader = lazy_train._build_train_loader(cfg.dataloader.train)
    assert isinstance(loader.sampler.sampler, RepeatFactorTrainingSampler)
    assert _origins(loader, "coco", 30) > 0.6
    evaluator = lazy_train._build_evaluator(cfg)
    assert type(evaluator).__name__ == "RemappedClassesEvaluator"


def test_short_training_run_on_two_datasets(datasets, tmp_path):
    syn, val, coco = datasets
    argv = ["--config-file", CONFIG + ".yaml", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)]
    argv += ["DATASETS.TRAIN", f"('{syn}', '{coco}')", "DATASETS.TEST", f"('{val}',)"]
    argv += ["MULTIMASK.CLASS_UNION", "True", "MODEL.ROI_HEADS.NUM_CLASSES", "4"]
    argv += ["MULTIMASK.DATASET_WEIGHTS", "[1.0, 1.0]", "SOLVER.MAX_ITER", "3"]
    argv += ["MULTIMASK.ORDER_EVAL", "True", "MULTIMASK.ORDER_SCORE_THRESHOLD", "0.0"]
    results = train_net.main(train_net.get_parser().parse_args(argv))
    assert {"bbox", "segm_amodal", "segm_visible", "order"} <= set(results)
    assert results["order"]["instances"] > 0 and results["order"]["pairs"] > 0
    assert 0 <= results["order"]["OOACC"] <= 100
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_tools_name_the_classes_the_model_predicts(datasets):
    """The demo, the ONNX metadata and given boxes use the union's (or "object") class ids."""
    from multimask.data.model_classes import model_class_ids, model_metadata
    from multimask.utils.onnx_export import spec_from_cfg

    syn, val, coco = datasets
    union = _cfg([syn, coco], [val], "MULTIMASK.CLASS_UNION", "True")
    assert model_metadata(union).thing_classes == SYN_CLASSES + ["person"]
    assert spec_from_cfg(union)["thing_classes"] == SYN_CLASSES + ["person"]
    # the COCO set's contiguous person (0) and rectangle (1) -> the union's 3 and 1
    assert model_class_ids(union, coco) == {0: 3, 1: 1}
    agnostic = _cfg([syn, coco], [val], "MULTIMASK.CLASS_AGNOSTIC_TRAIN", "True")
    assert model_metadata(agnostic).thing_classes == ["object"]
    assert model_class_ids(agnostic, coco) == {0: 0, 1: 0}
    # one class list: the test set's metadata, with its ids
    same = _cfg([syn], [val])
    assert model_metadata(same).thing_classes == SYN_CLASSES
    assert model_class_ids(same, val) == {0: 0, 1: 1, 2: 2}


def test_demo_given_boxes_take_the_union_ids(datasets):
    """demo.py --boxes with a detections file in the COCO set's ids, for a union model."""
    from types import SimpleNamespace

    from .test_demo import _load_script

    syn, val, coco = datasets
    demo_script = _load_script("demo", "demo.py")
    cfg = _cfg([syn, coco], [val], "MULTIMASK.CLASS_UNION", "True")
    demo = SimpleNamespace(cfg=cfg, predictor=SimpleNamespace(num_classes=4))
    args = SimpleNamespace(confidence_threshold=0.0, boxes_dataset=coco, boxes="dets.json")
    records = [{"category_id": 4, "bbox": [1, 1, 10, 10], "score": 0.9},
               {"category_id": 9, "bbox": [20, 20, 10, 10], "score": 0.8}]  # fmt: skip
    given = demo_script._given(demo, args, records, np.zeros((96, 96, 3), np.uint8), "c0.png")
    # person (COCO id 4) is the union's class 3, rectangle (id 9) its class 1
    assert given.pred_classes.tolist() == [3, 1]
    with pytest.raises(ValueError, match=r"--boxes dets.json, image c0.png: category ids \[7\]"):
        demo_script._given(demo, args, [{"category_id": 7, "bbox": [1, 1, 5, 5]}],
                           np.zeros((96, 96, 3), np.uint8), "c0.png")  # fmt: skip
