import importlib.util
import logging
import os
import textwrap

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import train_net
from multimask.config import get_multimask_cfg, import_custom_modules, read_custom_imports
from multimask import MultiMasks
from multimask.data import register_synthetic_dataset
from multimask.modeling import build_multi_mask_head

from .common import REPO_ROOT

# Registered once per process (registries refuse a second class of the same name): one module, imported
# through the config by the first test that needs it, cached by Python for the others.
MODULE = "mm_test_user_heads"
MODULE_SOURCE = '''
"""A user's package: its own mask head, selected by ROI_MULTI_MASK_HEAD.NAME, with its own key."""
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY

from multimask.modeling import MultiMaskRCNNConvUpsampleHead


def add_config(cfg):
    cfg.USER_HEAD = CN()
    cfg.USER_HEAD.LOGIT_SCALE = 1.0
    cfg.USER_HEAD.DIM = 8


@ROI_MASK_HEAD_REGISTRY.register()
class UserScaledMaskHead(MultiMaskRCNNConvUpsampleHead):
    @configurable
    def __init__(self, input_shape, *, logit_scale=1.0, **kwargs):
        super().__init__(input_shape, **kwargs)
        self.logit_scale = logit_scale

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["logit_scale"] = cfg.USER_HEAD.LOGIT_SCALE
        return ret

    def layers(self, x):
        return super().layers(x) * self.logit_scale


# A head written from scratch on the head API: layers only, ~20 lines.
from torch import nn
from detectron2.layers import Conv2d
from multimask.modeling import BaseMultiMaskHead


@ROI_MASK_HEAD_REGISTRY.register()
class UserTinyMaskHead(BaseMultiMaskHead):
    @configurable
    def __init__(self, input_shape, *, dim, **kwargs):
        super().__init__(input_shape, **kwargs)
        k, c = len(self.mask_names), self.num_mask_channels
        self.conv = Conv2d(input_shape.channels, dim, 3, padding=1, activation=nn.ReLU())
        self.up = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.predictor = Conv2d(dim, k * c, 1)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), "dim": cfg.USER_HEAD.DIM}

    def layers(self, x):
        y = self.predictor(nn.functional.relu(self.up(self.conv(x))))
        return y.view(y.shape[0], len(self.mask_names), -1, *y.shape[2:])
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """tmp_path on sys.path, holding the user module and a YAML chain that imports it."""
    (tmp_path / f"{MODULE}.py").write_text(MODULE_SOURCE)
    (tmp_path / "broken_user_module.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = f"{REPO_ROOT}/configs/quick_schedules/multimask_R18_FPN_instant_test_synthetic.yaml"
    # the import is declared in the parent; the child uses the key the module adds
    (tmp_path / "parent.yaml").write_text(
        f'_BASE_: "{base}"\nMULTIMASK:\n  CUSTOM_IMPORTS: ["{MODULE}"]\n'
    )
    (tmp_path / "child.yaml").write_text(
        textwrap.dedent(
            """\
            _BASE_: "parent.yaml"
            MODEL:
              DEVICE: "cpu"
              ROI_MULTI_MASK_HEAD:
                NAME: "UserScaledMaskHead"
            USER_HEAD:
              LOGIT_SCALE: 2.5
            """
        )
    )
    return tmp_path


def test_yaml_imports_user_module_before_merging(user_package):
    cfg = get_multimask_cfg(str(user_package / "child.yaml"))
    assert list(cfg.MULTIMASK.CUSTOM_IMPORTS) == [MODULE]
    assert cfg.USER_HEAD.LOGIT_SCALE == 2.5
    head = build_model(cfg).roi_heads.mask_head
    assert type(head).__name__ == "UserScaledMaskHead" and head.logit_scale == 2.5


def test_train_net_setup_uses_custom_imports(user_package):
    args = train_net.get_parser().parse_args(
        ["--config-file", str(user_package / "child.yaml"), "OUTPUT_DIR", str(user_package / "out")]
    )
    cfg = train_net.setup(args)
    assert cfg.USER_HEAD.LOGIT_SCALE == 2.5 and cfg.is_frozen()


def test_without_the_import_the_user_key_is_unknown(user_package):
    opts = ["MULTIMASK.CUSTOM_IMPORTS", "[]"]
    assert read_custom_imports(str(user_package / "child.yaml"), opts) == ([], False)
    with pytest.raises(KeyError, match="USER_HEAD"):
        get_multimask_cfg(str(user_package / "child.yaml"), opts)


def test_failed_import_names_module_and_key(user_package):
    for module, cause in [
        ("no_such_user_module", "ModuleNotFoundError"),
        ("broken_user_module", "boom"),
    ]:
        opts = ["MULTIMASK.CUSTOM_IMPORTS", f"['{module}']"]
        with pytest.raises(ImportError) as e:
            get_multimask_cfg(str(user_package / "parent.yaml"), opts)
        assert f"'{module}'" in str(e.value) and "MULTIMASK.CUSTOM_IMPORTS" in str(e.value)
        assert cause in str(e.value)


def test_allow_failed_imports_warns(user_package, caplog):
    opts = [
        "MULTIMASK.CUSTOM_IMPORTS",
        "['no_such_user_module']",
        "MULTIMASK.ALLOW_FAILED_IMPORTS",
        "True",
    ]
    with caplog.at_level(logging.WARNING, logger="multimask.config"):
        cfg = get_multimask_cfg(str(user_package / "parent.yaml"), opts)
    assert cfg.MULTIMASK.ALLOW_FAILED_IMPORTS is True
    assert "no_such_user_module" in caplog.text and "MULTIMASK.CUSTOM_IMPORTS" in caplog.text


def test_import_custom_modules_for_yaml_and_lazy_configs(user_package):
    cfg = get_multimask_cfg(str(user_package / "child.yaml"))
    assert [m.__name__ for m in import_custom_modules(cfg)] == [MODULE]

    lazy = OmegaConf.create({"custom_imports": {"modules": [MODULE], "allow_failed": False}})
    assert [m.__name__ for m in import_custom_modules(lazy)] == [MODULE]
    assert [
        m.__name__ for m in import_custom_modules(OmegaConf.create({"custom_imports": [MODULE]}))
    ] == [MODULE]
    assert import_custom_modules(OmegaConf.create({})) == []
    with pytest.raises(
        ImportError, match="custom_imports.modules: cannot import module 'nope_mod'"
    ):
        import_custom_modules(OmegaConf.create({"custom_imports": {"modules": ["nope_mod"]}}))
    lazy = OmegaConf.create({"custom_imports": {"modules": ["nope_mod"], "allow_failed": True}})
    assert import_custom_modules(lazy) == []


def test_bad_custom_imports_value(user_package):
    with pytest.raises(ValueError, match="must be a list of module names"):
        read_custom_imports("", ["MULTIMASK.CUSTOM_IMPORTS", "my_pkg.heads"])


def _load_script(*parts):
    spec = importlib.util.spec_from_file_location(parts[-1][:-3], os.path.join(REPO_ROOT, *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def user_weights(user_package):
    """Random-init weights of child.yaml's model (its head is UserScaledMaskHead)."""
    cfg = get_multimask_cfg(str(user_package / "child.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model.roi_heads.mask_head).__name__ == "UserScaledMaskHead"
    DetectionCheckpointer(model, save_dir=str(user_package)).save("user_model")
    return str(user_package / "user_model.pth")


def test_demo_builds_the_config_like_train_net(user_package, user_weights, monkeypatch):
    demo = _load_script("demo", "demo.py")
    heads = []
    init = demo.VisualizationDemo.__init__

    def spy(self, cfg, **kwargs):
        init(self, cfg, **kwargs)
        heads.append(self.predictor.model.roi_heads.mask_head)

    monkeypatch.setattr(demo.VisualizationDemo, "__init__", spy)
    image = str(user_package / "image.png")
    cv2.imwrite(image, np.random.RandomState(0).randint(0, 256, (96, 96, 3), dtype=np.uint8))
    out = user_package / "drawn.png"
    demo.main(
        ["--config-file", str(user_package / "child.yaml"), "--input", image, "--output", str(out)]
        + ["--opts", "MODEL.WEIGHTS", user_weights]
    )
    assert os.path.isfile(out)
    assert type(heads[0]).__name__ == "UserScaledMaskHead" and heads[0].logit_scale == 2.5


def test_export_tool_builds_the_config_like_train_net(user_package, user_weights):
    tool = _load_script("tools", "export_model.py")
    args = ["--config-file", str(user_package / "child.yaml"), "--export-method", "tracing"]
    args += ["--output", str(user_package / "export"), "MODEL.WEIGHTS", user_weights]
    # raises unless the traced file gives what the eager user head gives
    assert tool.main(args) == str(user_package / "export" / "model.ts")
    assert tool.setup_cfg(tool.get_parser().parse_args(args)).USER_HEAD.LOGIT_SCALE == 2.5


def test_visualize_data_builds_the_config_like_train_net(user_package):
    tool = _load_script("tools", "visualize_data.py")
    name = "mm_test_custom_imports_vis"
    if name not in DatasetCatalog.list():
        register_synthetic_dataset(name, 2, seed=3, image_size=96, root=str(user_package / "d"))
    args = ["--config-file", str(user_package / "child.yaml"), "--dataset", name]
    args += ["--output-dir", str(user_package / "vis"), "--num-images", "1"]
    for source in ("annotation", "dataloader"):
        written = tool.main(args + ["--source", source])
        assert len(written) == 1 and os.path.isfile(written[0])
    assert tool.setup(tool.parse_args(args)).USER_HEAD.LOGIT_SCALE == 2.5


def test_user_head_on_the_head_api_trains_and_predicts(user_package):
    names = ["amodal", "visible"]
    opts = ["MULTIMASK.CUSTOM_IMPORTS", f"['{MODULE}']", "MODEL.ROI_MULTI_MASK_HEAD.NAME", "UserTinyMaskHead"]
    opts += ["MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK", "2", "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES", str(names)]
    opts += ["MODEL.ROI_MULTI_MASK_HEAD.RELATIONS", "[['containment', 'visible', 'amodal', 0.5]]"]
    opts += ["MODEL.ROI_HEADS.NUM_CLASSES", "3"]
    cfg = get_multimask_cfg("", opts)
    torch.manual_seed(0)
    head = build_multi_mask_head(cfg, ShapeSpec(channels=4, height=7, width=7))
    assert type(head).__name__ == "UserTinyMaskHead"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 7, 7, generator=g)

    def proposals(flip_missing=False):
        inst = Instances((32, 32))
        inst.proposal_boxes = Boxes(torch.tensor([[2.0, 2, 20, 20], [5, 5, 30, 25], [0, 0, 31, 31]]))
        inst.gt_classes = torch.tensor([0, 2, 1])
        masks = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.5
        annotated = torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.bool)
        if flip_missing:  # only the visible mask of ROI 1, which is not annotated
            masks[1, 1] = ~masks[1, 1]
        inst.gt_multimask = MultiMasks(masks, names, annotated)
        return inst

    with EventStorage():
        losses = head(x, [proposals()])
        other = head(x, [proposals(flip_missing=True)])
    assert set(losses) == {"loss_mask_amodal", "loss_mask_visible", "loss_rel_containment_visible_amodal"}
    assert all(torch.equal(losses[k], other[k]) for k in losses)
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())

    head.eval()
    det = Instances((32, 32))
    det.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10]] * 3))
    det.pred_classes = torch.tensor([0, 2, 1])
    with torch.no_grad():
        out = head(x, [det])[0]
    assert out.pred_multimasks.shape == (3, 2, 14, 14) and out.pred_masks.shape == (3, 1, 14, 14)
    assert torch.equal(out.pred_masks[:, 0], out.pred_multimasks[:, 0])
