"""
Bad-input battery: malformed dataset JSON, images, configs, checkpoints and non-finite values. Each
one ends in an error that names the file and the image / annotation id (raised before training
wherever the input is read before training), or in a logged, documented skip that still trains
correctly; never in a crash inside torch or pycocotools, nor a silently wrong result.

Bad inputs already covered elsewhere are not repeated: see tests/test_data_coco.py (malformed JSON
and missing files at load, masks that are neither polygons nor RLE, RLE of another size, undeclared
category, unknown image_id, short bbox, polygons with < 3 points), tests/test_data_mapper.py
(missing or unreadable image, RLE of another size at map time), tests/test_config.py (NUM_MASK vs
MASK_NAMES, duplicate names, LOSS_WEIGHTS, PRIMARY, unknown YAML key) and tests/test_train_net.py
(NUM_CLASSES).
"""

import copy
import json
import logging
import math
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import train_net
from multimask.config import get_multimask_cfg
from multimask.data import (
    MultiMaskDatasetMapper,
    load_multimask_coco_json,
    register_multimask_coco_instances,
)
from multimask.data.datasets.synthetic import SYNTHETIC_MASK_FIELDS, generate_synthetic_dataset
from multimask.engine import AtomicDetectionCheckpointer, MultiMaskTrainer, do_train

from .reliability_common import CONFIG, TINY_OPTS, LossRecorder, one_thread, train_net_args

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 4-image synthetic dataset on disk: (COCO dict, its image root)."""
    root = str(tmp_path_factory.mktemp("bad_inputs") / "synthetic")
    json_file = generate_synthetic_dataset(root, 4, seed=5, image_size=96)
    with open(json_file) as f:
        return json.load(f), os.path.join(root, "images")


def write_json(tmp_path, coco, name="ann.json"):
    path = str(tmp_path / name)
    with open(path, "w") as f:
        json.dump(coco, f)  # allow_nan: NaN is written as the JSON extension Python reads back
    return path


def register(json_file, image_root, mask_fields=None):
    name = f"bad_inputs_{uuid.uuid4().hex[:8]}"
    register_multimask_coco_instances(
        name, {}, json_file, image_root, mask_fields or SYNTHETIC_MASK_FIELDS
    )
    return name


def on_dataset(name, *opts, test=None):
    return ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{test or name}',)", *opts]


# ------------------------------------------------------------------ dataset JSON
def _image(coco, index, **fields):
    """`coco` with image `index`'s `fields` replaced (None: removed)."""
    coco["images"][index].update(fields)
    coco["images"][index] = {k: v for k, v in coco["images"][index].items() if v is not None}
    return coco


def _ann(coco, **fields):
    """The first annotation of `coco` (id 1, image id 0) with `fields` replaced."""
    coco["annotations"][0].update(fields)
    return coco


