import importlib.util
import json
import os
import tracemalloc

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image, ImageDraw

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances

from multimask import add_multimask_config
from multimask.data import load_multimask_labelme_json
from multimask.structures import segmentation_to_bitmask
from multimask.utils import instances_to_labelme, mask_to_polygons

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

    def traced(self, capture, draw=True):
        for predictions, drawing in run_on_video(self, capture, draw):
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


def _no_window(monkeypatch, demo):
    """Fail the test if the demo touches a window: writing files must never need a display."""

    def fail(*args, **kwargs):
        raise AssertionError("the demo opened a window")

    for name in ("namedWindow", "imshow", "waitKey"):
        monkeypatch.setattr(demo.cv2, name, fail)


def _iou(a, b):
    union = (a | b).sum()
    return 1.0 if union == 0 else (a & b).sum() / union


def test_demo_writes_labelme_files_that_load_back(tiny_run, tmp_path, monkeypatch):
    yaml_path, weights = tiny_run
    paths = _write_images(tmp_path / "in", [(64, 64), (48, 64)])
    demo = _load_script("demo", "demo.py")
    _no_window(monkeypatch, demo)
    # as the README's pre-annotation command: --labelme-output, no --output
    base = ["--config-file", str(yaml_path), "--input", *paths, "--masks", "amodal,visible"]
    opts = ["--opts", "MODEL.WEIGHTS", str(weights)]
    demo.main(base + ["--labelme-output", str(tmp_path / "labels")] + opts)
    demo.main(base + ["--labelme-output", str(tmp_path / "exact"), "--labelme-epsilon", "0"] + opts)
    predictor = _predictor(yaml_path, weights)
    classes = predictor.metadata.get("thing_classes", None) or ["0", "1", "2"]

    def load(folder):
        return load_multimask_labelme_json(
            str(folder), mask_names=("amodal", "visible"), thing_classes=classes
        )

    simplified, exact = load(tmp_path / "labels"), load(tmp_path / "exact")
    assert [d["file_name"] for d in simplified] == [d["file_name"] for d in exact] == paths
    vertices = {"labels": 0, "exact": 0}
    for path, d, e in zip(paths, simplified, exact):
        for folder in vertices:
            with open(tmp_path / folder / (os.path.basename(path)[:-4] + ".json")) as f:
                content = json.load(f)
            assert content["imagePath"] == "../in/" + os.path.basename(path)
            vertices[folder] += sum(len(s["points"]) for s in content["shapes"])
        inst = predictor(cv2.imread(path))["instances"]
        # every object with a non-empty mask comes back with its class and its pixels (holes
        # filled: a LabelMe polygon has none): exactly at epsilon 0, IoU >= 0.97 simplified
        kept = [i for i in range(len(inst)) if inst.pred_multimasks[i, :2].any()]
        assert len(d["annotations"]) == len(e["annotations"]) == len(kept) > 0
        for i, a, b in zip(kept, d["annotations"], e["annotations"]):
            assert a["category_id"] == b["category_id"] == inst.pred_classes[i]
            for k, name in enumerate(("amodal", "visible")):
                pred = _fill_holes(inst.pred_multimasks[i, k].numpy())
                got = [
                    np.zeros_like(pred) if x is None else segmentation_to_bitmask(x, *pred.shape)
                    for x in (a["multimask"][name], b["multimask"][name])
                ]
                np.testing.assert_array_equal(got[1], pred)
                assert _iou(got[0], pred) >= 0.97
    assert vertices["labels"] < vertices["exact"], vertices  # (random weights: ragged masks)
    with pytest.raises(ValueError, match="--labelme-output .* use it with --input"):
        demo.main(["--config-file", str(yaml_path), "--webcam", "--labelme-output", str(tmp_path)])


def _labelme_6_reads(path):
    """
    The checks LabelMe 6.3.1 makes when it opens a file (labelme/_label_file.py
    ``read_label_file`` and ``_load_shape_json_obj``), written from them; returns the content.
    """
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    image = os.path.join(os.path.dirname(path), raw["imagePath"])  # imageData None: read the file
    width, height = Image.open(image).size  # _check_image_dimensions, on what PIL reads
    assert (raw["imageHeight"], raw["imageWidth"]) == (height, width)
    for shape in raw["shapes"]:
        assert isinstance(shape["label"], str) and isinstance(shape["shape_type"], str)
        points = shape["points"]
        assert isinstance(points, list) and points
        assert all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)
            for p in points
        )
        assert isinstance(shape["flags"], dict) and all(
            isinstance(k, str) and isinstance(v, bool) for k, v in shape["flags"].items()
        )
        assert isinstance(shape["description"], str)
        assert shape["group_id"] is None or type(shape["group_id"]) is int
        assert shape["mask"] is None or isinstance(shape["mask"], str)
        # labelme.utils.shape_to_mask asserts this for a polygon
        assert shape["shape_type"] != "polygon" or len(points) > 2
    return raw


