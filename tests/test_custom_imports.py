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
from detectron2.modeling import build_model

import train_net
from multimask.config import get_multimask_cfg, import_custom_modules, read_custom_imports
from multimask.data import register_synthetic_dataset

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
