import logging
import textwrap

import pytest
from omegaconf import OmegaConf

from detectron2.modeling import build_model

import train_net
from multimask.config import get_multimask_cfg, import_custom_modules, read_custom_imports

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
