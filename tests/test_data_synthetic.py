"""The synthetic occlusion dataset: deterministic, cached, with exact and learnable masks."""

import json
import os
import uuid

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from multimask.data import SYNTHETIC_CLASSES, load_synthetic_dataset, register_synthetic_dataset
from multimask.data.datasets import synthetic
from multimask.structures import segmentation_to_bitmask

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 128


def masks_of(anno):
    return {k: segmentation_to_bitmask(v, SIZE, SIZE) for k, v in anno["multimask"].items()}


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = load_synthetic_dataset("a", 6, seed=3, root=str(tmp_path / "one"))
    b = load_synthetic_dataset("a", 6, seed=3, root=str(tmp_path / "two"))
    c = load_synthetic_dataset("a", 6, seed=4, root=str(tmp_path / "three"))
    annos = lambda ds: [d["annotations"] for d in ds]  # noqa: E731
    assert annos(a) == annos(b) and annos(a) != annos(c)
    for da, db in zip(a, b):
        np.testing.assert_array_equal(cv2.imread(da["file_name"]), cv2.imread(db["file_name"]))
    # image i depends on (seed, i) only: a smaller dataset is a prefix of a larger one
    prefix = load_synthetic_dataset("p", 3, seed=3, root=str(tmp_path / "four"))
    assert annos(prefix) == annos(a)[:3]


def test_masks_are_exact_and_match_the_pixels(tmp_path):
    dicts = load_synthetic_dataset("exact", 6, seed=0, root=str(tmp_path))
    for d in dicts:
        assert (d["height"], d["width"]) == (SIZE, SIZE)
        image = cv2.imread(d["file_name"])
        assert image.shape == (SIZE, SIZE, 3)
        annos = d["annotations"]
        assert 2 <= len(annos) <= 5
        visible_union = np.zeros((SIZE, SIZE), dtype=bool)
        assert sorted(a["depth"] for a in annos) == list(range(1, len(annos) + 1))
        for anno in annos:
            m = masks_of(anno)
            assert list(anno["multimask"]) == ["amodal", "visible", "occluded", "occluder"]
            # occluder: the visible pixels, within the object's box, of the objects in front of it
            front = np.zeros((SIZE, SIZE), dtype=bool)
            for other in annos:
                if other["depth"] < anno["depth"]:
                    front |= masks_of(other)["visible"]
            x0, y0, w, h = anno["bbox"]
            box = np.zeros((SIZE, SIZE), dtype=bool)
            box[int(y0) : int(np.ceil(y0 + h)), int(x0) : int(np.ceil(x0 + w))] = True
            np.testing.assert_array_equal(m["occluder"], front & box)
            assert not (m["occluded"] & ~m["occluder"]).any()  # what hides it is its occluder
            assert not (m["visible"] & ~m["amodal"]).any()
            np.testing.assert_array_equal(m["occluded"], m["amodal"] & ~m["visible"])
            area, visible = m["amodal"].sum(), m["visible"].sum()
            assert visible >= 0.15 * area  # never (nearly) fully hidden
            assert anno["occlude_rate"] == pytest.approx(1 - visible / area, abs=1e-4)
            assert 15 <= max(anno["bbox"][2:]) <= 71
            assert not (visible_union & m["visible"]).any()  # each pixel shows one object at most
            visible_union |= m["visible"]
            assert 0 <= anno["category_id"] < len(SYNTHETIC_CLASSES)


def test_occlusion_share_and_class_balance(tmp_path):
    dicts = load_synthetic_dataset("stats", 40, seed=0, root=str(tmp_path))
    rates = np.array([a["occlude_rate"] for d in dicts for a in d["annotations"]])
    classes = np.bincount([a["category_id"] for d in dicts for a in d["annotations"]], minlength=3)
    assert 0.25 < (rates > 0.1).mean() < 0.75, (rates > 0.1).mean()
    assert classes.min() > 0.2 * classes.sum()


def test_cache_is_reused_and_regenerated_when_parameters_change(tmp_path, monkeypatch):
    root = str(tmp_path)
    load_synthetic_dataset("c", 4, seed=0, root=root)
    json_file = os.path.join(root, "c", "annotations.json")
    stamp = os.stat(json_file).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a matching cache")

    with monkeypatch.context() as m:
        m.setattr(synthetic, "generate_synthetic_dataset", fail)
        assert len(load_synthetic_dataset("c", 4, seed=0, root=root)) == 4
    assert os.stat(json_file).st_mtime_ns == stamp
    assert len(load_synthetic_dataset("c", 5, seed=0, root=root)) == 5
    with open(os.path.join(root, "c", "params.json")) as f:
        assert json.load(f)["num_images"] == 5
    assert sorted(os.listdir(root)) == ["c"]  # no temporary directory left behind


def test_register_uses_multimask_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIMASK_CACHE", str(tmp_path))
    name = f"test_synthetic_{uuid.uuid4().hex}"
    register_synthetic_dataset(name, 2, seed=1)
    meta = MetadataCatalog.get(name)
    # no json_file: detectron2's COCOEvaluator converts the dataset dicts
    assert meta.thing_classes == SYNTHETIC_CLASSES and not hasattr(meta, "json_file")
    assert (
        meta.mask_names == ["amodal", "visible", "occluded", "occluder"]
        and meta.evaluator_type == "multimask_coco"
    )
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 2 and os.path.dirname(dicts[0]["file_name"]) == meta.image_root
    assert meta.image_root == os.path.join(str(tmp_path), "synthetic", name, "images")


def test_refuses_small_images_and_foreign_directories(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        load_synthetic_dataset("s", 1, seed=0, image_size=64, root=str(tmp_path))
    os.makedirs(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="not a multimask synthetic dataset cache"):
        load_synthetic_dataset("mine", 1, seed=0, root=str(tmp_path))