def test_labelme_files_are_what_labelme_6_writes(tiny_run, tmp_path):
    yaml_path, weights = tiny_run
    (path,) = _write_images(tmp_path / "in", [(48, 64)])
    demo = _load_script("demo", "demo.py")
    out = tmp_path / "labels"
    base = ["--config-file", str(yaml_path), "--input", path, "--labelme-output", str(out)]
    demo.main(base + ["--masks", "amodal,visible", "--opts", "MODEL.WEIGHTS", str(weights)])
    raw = _labelme_6_reads(str(out / "img0.json"))
    # labelme/_label_file.py write_label_file: the payload's keys, in its order
    keys = ["version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"]
    assert list(raw) == keys
    assert raw["version"] == "6.3.1" and raw["flags"] == {} and raw["imageData"] is None
    assert raw["shapes"]
    for shape in raw["shapes"]:
        # labelme/app.py _shape_to_dict: these keys, in this order
        keys = ["label", "points", "group_id", "description", "shape_type", "flags", "mask"]
        assert list(shape) == keys
        assert shape["shape_type"] == "polygon" and shape["group_id"] >= 1
        assert shape["description"].startswith("score ")
    # json.dump(payload, f, ensure_ascii=False, indent=2) into a UTF-8 file
    inst = Instances((48, 64))
    inst.pred_multimasks = torch.zeros(1, 1, 48, 64, dtype=torch.bool)
    inst.pred_multimasks[0, 0, 10:30, 5:25] = True
    inst.pred_classes = torch.tensor([0])
    instances_to_labelme(inst, path, str(tmp_path / "cafe.json"), ["café"], ["amodal"])
    text = (tmp_path / "cafe.json").read_bytes().decode("utf-8")
    assert '"label": "café_amodal"' in text and '\n  "flags": {},\n' in text
    assert _labelme_6_reads(str(tmp_path / "cafe.json"))["shapes"][0]["group_id"] == 1


def _labelme_rule(points, height, width):
    """LabelMe's own rasterisation of a polygon (labelme/utils/shape.py ``shape_to_mask``):
    PIL's ImageDraw.polygon(xy, outline=1, fill=1), pixel (x, y) at integer coordinates."""
    drawn = Image.new("L", (width, height), 0)
    ImageDraw.Draw(drawn).polygon([tuple(p) for p in points], outline=1, fill=1)
    return np.array(drawn, dtype=bool)


def _objects(size=96):
    """~40 px objects (as the issue counted ~130 vertices on them) and small ones."""
    c = size // 2
    disc, ellipse, small, plus, pixel = (np.zeros((size, size), np.uint8) for _ in range(5))
    cv2.circle(disc, (c, c), 20, 1, -1)  # 41 px across
    cv2.ellipse(ellipse, (c, c), (20, 12), 30, 0, 360, 1, -1)
    cv2.circle(small, (c, c), 6, 1, -1)
    cv2.circle(plus, (c, c), 1, 1, -1)  # 5 pixels
    pixel[c, c] = 1
    return {"disc40": disc, "ellipse40": ellipse, "disc12": small, "plus": plus, "pixel": pixel}


