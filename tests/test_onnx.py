"""ONNX export run in onnxruntime (CPU) against the eager model, and the torch-free predictor."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from multimask.modeling import multimask_postprocess  # noqa: E402
from multimask.utils.onnx_export import (  # noqa: E402
    OnnxMultiMaskRCNN,
    check_onnx_exportable,
    export_onnx,
    spec_from_cfg,
)
from multimask_deploy import OnnxMultiMaskPredictor, paste_masks  # noqa: E402

from .common import REPO_ROOT, get_tiny_config, get_tiny_model  # noqa: E402

HEADS = {
    # K = 1, 2, 3; FC fusion and FLOW need towers (SHARED_CONVS < NUM_CONV)
    "k1": (("amodal",), []),
    "k2_fc_fusion": (
        ("amodal", "visible"),
        ["SHARED_CONVS", 1, "FC_FUSION", ["amodal", "visible"]],
    ),
    "k3_flow_fc": (
        ("amodal", "visible", "occluded"),
        ["SHARED_CONVS", 1, "FLOW", [["visible", "amodal"]], "FC_FUSION", ["amodal"]],
    ),
    # Mask Scoring: the predicted IoU multiplies the scores inside the graph
    "k2_maskiou": (("amodal", "visible"), ["MASKIOU_ON", True]),
}


def _config(names, head_opts):
    cfg = get_tiny_config(names)
    opts = []
    for key, value in zip(head_opts[::2], head_opts[1::2]):
        opts += [f"MODEL.ROI_MULTI_MASK_HEAD.{key}", value]
    cfg.merge_from_list(opts)
    cfg.MODEL.ROI_MULTI_MASK_HEAD.PRIMARY = names[-1]
    cfg.TEST.DETECTIONS_PER_IMAGE = 30
    return cfg


def _image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 255


def _export(model, cfg, path, threshold):
    # the score threshold between a blank image's best score and the sample's (random weights
    # score every image alike, within 1e-2): the blank image has no detection through the same
    # exported file
    model.roi_heads.box_predictor.test_score_thresh = threshold
    spec = spec_from_cfg(cfg)
    spec["score_thresh_test"] = threshold
    export_onnx(model, spec, path, _image(64, 64, 0))
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


@pytest.fixture(scope="module", params=sorted(HEADS))
def exported(request, tmp_path_factory):
    names, opts = HEADS[request.param]
    cfg = _config(names, opts)
    model = get_tiny_model(cfg).eval()
    wrapper = OnnxMultiMaskRCNN(model)
    size = torch.tensor([64, 64])
    # the box scores the threshold filters: MaskIoU rescales them only after that filter
    head = model.roi_heads.mask_head
    scored, head.maskiou_indices = head.maskiou_indices, []
    with torch.no_grad():
        blank = wrapper(torch.zeros(3, 40, 56), torch.tensor([40, 56]))[1].max().item()
        busy = wrapper(_image(64, 64, 0), size)[1].max().item()
    head.maskiou_indices = scored
    assert blank < busy
    threshold = (blank + busy) / 2
    path = str(tmp_path_factory.mktemp(request.param) / "model.onnx")
    return model, cfg, path, _export(model, cfg, path, threshold)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_onnxruntime_matches_eager(exported, shape):
    """Two image sizes through one file: raw outputs, then pasted masks as the model pastes."""
    model, cfg, _, session = exported
    image = _image(*shape, seed=shape[1])
    orig = (shape[0] * 3 // 2, shape[1] * 3 // 2)  # boxes scaled to another output size
    boxes, scores, classes, masks = session.run(
        None, {"image": image.numpy(), "image_size": np.array(orig, dtype=np.int64)}
    )
    with torch.no_grad():
        ref = model([{"image": image, "height": orig[0], "width": orig[1]}])[0]["instances"]
        raw = OnnxMultiMaskRCNN(model)(image, torch.tensor(orig))[3].numpy()
    assert len(ref) > 0 and len(scores) == len(ref)
    np.testing.assert_array_equal(classes, ref.pred_classes.numpy())
    np.testing.assert_allclose(boxes, ref.pred_boxes.tensor.numpy(), atol=0.01, rtol=0)
    np.testing.assert_allclose(scores, ref.scores.numpy(), atol=1e-4, rtol=0)
    assert masks.shape == raw.shape == (len(ref), len(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES), 28, 28)
    np.testing.assert_allclose(masks, raw, atol=1e-3, rtol=0)
    k = masks.shape[1]
    pasted = paste_masks(masks.reshape(-1, 28, 28), np.repeat(boxes, k, axis=0), orig)
    pasted = pasted.reshape(len(ref), k, *orig)
    eager = ref.pred_multimasks.numpy()
    for i in range(len(ref)):
        for j in range(k):
            # random weights leave probabilities near the 0.5 threshold (they are checked to
            # 1e-3 above): a small mask may differ by a pixel or two
            differ = np.logical_xor(pasted[i, j], eager[i, j]).sum()
            assert _iou(pasted[i, j], eager[i, j]) >= 0.99 or differ <= 2, (i, j, differ)


def test_image_without_detection(exported):
    _, cfg, path, session = exported
    outputs = session.run(
        None, {"image": np.zeros((3, 40, 56), np.float32), "image_size": np.array([40, 56])}
    )
    k = len(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
    assert [o.shape for o in outputs] == [(0, 4), (0,), (0,), (0, k, 28, 28)]
    predictor = OnnxMultiMaskPredictor(path)
    pred = predictor(np.zeros((40, 56, 3), np.uint8))
    assert len(pred) == 0 and pred.masks.shape == (0, k, 40, 56)


def test_predictor_gives_what_the_eager_predictor_gives(exported):
    """Metadata (names, resize, threshold) read back; the whole path against the eager model."""
    model, cfg, path, _ = exported
    predictor = OnnxMultiMaskPredictor(path, num_threads=1)
    assert predictor.mask_names == list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
    assert predictor.mask_names[predictor.primary_index] == cfg.MODEL.ROI_MULTI_MASK_HEAD.PRIMARY
    # the export's sample image, which has detections over the threshold
    bgr = _image(64, 64, 0).permute(1, 2, 0).numpy().astype(np.uint8)
    pred = predictor(bgr)
    image = torch.from_numpy(predictor.preprocess(bgr))
    assert image.shape == (3, 64, 64)
    with torch.no_grad():
        inst = model.inference([{"image": image}], do_postprocess=False)[0]
        ref = multimask_postprocess(inst, 64, 64, model.roi_heads.mask_head.primary_index)
    keep = np.ones(len(ref), bool)  # the default keeps what the graph (and eager inference) keeps
    assert len(pred) == keep.sum() > 0
    np.testing.assert_allclose(pred.boxes, ref.pred_boxes.tensor.numpy()[keep], atol=0.01)
    eager = ref.pred_multimasks.numpy()[keep]
    ious = [_iou(a, b) for a, b in zip(pred.masks.reshape(-1, 64, 64), eager.reshape(-1, 64, 64))]
    assert min(ious) >= 0.99
    # a higher threshold filters the returned scores, as the demo's --confidence-threshold
    # (with MaskIoU the returned scores are rescaled, and may lie under the export's floor)
    higher = max(float(np.median(pred.scores)), predictor.confidence_threshold + 1e-6)
    strict = OnnxMultiMaskPredictor(path, num_threads=1, confidence_threshold=higher)(bgr)
    assert len(strict) == (ref.scores.numpy() > higher).sum() < len(pred)


def test_corrupt_and_mismatched_files_are_clear_errors(exported, tmp_path):
    _, _, path, _ = exported
    with pytest.raises(FileNotFoundError, match="not found"):
        OnnxMultiMaskPredictor(str(tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(open(path, "rb").read()[:5000])
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxMultiMaskPredictor(str(corrupt))
    import onnx

    # a valid ONNX model of something else: names the expected inputs and outputs
    other = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "other",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(other, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="not those of a multimask export"):
        OnnxMultiMaskPredictor(str(tmp_path / "other.onnx"))
    # our graph with metadata naming another K: caught when the outputs come back
    proto = onnx.load(path)
    for prop in proto.metadata_props:
        if prop.key == "mask_names":
            prop.value = json.dumps(json.loads(prop.value) + ["extra"])
    onnx.save(proto, str(tmp_path / "mismatch.onnx"))
    predictor = OnnxMultiMaskPredictor(str(tmp_path / "mismatch.onnx"))
    with pytest.raises(ValueError, match="metadata does not match"):
        predictor(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "nometa.onnx"))
    with pytest.raises(ValueError, match="multimask_format"):
        OnnxMultiMaskPredictor(str(tmp_path / "nometa.onnx"))
    with pytest.raises(ValueError, match="below the exported model's score threshold"):
        OnnxMultiMaskPredictor(path, confidence_threshold=-1.0)


def test_options_without_an_onnx_form_are_named():
    model = get_tiny_model(get_tiny_config(("amodal", "visible"))).eval()
    with pytest.raises(ValueError, match="ROI_BOX_HEAD.POOLER_TYPE.*--opset 16"):
        check_onnx_exportable(model, 11)
    with pytest.raises(ValueError, match="--opset 21"):
        check_onnx_exportable(model, 21)


def test_predictor_imports_neither_torch_nor_detectron2():
    code = (
        "import sys, multimask_deploy, multimask_deploy.demo, multimask_deploy.results, "
        "multimask_deploy.labelme\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'detectron2', 'multimask', 'PIL', 'matplotlib'))\n"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_export_tool_and_onnx_demo(tmp_path):
    """tools/export_model.py --format onnx on the quick YAML, then demo/onnx_demo.py's outputs."""
    import cv2

    cfg = f"{REPO_ROOT}/configs/quick_schedules/multimask_R18_FPN_instant_test_synthetic.yaml"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    subprocess.run(
        [sys.executable, f"{REPO_ROOT}/tools/export_model.py", "--config-file", cfg,
         "--format", "onnx", "--output", str(tmp_path / "export"), "MODEL.DEVICE", "cpu"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    import onnx

    model = onnx.load(str(tmp_path / "export" / "model.onnx"))
    onnx.checker.check_model(model)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props if p.key != "multimask_format"}
    image = np.random.RandomState(0).randint(0, 256, (90, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    out = subprocess.run(
        [sys.executable, f"{REPO_ROOT}/demo/onnx_demo.py", "--model",
         str(tmp_path / "export" / "model.onnx"), "--input", str(tmp_path / "a.png"),
         "--output", str(tmp_path / "draw") + "/", "--json-output", str(tmp_path / "r.json"),
         "--labelme-output", str(tmp_path / "lm"), "--confidence-threshold",
         str(meta["score_thresh_test"])],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    records = json.load(open(tmp_path / "r.json"))
    assert {r["mask_name"] for r in records} <= set(meta["mask_names"])
    assert len(records) % len(meta["mask_names"]) == 0
    labelme = json.load(open(tmp_path / "lm" / "a.json"))
    assert (labelme["imageHeight"], labelme["imageWidth"]) == (90, 120)
    assert cv2.imread(str(tmp_path / "draw" / "a.png")) is not None


@pytest.mark.parametrize("shape,short,longest", [((375, 1242), 800, 1333), ((90, 120), 64, 64),
                                                 ((480, 640), 96, 96), ((61, 333), 128, 128)])
def test_preprocess_is_the_test_transform(shape, short, longest):
    """As DefaultPredictor: PIL's bytes where Pillow resizes horizontally first (every upscale),
    within one gray level where Pillow 13 resizes vertically first (python-pillow/Pillow#9549)."""
    from detectron2.data import transforms as T

    from multimask_deploy import preprocess

    bgr = np.random.RandomState(0).randint(0, 256, (*shape, 3), dtype=np.uint8)
    rgb = bgr[:, :, ::-1]
    ref = T.ResizeShortestEdge([short, short], longest).get_transform(rgb).apply_image(rgb)
    out = preprocess(bgr, "RGB", short, longest)
    assert out.shape == (3, *ref.shape[:2]) and out.dtype == np.float32
    diff = np.abs(out - ref.transpose(2, 0, 1).astype(np.float32))
    assert diff.max() <= 1
    if short >= min(shape):
        assert diff.max() == 0
    np.testing.assert_array_equal(preprocess(bgr, "BGR", 0, 0), bgr.transpose(2, 0, 1))


def test_paste_masks_is_detectron2s():
    from detectron2.layers import paste_masks_in_image

    rng = np.random.RandomState(0)
    masks = rng.rand(12, 28, 28).astype(np.float32)
    xy = rng.rand(12, 2) * 100
    boxes = np.concatenate([xy, xy + rng.rand(12, 2) * 60 + 0.5], axis=1).astype(np.float32)
    boxes[0] = [-5.3, -2.0, 20.7, 200.0]  # past the image edges
    ref = paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), (120, 130))
    out = paste_masks(masks, boxes, (120, 130))
    # float rounding may flip a pixel whose probability is the threshold: never more than that
    assert (out != ref.numpy()).sum() <= 2 and ref.sum() > 1000


def test_render_styles_are_the_visualizers():
    from multimask.utils.visualizer import DEFAULT_MASK_STYLES, MASK_STYLES

    from multimask_deploy import render

    assert render.DEFAULT_MASK_STYLES == DEFAULT_MASK_STYLES
    assert render.MASK_STYLES == MASK_STYLES
