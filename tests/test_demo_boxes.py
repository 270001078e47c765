"""demo/demo.py --boxes: masks for the boxes of a detections file or of one JSON per image."""
import json

import cv2
import numpy as np
import pytest

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .common import get_tiny_config, get_tiny_model
from .reliability_common import VAL, register_tiny_splits
from .test_demo import _load_script

NAMES = ("amodal", "visible")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_boxes")
    register_tiny_splits(str(root / "data"))
    cfg = get_tiny_config(NAMES)
    cfg.DATASETS.TEST = (VAL,)
    DetectionCheckpointer(get_tiny_model(cfg), save_dir=str(root)).save("model")
    (root / "tiny.yaml").write_text(cfg.dump())
    return root, _load_script("demo", "demo.py")


def _argv(root, *args):
    weights = str(root / "model.pth")
    return ["--config-file", str(root / "tiny.yaml"), *args, "--opts", "MODEL.WEIGHTS", weights]


def _boxes_by_name(records):
    out = {}
    for r in records:
        out.setdefault((r["file_name"], r["mask_name"]), []).append(r)
    return out


def test_boxes_folder_one_json_per_image(run, tmp_path):
    root, demo = run
    rng = np.random.RandomState(1)
    images, given = tmp_path / "images", tmp_path / "boxes"
    images.mkdir(), given.mkdir()
    dets = {
        "a": [{"bbox": [2, 3, 20, 25], "category_id": 2, "score": 0.9},
              {"bbox": [30, 10, 25, 30], "category_id": 3, "score": 0.2},   # below the threshold
              {"bbox": [10, 30, 40, 18], "category_id": 1, "score": 0.7}],
        "b": [],
    }  # fmt: skip
    for name, records in dets.items():
        cv2.imwrite(str(images / f"{name}.png"), rng.randint(0, 256, (50, 64, 3), dtype=np.uint8))
        (given / f"{name}.json").write_text(json.dumps(records))
    labelme = tmp_path / "labelme"
    out = demo.main(
        _argv(
            root, "--input", str(images / "*.png"), "--boxes", str(given),
            "--confidence-threshold", "0.5", "--json-output", str(tmp_path / "r.json"),
            "--labelme-output", str(labelme), "--output", str(tmp_path / "draw") + "/",
        )
    )  # fmt: skip
    by = _boxes_by_name(out)
    kept = [dets["a"][0], dets["a"][2]]
    for name in NAMES:
        recs = by[(str(images / "a.png"), name)]
        np.testing.assert_allclose([r["bbox"] for r in recs], [d["bbox"] for d in kept], atol=1e-4)
        assert [r["category_id"] for r in recs] == [2, 1]  # DATASETS.TEST[0]'s ids, in and out
        assert [r["score"] for r in recs] == pytest.approx([0.9, 0.7])
    assert not any(f == str(images / "b.png") for f, _ in by)
    shapes = json.loads((labelme / "a.json").read_text())["shapes"]
    # the two kept boxes are the two objects (one group id each; a mask may be several shapes)
    assert {s["group_id"] for s in shapes} == {1, 2}
    assert {s["label"].rsplit("_", 1)[1] for s in shapes} <= set(NAMES)
    assert (tmp_path / "draw" / "a.png").exists() and (tmp_path / "draw" / "b.png").exists()
    (given / "b.json").unlink()
    with pytest.raises(FileNotFoundError, match="b.json"):
        demo.main(_argv(root, "--input", str(images / "*.png"), "--boxes", str(given),
                        "--json-output", str(tmp_path / "r2.json")))  # fmt: skip


def test_boxes_file_by_image_id_of_the_dataset(run, tmp_path):
    root, demo = run
    dicts = DatasetCatalog.get(VAL)
    contiguous = MetadataCatalog.get(VAL).thing_dataset_id_to_contiguous_id
    to_dataset = {v: k for k, v in contiguous.items()}
    records = [
        {"image_id": d["image_id"], "category_id": to_dataset[a["category_id"]], "score": 1.0,
         "bbox": BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS)}
        for d in dicts for a in d["annotations"]
    ]  # fmt: skip
    path = tmp_path / "coco_instances_results.json"
    path.write_text(json.dumps(records))
    inputs = [d["file_name"] for d in dicts]
    results = str(tmp_path / "r.json")
    argv = _argv(root, "--input", *inputs, "--boxes", str(path), "--json-output", results)
    out = demo.main(argv)
    by = _boxes_by_name(out)
    for d in dicts:
        recs = by[(d["file_name"], "amodal")]
        assert len(recs) == len(d["annotations"])
        assert [r["category_id"] for r in recs] == [
            to_dataset[a["category_id"]] for a in d["annotations"]
        ]
    path.write_text(json.dumps(records + [dict(records[0], image_id=12345)]))
    with pytest.raises(ValueError, match="image_id 12345 is not in dataset"):
        demo.main(argv)