def _cut_rle(coco):
    rle = dict(coco["annotations"][0]["visible_mask"])
    rle["counts"] = rle["counts"][: len(rle["counts"]) // 2]  # a cut string: shorter runs
    return rle


JSON_CASES = {
    "top_level_list": (lambda c: [c], r"needs a list 'categories', got NoneType"),
    "image_without_file_name": (
        lambda c: _image(c, 1, file_name=None),
        r"image id 1 has no 'file_name'",
    ),
    "duplicate_image_id": (
        lambda c: _image(c, 2, id=1),
        r"image id 1 \(000002.png\): the id is used by another image too",
    ),
    "height_not_a_number": (
        lambda c: _image(c, 0, height="tall"),
        r"image id 0 \(000000.png\): 'height' must be a positive integer, got 'tall'",
    ),
    "negative_box_width": (
        lambda c: _ann(c, bbox=[10, 10, -5, 20]),
        r"annotation id 1 \(image id 0\): 'bbox' \[10, 10, -5, 20\] must be finite",
    ),
    "nan_box": (
        lambda c: _ann(c, bbox=[float("nan"), 10, 5, 20]),
        r"annotation id 1 \(image id 0\): 'bbox' \[nan, 10, 5, 20\] must be finite",
    ),
    "occlude_rate_above_1": (
        lambda c: _ann(c, occlude_rate=1.5),
        r"annotation id 1 \(image id 0\): occlude_rate 1.5 is not a number in \[0, 1\]",
    ),
    "nan_polygon_coordinate": (
        lambda c: _ann(c, segmentation=[[10, 10, float("nan"), 10, 30, 30]]),
        r"annotation id 1 \(image id 0\): mask 'amodal'.*NaN or infinite coordinate",
    ),
    "far_polygon_coordinate": (
        lambda c: _ann(c, segmentation=[[10, 10, 1e9, 10, 30, 30]]),
        r"annotation id 1 \(image id 0\): .*coordinate 1e\+09, more than 10x the 96 x 96 image",
    ),
    "string_polygon_coordinate": (
        lambda c: _ann(c, segmentation=[[10, 10, "x", 10, 30, 30]]),
        r"annotation id 1 \(image id 0\): .*a coordinate that is not a number",
    ),
    "garbage_rle_counts": (
        lambda c: _ann(c, visible_mask={"size": [96, 96], "counts": "!!!~~~zzz"}),
        r"annotation id 1 \(image id 0\): mask 'visible'.*RLE whose counts .* truncated or corrupt",
    ),
    "truncated_rle_counts": (
        lambda c: _ann(c, visible_mask=_cut_rle(c)),
        r"annotation id 1 \(image id 0\): mask 'visible'.*truncated or corrupt",
    ),
    "uncompressed_rle_too_short": (
        lambda c: _ann(c, visible_mask={"size": [96, 96], "counts": [100, 50, 20]}),
        r"annotation id 1 \(image id 0\): mask 'visible'.*truncated or corrupt",
    ),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_bad_json_fails_at_load_naming_file_and_id(synthetic, tmp_path, case):
    coco, image_root = synthetic
    make_bad, message = JSON_CASES[case]
    json_file = write_json(tmp_path, make_bad(copy.deepcopy(coco)))
    with pytest.raises(ValueError, match=message) as e:
        load_multimask_coco_json(json_file, image_root, SYNTHETIC_MASK_FIELDS)
    assert json_file in str(e.value)


def test_mapping_key_no_annotation_has_is_a_logged_warning(synthetic, tmp_path, caplog):
    coco, image_root = synthetic
    json_file = write_json(tmp_path, coco)
    typo = {"amodal": "segmentation", "visible": "visble_mask"}
    with caplog.at_level(logging.WARNING):
        dicts = load_multimask_coco_json(json_file, image_root, typo)
    assert all(a["multimask"]["visible"] is None for d in dicts for a in d["annotations"])
    assert f"{json_file}: no annotation has the key(s) ['visble_mask']" in caplog.text
    assert "for masks ['visible']" in caplog.text and "'visible_mask'" in caplog.text


# ------------------------------------------------------------------ images
@pytest.mark.parametrize(
    "case, message",
    [
        (
            "truncated_png",
            r"image id 0: cannot read image file .*000000.png: image file is truncated",
        ),
        ("empty_file", r"image id 0: cannot read image file .*000000.png: cannot identify image"),
        (
            "other_size",
            r"Mismatched image shape for image .*000000.png, got \(80, 64\), expect \(96, 96\)",
        ),
        (
            "nan_polygon_from_own_loader",
            r"image id 0 \(.*000000.png\): a polygon with a NaN or infinite coordinate",
        ),
    ],
)
def test_bad_images_fail_at_map_time_naming_the_image(synthetic, tmp_path, case, message):
    coco, image_root = synthetic
    d = load_multimask_coco_json(write_json(tmp_path, coco), image_root, SYNTHETIC_MASK_FIELDS)[0]
    path = str(tmp_path / "000000.png")
    data = open(d["file_name"], "rb").read()
    with open(path, "wb") as f:
        f.write({"truncated_png": data[: len(data) // 2], "empty_file": b""}.get(case, data))
    if case == "other_size":
        cv2.imwrite(path, np.zeros((64, 80, 3), np.uint8))
    if case == "nan_polygon_from_own_loader":  # a dataset dict that no multimask loader checked
        d["annotations"][0]["multimask"]["amodal"] = [[10.0, 10.0, float("nan"), 10.0, 30.0, 30.0]]
    mapper = MultiMaskDatasetMapper(
        True, augmentations=[], image_format="BGR", mask_names=["amodal", "visible"]
    )
    with pytest.raises(ValueError, match=message):
        mapper(dict(d, file_name=path))


# ------------------------------------------------------------------ config and datasets, e2e
def _raises_before_training(out, exc, message, *opts, cfg_file=None):
    args = train_net_args(out, *opts)
    if cfg_file:
        args.config_file = cfg_file
    with pytest.raises(exc, match=message):
        train_net.main(args)
    assert not (out / "model_final.pth").exists() and not (out / "last_checkpoint").exists()


def test_config_errors_before_training(synthetic, tmp_path):
    coco, image_root = synthetic
    name = register(write_json(tmp_path, coco), image_root)
    heads = "MODEL.ROI_MULTI_MASK_HEAD"
    cases = [
        (ValueError, r"MASK_NAMES has duplicate names \['amodal'\]",
         [f"{heads}.MASK_NAMES", "['amodal', 'amodal']"]),
        # K in the config differs from the data: a name the dataset does not provide
        (ValueError, rf"asks for \['modal'\], which dataset '{name}' does not provide",
         [f"{heads}.NUM_MASK", "3", f"{heads}.MASK_NAMES", "['amodal', 'visible', 'modal']"]),
        (KeyError, r"Dataset 'kins_2020_tarin' is not registered. Registered multi-mask datasets: "
         r"\[.*'kins_2020_train'", ["DATASETS.TRAIN", "('kins_2020_tarin',)"]),
        (ValueError, r"Type mismatch .* \(0.01 vs. fast\) for config key: SOLVER.BASE_LR",
         ["SOLVER.BASE_LR", "fast"]),
    ]  # fmt: skip
    for i, (exc, message, opts) in enumerate(cases):
        _raises_before_training(tmp_path / f"cfg{i}", exc, message, *on_dataset(name), *opts)

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  MASK_ON: [True\n  DEVICE: cpu\n')
    _raises_before_training(
        tmp_path / "yaml", Exception, rf'in "{bad_yaml}", line 3', cfg_file=str(bad_yaml)
    )


def test_dataset_errors_before_training(synthetic, tmp_path):
    coco, image_root = synthetic
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(coco)[:-10])
    undeclared = _ann(copy.deepcopy(coco), category_id=9)
    empty = dict(coco, images=[], annotations=[])
    unannotated = dict(coco, annotations=[])
    cases = [
        (ValueError, rf"{broken}: malformed JSON", str(broken)),
        (ValueError, r"annotation id 1 \(image id 0\): category_id 9 is not in 'categories'",
         write_json(tmp_path, undeclared, "undeclared.json")),
        (AssertionError, r"Dataset '.*' is empty!", write_json(tmp_path, empty, "empty.json")),
        # every image without instances: detectron2 drops them all (FILTER_EMPTY_ANNOTATIONS)
        (AssertionError, r"No valid data found in bad_inputs_",
         write_json(tmp_path, unannotated, "unannotated.json")),
    ]  # fmt: skip
    for i, (exc, message, json_file) in enumerate(cases):
        name = register(json_file, image_root)
        _raises_before_training(tmp_path / f"data{i}", exc, message, *on_dataset(name))


# ------------------------------------------------------------------ degraded data that trains
def _train(monkeypatch, out, *opts):
    """train_net.main for 2 iterations with a LossRecorder: (results, each iteration's losses)."""
    log = out / "losses.jsonl"
    build_hooks = MultiMaskTrainer.build_hooks
    monkeypatch.setattr(
        MultiMaskTrainer, "build_hooks", lambda self: build_hooks(self) + [LossRecorder(str(log))]
    )
    results = train_net.main(train_net_args(out, "SOLVER.MAX_ITER", "2", *opts))
    return results, [json.loads(line) for line in log.read_text().splitlines()]


def test_images_without_instances_train(synthetic, tmp_path, monkeypatch):
    coco, image_root = synthetic
    coco = copy.deepcopy(coco)
    # images 1 and 2 without annotations, image 3 with crowd annotations only
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in (1, 2)]
    for a in coco["annotations"]:
        a["iscrowd"] = int(a["image_id"] == 3)
    name = register(write_json(tmp_path, coco), image_root)
    opts = on_dataset(
        name, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False", "SOLVER.IMS_PER_BATCH", "4"
    )
    results, losses = _train(monkeypatch, tmp_path / "run", *opts)
    assert [r["iteration"] for r in losses] == [0, 1]
    assert all(math.isfinite(v) for r in losses for v in r.values())
    assert "bbox" in results


def test_a_mask_name_missing_everywhere_trains_with_zero_loss_and_nan_ap(
    synthetic, tmp_path, monkeypatch, caplog
):
    coco, image_root = synthetic
    coco = copy.deepcopy(coco)
    for a in coco["annotations"]:
        del a["visible_mask"]
    name = register(write_json(tmp_path, coco), image_root)
    with caplog.at_level(logging.WARNING):
        results, losses = _train(monkeypatch, tmp_path / "run", *on_dataset(name))
    assert "no annotation has the key(s) ['visible_mask']" in caplog.text
    assert [r["loss_mask_visible"] for r in losses] == [0.0, 0.0]
    assert all(r["loss_mask_amodal"] > 0.1 for r in losses)
    assert math.isnan(results["segm_visible"]["AP"]) and not math.isnan(results["bbox"]["AP"])
    assert "segm_visible: no annotated ground truth in the evaluated images; NaN." in caplog.text


# ------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(get_multimask_cfg(CONFIG, TINY_OPTS))


def test_bad_checkpoint_files_name_the_file(tiny_model, tmp_path):
    checkpointer = AtomicDetectionCheckpointer(tiny_model, str(tmp_path))
    checkpointer.save("good")
    good = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.json").write_text('{"a": 1}')
    torch.save([1, 2, 3], tmp_path / "list.pth")
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))  # e.g. a classifier's backbone
    torch.save(other.state_dict(), tmp_path / "other_arch.pth")
    cases = {
        "missing.pth": (FileNotFoundError, r"checkpoint .*missing.pth does not exist"),
        "truncated.pth": (
            ValueError,
            r"cannot read checkpoint .*truncated.pth: .*truncated or corrupt",
        ),
        "notes.json": (ValueError, r"cannot read checkpoint .*notes.json"),
        "list.pth": (ValueError, r"checkpoint .*list.pth holds a list, not a state dict"),
        "other_arch.pth": (ValueError, r"checkpoint .*other_arch.pth: none of its 7 tensors fits"),
    }
    for file_name, (exc, message) in cases.items():
        with pytest.raises(exc, match=message):
            checkpointer.load(str(tmp_path / file_name))
    # --resume when last_checkpoint names a file that was deleted
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(FileNotFoundError, match=r"model_0000099.pth does not exist"):
        checkpointer.resume_or_load("", resume=True)


def test_eval_only_with_weights_of_other_mask_names_fails(synthetic, tiny_model, tmp_path):
    coco, image_root = synthetic
    name = register(write_json(tmp_path, coco), image_root)
    AtomicDetectionCheckpointer(tiny_model, str(tmp_path)).save("k2")  # amodal, visible
    heads = "MODEL.ROI_MULTI_MASK_HEAD"
    opts = on_dataset(name, "MODEL.WEIGHTS", str(tmp_path / "k2.pth"), f"{heads}.NUM_MASK", "3")
    opts += [f"{heads}.MASK_NAMES", "['amodal', 'visible', 'occluded']"]
    args = train_net_args(tmp_path / "eval", *opts, flags=["--eval-only"])
    with pytest.raises(ValueError, match=r"k2.pth lacks \d+ of the model's \d+ tensors \(roi_heads"
                       r".mask_head.towers.occluded.*trained with another config"):  # fmt: skip
        train_net.main(args)


# ------------------------------------------------------------------ non-finite values
def _nan_trainer(name, tmp_path, poison):
    cfg = get_multimask_cfg(CONFIG, TINY_OPTS + on_dataset(name, "OUTPUT_DIR", str(tmp_path)))
    trainer = MultiMaskTrainer(cfg)
    with torch.no_grad():
        poison(trainer.model).fill_(float("nan"))
    return trainer


def test_non_finite_values_raise_floating_point_error_with_iteration(synthetic, tmp_path):
    coco, image_root = synthetic
    name = register(write_json(tmp_path, coco), image_root)
    # NaN features: the RPN's check fires first, and the trainer adds the iteration
    stem = lambda m: m.backbone.bottom_up.stem.conv1.weight  # noqa: E731
    trainer = _nan_trainer(name, tmp_path / "features", stem)
    with pytest.raises(FloatingPointError, match=r"contain Inf/NaN.*\(at iteration 0\)"):
        trainer.train()
    # only a loss is NaN: detectron2's SimpleTrainer check
    head = lambda m: m.roi_heads.mask_head.towers.visible.predictor.bias  # noqa: E731
    trainer = _nan_trainer(name, tmp_path / "loss", head)
    with pytest.raises(FloatingPointError, match=r"Loss became infinite or NaN at iteration=0"):
        trainer.train()
    # the explicit loop of --trainer simple
    cfg = get_multimask_cfg(CONFIG, TINY_OPTS + on_dataset(name, "OUTPUT_DIR", str(tmp_path / "s")))
    model = build_model(cfg)
    with torch.no_grad():
        model.backbone.bottom_up.stem.conv1.weight.fill_(float("inf"))
    with EventStorage(0), pytest.raises(FloatingPointError, match=r"\(at iteration 0\)"):
        do_train(cfg, model)
