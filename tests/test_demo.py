import importlib.util
import json
import os
import tracemalloc

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor

from multimask import add_multimask_config
from multimask.data import load_multimask_labelme_json
from multimask.structures import segmentation_to_bitmask

from .common import REPO_ROOT, get_tiny_config, get_tiny_model

NAMES = ("amodal", "visible", "occluded")


def _load_script(*parts):
    spec = importlib.util.spec_from_file_location(
        "_".join(parts)[:-3], os.path.join(REPO_ROOT, *parts)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny config written to YAML and random-init weights saved as a detectron2 checkpoint."""
    root = tmp_path_factory.mktemp("tiny_run")
    cfg = get_tiny_config(NAMES)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.PRIMARY = "visible"
    DetectionCheckpointer(get_tiny_model(cfg), save_dir=str(root)).save("model")
    (root / "tiny.yaml").write_text(cfg.dump())
    return root / "tiny.yaml", root / "model.pth"


def _write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(str(folder / f"img{i}.png"))
        cv2.imwrite(paths[-1], rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
    return paths


def _predictor(yaml_path, weights):
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.merge_from_file(str(yaml_path))
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.5
    return DefaultPredictor(cfg)


def test_default_predictor_outputs_every_mask_at_image_size(tiny_run):
    predictor = _predictor(*tiny_run)
    image = np.random.RandomState(1).randint(0, 256, (48, 72, 3), dtype=np.uint8)
    inst = predictor(image)["instances"]
    n = len(inst)
    assert n > 0 and inst.image_size == (48, 72)
    assert set(inst.get_fields()) == {
        "pred_boxes",
        "scores",
        "pred_classes",
        "pred_masks",
        "pred_multimasks",
    }
    assert inst.pred_multimasks.shape == (n, 3, 48, 72) and inst.pred_multimasks.dtype == torch.bool
    assert inst.pred_masks.shape == (n, 48, 72) and inst.pred_masks.dtype == torch.bool
    # by name: index of the name in MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES; pred_masks is PRIMARY
    assert torch.equal(inst.pred_masks, inst.pred_multimasks[:, NAMES.index("visible")])
    assert inst.scores.dtype == torch.float32 and inst.pred_classes.dtype == torch.int64
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 2] <= 72).all() and (boxes[:, 3] <= 48).all() and (boxes >= 0).all()


def test_demo_renders_images_into_a_directory_and_writes_json(tiny_run, tmp_path):
    yaml_path, weights = tiny_run
    paths = _write_images(tmp_path / "in", [(64, 64), (48, 64)])
    out_dir = tmp_path / "out" / "renders"  # does not exist yet: created
    demo = _load_script("demo", "demo.py")
    records = demo.main(
        [
            "--config-file",
            str(yaml_path),
            "--input",
            str(tmp_path / "in" / "*.png"),
            "--output",
            str(out_dir) + os.sep,
            "--masks",
            "amodal,visible",
            "--json-output",
            str(tmp_path / "res.json"),
            "--opts",
            "MODEL.WEIGHTS",
            str(weights),
        ]
    )
    predictor = _predictor(yaml_path, weights)
    for path, (h, w) in zip(paths, [(64, 64), (48, 64)]):
        drawing = cv2.imread(str(out_dir / os.path.basename(path)))
        # enlarged 8x so labels fit (auto_scale), and something drawn over the input
        assert drawing.shape == (h * 8, w * 8, 3)
        plain = cv2.resize(cv2.imread(path), (w * 8, h * 8), interpolation=cv2.INTER_NEAREST)
        assert np.abs(drawing.astype(int) - plain).max(axis=2).__gt__(30).mean() > 0.05

    with open(tmp_path / "res.json") as f:
        saved = json.load(f)
    assert saved == records
    # one record per instance and mask name, for every predicted name (not only the drawn ones)
    for image_id, path in enumerate(paths):
        inst = predictor(cv2.imread(path))["instances"]
        recs = [r for r in saved if r["image_id"] == image_id]
        assert len(recs) == 3 * len(inst) > 0
        assert {r["file_name"] for r in recs} == {path}
        for k, name in enumerate(NAMES):
            by_name = [r for r in recs if r["mask_name"] == name]
            decoded = mask_util.decode([r["segmentation"] for r in by_name]).transpose(2, 0, 1)
            assert np.array_equal(decoded.astype(bool), inst.pred_multimasks[:, k].numpy())
            assert [r["score"] for r in by_name] == pytest.approx(inst.scores.tolist())
        r = recs[0]
        assert set(r) == {
            "image_id",
            "file_name",
            "category_id",
            "bbox",
            "score",
            "mask_name",
            "segmentation",
        }
        x0, y0, x1, y1 = inst.pred_boxes.tensor[0].tolist()
        assert r["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-4)


def test_demo_panels_to_one_file_and_video(tiny_run, tmp_path):
    yaml_path, weights = tiny_run
    demo = _load_script("demo", "demo.py")
    (path,) = _write_images(tmp_path, [(64, 64)])
    args = ["--config-file", str(yaml_path), "--panels", "--scale", "2"]
    demo.main(
        args
        + [
            "--input",
            path,
            "--output",
            str(tmp_path / "p.jpg"),
            "--opts",
            "MODEL.WEIGHTS",
            str(weights),
        ]
    )
    assert cv2.imread(str(tmp_path / "p.jpg")).shape == (128, 3 * 128 + 2 * 4, 3)

    video = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 64))
    for i in range(3):
        video.write(np.full((64, 64, 3), 40 * i, dtype=np.uint8))
    video.release()
    records = demo.main(
        args
        + [
            "--masks",
            "occluded",
            "--video-input",
            str(tmp_path / "v.mp4"),
            "--output",
            str(tmp_path / "vo") + os.sep,
            "--opts",
            "MODEL.WEIGHTS",
            str(weights),
        ]
    )
    out = cv2.VideoCapture(str(tmp_path / "vo" / "v.mp4"))
    frames = []
    while True:
        ok, frame = out.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 3 and frames[0].shape == (128, 128, 3)  # one panel: occluded
    assert records is None  # no --json-output: nothing kept


def test_demo_memory_stays_flat_over_a_long_video_without_json_output(
    tiny_run, tmp_path, monkeypatch
):
    """--video-input / --webcam without --json-output: no result record is built or kept."""
    yaml_path, weights = tiny_run
    demo = _load_script("demo", "demo.py")
    num_frames, rng = 20, np.random.RandomState(0)
    video = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    for _ in range(num_frames):
        video.write(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8))
    video.release()

    built, detected, memory = [], [], []
    to_json = demo.instances_to_coco_json
    monkeypatch.setattr(
        demo, "instances_to_coco_json", lambda *a, **k: built.append(1) or to_json(*a, **k)
    )
    run_on_video = demo.VisualizationDemo.run_on_video

    def traced(self, capture):
        for predictions, drawing in run_on_video(self, capture):
            detected.append(len(predictions))
            memory.append(tracemalloc.get_traced_memory()[0])
            yield predictions, drawing

    monkeypatch.setattr(demo.VisualizationDemo, "run_on_video", traced)
    # drawing is not what is measured, and drawing ten instances per frame takes seconds
    monkeypatch.setattr(demo.VisualizationDemo, "draw", lambda self, image, instances: image)
    args = ["--config-file", str(yaml_path), "--video-input", str(tmp_path / "v.avi")]
    args += ["--output", str(tmp_path / "out.mp4"), "--confidence-threshold", "0"]
    tracemalloc.start()
    try:
        records = demo.main(args + ["--opts", "MODEL.WEIGHTS", str(weights)])
    finally:
        tracemalloc.stop()
    assert len(detected) == num_frames and sum(detected) >= num_frames  # frames had results
    assert records is None and built == []
    # Python memory after the first frames (caches warmed) grows by < 2 KB a frame (logging);
    # keeping the ~30 RLE records of each frame would add ~20 KB a frame
    growth = max(memory[8:]) - memory[8]
    assert growth < 2_000 * (num_frames - 8), [m - memory[8] for m in memory]


def test_demo_rejects_mask_names_the_model_does_not_predict(tiny_run, tmp_path):
    yaml_path, weights = tiny_run
    demo = _load_script("demo", "demo.py")
    (path,) = _write_images(tmp_path, [(64, 64)])
    with pytest.raises(ValueError, match=r"--masks \['shadow'\] not predicted"):
        demo.main(
            [
                "--config-file",
                str(yaml_path),
                "--input",
                path,
                "--masks",
                "amodal,shadow",
                "--output",
                str(tmp_path / "o.png"),
                "--opts",
                "MODEL.WEIGHTS",
                str(weights),
            ]
        )


def _fill_holes(mask):
    """The mask with every background region not 4-connected to the border set."""
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2, flags=4)
    return (outside != 2)[1:-1, 1:-1]


def test_demo_writes_labelme_files_that_load_back(tiny_run, tmp_path):
    yaml_path, weights = tiny_run
    paths = _write_images(tmp_path / "in", [(64, 64), (48, 64)])
    out = tmp_path / "labels"
    demo = _load_script("demo", "demo.py")
    base = ["--config-file", str(yaml_path), "--input", *paths, "--output", str(tmp_path / "vis")]
    opts = ["--opts", "MODEL.WEIGHTS", str(weights)]
    demo.main(base + ["--masks", "amodal,visible", "--labelme-output", str(out)] + opts)
    predictor = _predictor(yaml_path, weights)
    classes = predictor.metadata.get("thing_classes", None) or ["0", "1", "2"]
    dicts = load_multimask_labelme_json(
        str(out), mask_names=("amodal", "visible"), thing_classes=classes
    )
    assert [d["file_name"] for d in dicts] == paths  # imagePath relative to the JSON, resolved
    for path, d in zip(paths, dicts):
        with open(out / (os.path.basename(path)[:-4] + ".json")) as f:
            assert json.load(f)["imagePath"] == "../in/" + os.path.basename(path)
        inst = predictor(cv2.imread(path))["instances"]
        # every object with a non-empty mask comes back with its class and its pixels (holes
        # filled: a LabelMe polygon has none)
        kept = [i for i in range(len(inst)) if inst.pred_multimasks[i, :2].any()]
        assert len(d["annotations"]) == len(kept) > 0
        for i, a in zip(kept, d["annotations"]):
            assert a["category_id"] == inst.pred_classes[i]
            for k, name in enumerate(("amodal", "visible")):
                pred = inst.pred_multimasks[i, k].numpy()
                segm = a["multimask"][name]
                got = (
                    np.zeros_like(pred)
                    if segm is None
                    else segmentation_to_bitmask(segm, *pred.shape)
                )
                np.testing.assert_array_equal(got, _fill_holes(pred))
    with pytest.raises(ValueError, match="--labelme-output .* use it with --input"):
        demo.main(["--config-file", str(yaml_path), "--webcam", "--labelme-output", str(out)])


def test_demo_metadata_loads_class_names_known_only_from_the_annotations(tmp_path):
    """Builtin D2SA / COCOA-cls know their classes only from their files: the demo loads them."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    predictor = _load_script("demo", "predictor.py")
    name = f"demo_classes_{os.getpid()}"

    def load():
        MetadataCatalog.get(name).set(thing_classes=["apple", "pear"])
        return []

    DatasetCatalog.register(name, load)
    assert MetadataCatalog.get(name).get("thing_classes") is None
    assert predictor._metadata_with_classes(name).thing_classes == ["apple", "pear"]

    missing = name + "_missing"
    DatasetCatalog.register(missing, lambda: json.load(open(tmp_path / "absent.json")))
    assert predictor._metadata_with_classes(missing).get("thing_classes") is None  # logged, no crash
