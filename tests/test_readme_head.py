"""
The README's own head example ("Your own mask head"), run as a new user runs it: its Python block
saved as ``my_pkg/tiny_head.py``, its YAML block on the instant-test config, then training, the
demo on an image with no detection, and the export tool's scripting. The blocks are read from
README.md, so the README cannot drift from what works.
"""

import importlib.util
import json
import os
import re
import sys

import cv2
import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import train_net
from multimask.data import register_synthetic_dataset
from multimask.modeling import build_multi_mask_head

from .common import REPO_ROOT

HEADING = "### Your own mask head"
QUICK = "configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml"
INSTANT = "configs/quick_schedules/multimask_R18_FPN_instant_test_synthetic.yaml"
TRAIN, VAL = "multimask_test_readme_head_train", "multimask_test_readme_head_val"


def readme_blocks(heading: str):
    """(language, code) of each fenced block of the README section that starts at `heading`."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(heading)
    end = re.compile(r"^#{2,3} ", re.M).search(text, start + len(heading))
    section = text[start : end.start() if end else None]
    return re.findall(r"^```(\w+)\n(.*?)^```", section, re.S | re.M)


def _load_script(*parts):
    spec = importlib.util.spec_from_file_location(
        "readme_" + parts[-1][:-3], os.path.join(REPO_ROOT, *parts)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The README's head as the user's package, its YAML, a tiny dataset, 4 training iterations."""
    root = tmp_path_factory.mktemp("readme_head")
    blocks = dict(readme_blocks(HEADING))
    assert {"python", "yaml"} <= set(blocks), "the README's head section lost a code block"
    module = re.search(r'CUSTOM_IMPORTS: \["([\w.]+)"\]', blocks["yaml"]).group(1)
    package, name = module.rsplit(".", 1)
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / f"{name}.py").write_text(blocks["python"])
    # the README's YAML, as written, on the instant-test config (a 4-iteration schedule)
    assert f'_BASE_: "{QUICK}"' in blocks["yaml"]
    yaml = blocks["yaml"].replace(QUICK, os.path.join(REPO_ROOT, INSTANT))
    (root / "my_head.yaml").write_text(yaml)
    for split, n, seed in ((TRAIN, 4, 30), (VAL, 2, 31)):
        if split not in DatasetCatalog.list():
            register_synthetic_dataset(split, n, seed, image_size=96, root=str(root / "data"))
    sys.path.insert(0, str(root))
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{TRAIN}',)"]
    opts += ["DATASETS.TEST", f"('{VAL}',)"]
    args = ["--config-file", str(root / "my_head.yaml"), "OUTPUT_DIR", str(root / "run"), *opts]
    args = train_net.get_parser().parse_args(args)
    cfg = train_net.setup(args)
    results = train_net.main(args)
    yield root, cfg, opts, results
    sys.path.remove(str(root))


def test_the_readme_head_trains(user):
    root, cfg, _, results = user
    assert cfg.MODEL.ROI_MULTI_MASK_HEAD.NAME == "TinyMaskHead" and cfg.MY_HEAD.DIM == 64
    assert cfg.SOLVER.MAX_ITER == 4
    final = torch.load(root / "run" / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 3
    assert any(k.startswith("roi_heads.mask_head.predictor.") for k in final["model"])
    lines = [json.loads(x) for x in (root / "run" / "metrics.json").read_text().splitlines()]
    assert any("loss_mask_amodal" in x and "loss_mask_visible" in x for x in lines)
    assert {"bbox", "segm_amodal", "segm_visible"} <= set(results)


def test_the_readme_heads_checkpoint_loads_back_whole(user):
    # its layer named `predictor` is its own, not a single-mask head's to be renamed
    root, cfg, _, _ = user
    model = build_model(cfg)
    saved = torch.load(root / "run" / "model_final.pth", map_location="cpu", weights_only=False)
    DetectionCheckpointer(model).load(str(root / "run" / "model_final.pth"))
    state = model.state_dict()
    for key in ("predictor.weight", "predictor.bias", "conv.weight", "up.weight"):
        key = "roi_heads.mask_head." + key
        torch.testing.assert_close(state[key], saved["model"][key], rtol=0, atol=0)


def test_the_readme_head_trains_on_a_batch_without_rois(user):
    _, cfg, _, _ = user
    head = build_multi_mask_head(cfg, ShapeSpec(channels=32, height=14, width=14))
    assert type(head).__name__ == "TinyMaskHead"
    empty = Instances((96, 96))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    with EventStorage():
        losses = head(torch.zeros(0, 32, 14, 14), [empty])
    assert set(losses) == {"loss_mask_amodal", "loss_mask_visible"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())  # as DDP needs


def test_the_demo_runs_the_readme_head_on_an_image_with_no_detection(user):
    root, cfg, opts, _ = user
    image = str(root / "grey.png")
    cv2.imwrite(image, np.full((96, 96, 3), 128, np.uint8))
    demo = _load_script("demo", "demo.py")
    weights = ["MODEL.WEIGHTS", str(root / "run" / "model_final.pth")]
    # detectron2 keeps the detections with a score > the threshold: at 1.0, none
    args = ["--config-file", str(root / "my_head.yaml"), "--input", image, "--confidence-threshold"]
    args += ["1.0", "--output", str(root / "drawn") + os.sep, "--json-output", str(root / "r.json")]
    args += ["--labelme-output", str(root / "labels"), "--opts", *weights, *opts]
    records = demo.main(args)
    assert records == [] and json.loads((root / "r.json").read_text()) == []
    assert cv2.imread(str(root / "drawn" / "grey.png")) is not None
    assert json.loads((root / "labels" / "grey.json").read_text())["shapes"] == []


@pytest.mark.parametrize("threshold", ["0.05", "1.0"])
def test_the_readme_head_exports_by_scripting(user, threshold):
    root, cfg, opts, _ = user
    tool = _load_script("tools", "export_model.py")
    out = root / f"export_{threshold}"
    args = ["--config-file", str(root / "my_head.yaml"), "--export-method", "scripting"]
    args += ["--output", str(out), "MODEL.WEIGHTS", str(root / "run" / "model_final.pth"), *opts]
    args += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", threshold]
    # raises unless the file, loaded back, gives what the eager model gives on a new image
    path = tool.main(args)
    scripted = torch.jit.load(path)
    image = torch.full((3, 96, 96), 128.0)
    with torch.no_grad():
        masks = scripted(image)["pred_multimasks"]
    m = 2 * cfg.MODEL.ROI_MULTI_MASK_HEAD.POOLER_RESOLUTION
    assert masks.shape[1:] == (2, m, m)
    if threshold == "1.0":
        assert masks.shape[0] == 0