def test_labelme_outlines_are_simplified_and_keep_their_pixels(tmp_path):
    size = 96
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((size, size, 3), np.uint8))
    objects = _objects(size)
    inst = Instances((size, size))
    inst.pred_multimasks = torch.as_tensor(np.stack(list(objects.values()))[:, None] > 0)
    inst.pred_classes = torch.zeros(len(objects), dtype=torch.long)
    files = {}
    for epsilon in (0.0, 1.0):
        folder = tmp_path / f"eps{epsilon}"
        json_path = str(folder / "a.json")
        files[epsilon] = instances_to_labelme(
            inst, str(tmp_path / "a.png"), json_path, ["obj"], ["amodal"], epsilon=epsilon
        )
    # read back with the project's LabelMe loader
    (loaded,) = load_multimask_labelme_json(str(tmp_path / "eps1.0"), mask_names=("amodal",))
    assert len(loaded["annotations"]) == len(objects)
    for i, (name, mask) in enumerate(objects.items()):
        mask = mask > 0
        (simple,), (exact,) = (
            [s["points"] for s in files[e]["shapes"] if s["group_id"] == i + 1] for e in (1.0, 0.0)
        )
        back = segmentation_to_bitmask(loaded["annotations"][i]["multimask"]["amodal"], size, size)
        assert _iou(back, mask) >= 0.97, name
        # LabelMe's own rule reads every polygon half a pixel out (it puts pixel centres at
        # integer coordinates, the app and the loader at +0.5): simplifying costs nothing more
        by_labelme = [_labelme_rule(p, size, size) for p in (simple, exact)]
        assert _iou(by_labelme[0], mask) >= _iou(by_labelme[1], mask) - 0.01, name
        if name.endswith("40"):
            # every half-pixel step of the border: over 100 vertices; simplified: editable
            assert len(exact) > 100 and len(simple) <= 30, (name, len(exact), len(simple))
    # a lone pixel keeps its square, which any simplification would lose
    (square,) = mask_to_polygons(objects["pixel"])
    assert sorted(map(tuple, square)) == [(48.0, 48.0), (48.0, 49.0), (49.0, 48.0), (49.0, 49.0)]


def test_demo_without_an_output_file_needs_a_window(tiny_run, tmp_path, monkeypatch):
    yaml_path, weights = tiny_run
    (path,) = _write_images(tmp_path, [(64, 64)])
    demo = _load_script("demo", "demo.py")
    monkeypatch.setattr(demo, "VisualizationDemo", None)  # fails before any model is built
    args = ["--config-file", str(yaml_path), "--input", path]
    args += ["--opts", "MODEL.WEIGHTS", str(weights)]
    with pytest.raises(RuntimeError, match="built without a GUI .*give --output"):
        demo.main(args)  # this venv's opencv-python-headless
    monkeypatch.setattr(demo.cv2, "getBuildInformation", lambda: "  GUI:      GTK3\n")
    monkeypatch.setattr(demo.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(RuntimeError, match="no display .*give --output"):
        demo.main(args)
    monkeypatch.setenv("DISPLAY", ":0")

    def no_gui(*a):
        raise demo.cv2.error("The function is not implemented")

    monkeypatch.setattr(demo.cv2, "namedWindow", no_gui)
    with pytest.raises(RuntimeError, match="cannot open a window .*not implemented"):
        demo.main(args)
    with pytest.raises(RuntimeError, match="built without a GUI|no display|cannot open a window"):
        demo.main(["--config-file", str(yaml_path), "--webcam", "--json-output", "r.json"])


def test_demo_refuses_two_images_of_one_labelme_name(tiny_run, tmp_path):
    yaml_path, weights = tiny_run
    first = _write_images(tmp_path / "a", [(64, 64)])
    second = _write_images(tmp_path / "b", [(64, 64)])
    demo = _load_script("demo", "demo.py")
    args = ["--config-file", str(yaml_path), "--input", *first, *second, "--labelme-output"]
    with pytest.raises(ValueError, match=r"img0.png and .*img0.png would both be written to"):
        demo.main(args + [str(tmp_path / "labels"), "--opts", "MODEL.WEIGHTS", str(weights)])
    assert not (tmp_path / "labels").exists()


def test_demo_metadata_loads_class_names_known_only_from_the_annotations(tmp_path):
    """Builtin D2SA / COCOA-cls know their classes only from their files: the demo loads them."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from multimask.data.model_classes import dataset_metadata_with_classes

    name = f"demo_classes_{os.getpid()}"

    def load():
        MetadataCatalog.get(name).set(thing_classes=["apple", "pear"])
        return []

    DatasetCatalog.register(name, load)
    assert MetadataCatalog.get(name).get("thing_classes") is None
    assert dataset_metadata_with_classes(name).thing_classes == ["apple", "pear"]

    missing = name + "_missing"
    DatasetCatalog.register(missing, lambda: json.load(open(tmp_path / "absent.json")))
    assert dataset_metadata_with_classes(missing).get("thing_classes") is None  # logged, no crash
