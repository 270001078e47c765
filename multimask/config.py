"""
Config keys of multimask: ``add_multimask_config``, the checks run on a merged config, and the custom
imports (``MULTIMASK.CUSTOM_IMPORTS``) that let a user's package register heads, datasets, ... by name.
"""
import ast
import importlib
import logging
from types import ModuleType
from typing import Any, List, Sequence, Tuple

import torch

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.utils.logger import log_first_n

logger = logging.getLogger(__name__)


def add_multimask_config(cfg: CN) -> None:
    """
    Add multimask's keys to a detectron2 config, in place.

    Adds ``cfg.MODEL.ROI_MULTI_MASK_HEAD`` (the K-mask head) and ``cfg.MULTIMASK`` (data, evaluation and
    extensibility options). Nothing is changed in detectron2's global defaults.
    """
    _C = cfg

    _C.MODEL.ROI_MULTI_MASK_HEAD = CN()
    # Registered name (in ROI_MASK_HEAD_REGISTRY) of the multi-mask head to build.
    _C.MODEL.ROI_MULTI_MASK_HEAD.NAME = "MultiMaskRCNNConvUpsampleHead"
    # Number of masks K predicted for every detected object.
    _C.MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK = 2
    # Names of the K masks, in prediction order; must have NUM_MASK unique entries,
    # e.g. ["amodal", "visible"] or ["amodal", "visible", "occluded"].
    _C.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["primary", "secondary"]
    # Keys NUM_CONV ... CLS_AGNOSTIC_MASK repeat ROI_MASK_HEAD's: left at the default below, each
    # takes MODEL.ROI_MASK_HEAD's value when that is set (see multi_mask_head_cfg).
    # Number of 3x3 convs (stride 1) on the pooled ROI features before upsampling.
    _C.MODEL.ROI_MULTI_MASK_HEAD.NUM_CONV = 4
    # Channels of those convs (and of the 2x deconv).
    _C.MODEL.ROI_MULTI_MASK_HEAD.CONV_DIM = 256
    # Normalization of those convs: "" (none), "BN", "SyncBN", "GN", ... (detectron2's get_norm names).
    _C.MODEL.ROI_MULTI_MASK_HEAD.NORM = ""
    # Output side of the ROI pooler; predicted masks are 2x this (14 -> 28x28).
    _C.MODEL.ROI_MULTI_MASK_HEAD.POOLER_RESOLUTION = 14
    # Sampling ratio of ROIAlign; 0 = adaptive.
    _C.MODEL.ROI_MULTI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
    # Pooler type: "ROIAlignV2" (aligned), "ROIAlign" or "ROIPool".
    _C.MODEL.ROI_MULTI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
    # True: one mask per name for all classes; False: one mask per name and class.
    _C.MODEL.ROI_MULTI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
    # How many of the NUM_CONV convs all masks share. -1 = all of them: one shared trunk and a shared
    # deconv, with a 1x1 predictor per mask (the cheap default). 0 = a separate tower per mask
    # (ORCNN-style: own convs, deconv and predictor). 0 < S < NUM_CONV: S shared convs, then a tower
    # per mask with the remaining convs and its own deconv. Must be -1 or in [0, NUM_CONV].
    _C.MODEL.ROI_MULTI_MASK_HEAD.SHARED_CONVS = -1
    # Loss weight of each mask, in MASK_NAMES order; [] = 1.0 for every mask, else NUM_MASK floats.
    _C.MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS = []
    # Mask name also written to `pred_masks` and read as `gt_masks`, so stock detectron2 tools
    # (COCOEvaluator, Visualizer) keep working; "" = the first of MASK_NAMES.
    _C.MODEL.ROI_MULTI_MASK_HEAD.PRIMARY = ""
    # Relation losses between masks of the same ROI, on the foreground ROIs' predicted probabilities
    # (no ground truth needed). Entries: ["containment", A, B, weight] (A inside B) and
    # ["difference", C, B, A, weight] (C = B - A), e.g. [["containment", "visible", "amodal", 0.1]].
    # [] = none. See multimask/modeling/relations.py.
    _C.MODEL.ROI_MULTI_MASK_HEAD.RELATIONS = []
    # Feature flow between the masks' branches: [source, target] pairs, e.g. [["visible", "amodal"]];
    # the source tower's last conv features are concatenated to the target tower's input. Needs
    # SHARED_CONVS in [0, NUM_CONV - 1]. [] = none. See multimask/modeling/conv_head.py.
    _C.MODEL.ROI_MULTI_MASK_HEAD.FLOW = []
    # PANet's fully-connected fusion for these mask names (e.g. ["amodal"]): a global FC branch from
    # the mask's tower adds a class-agnostic logit map, so each pixel sees the whole ROI. Needs
    # SHARED_CONVS in [0, NUM_CONV - 1]. [] = none. See multimask/modeling/conv_head.py.
    _C.MODEL.ROI_MULTI_MASK_HEAD.FC_FUSION = []
    # Channels of the fusion's conv, whose S x S map the FC layer reads; 0 = CONV_DIM / 2 (PANet).
    _C.MODEL.ROI_MULTI_MASK_HEAD.FC_FUSION_DIM = 0
    # Constraints enforced on the predicted probabilities at inference: ["contains", OUTER, INNER]
    # (OUTER = max(OUTER, INNER)) and ["difference", C, B, A] (C = clamp(B - A, 0)), applied in order.
    # [] = none. See multimask/modeling/constraints.py.
    _C.MODEL.ROI_MULTI_MASK_HEAD.CONSTRAINTS = []
    # Loss weight of the hidden part of an occluded object: entries [WHOLE, VISIBLE, WEIGHT], e.g.
    # [["amodal", "visible", 2.0]]: in the amodal loss, the pixels of the amodal target outside the
    # visible target (of ROIs where both are annotated) weigh 2.0, the others 1.0. [] = none.
    _C.MODEL.ROI_MULTI_MASK_HEAD.HIDDEN_WEIGHTS = []
    # Mask Scoring R-CNN: a MaskIoU branch predicts each scored mask's IoU with its ground truth, and
    # the detection scores are multiplied by it at inference. See multimask/modeling/maskiou.py.
    _C.MODEL.ROI_MULTI_MASK_HEAD.MASKIOU_ON = False
    # Weight of loss_maskiou.
    _C.MODEL.ROI_MULTI_MASK_HEAD.MASKIOU_WEIGHT = 1.0
    # Names of the masks the MaskIoU branch scores (the score is multiplied by their mean predicted
    # IoU); [] = the PRIMARY mask.
    _C.MODEL.ROI_MULTI_MASK_HEAD.MASKIOU_MASKS = []

    _C.MULTIMASK = CN()
    # Occlusion rate from which (>=) an instance counts in the `segm_<name>_occluded` subset
    # (multimask's own; every unmatched detection a false positive). The rate is the annotation's
    # `occlude_rate`, else 1 - area(visible) / area (see MULTIMASK.OCCLUSION_MASKS).
    _C.MULTIMASK.OCCLUDED_THRESHOLD = 0.1
    # The VRSP / AISFormer / MAS-Net protocols: per t in [0, 1], `segm_<name>_occ<t>` (objects
    # occluded >= t, the forks' rule for unmatched detections) and `segm_<name>_occ<t>_strict`
    # (the same objects, every unmatched detection a false positive). [] = none.
    _C.MULTIMASK.OCCLUSION_THRESHOLDS = [0.15, 0.25, 0.4]
    # [whole, visible] or [whole, visible, occluded] mask names: the occlusion rate of an annotation
    # without `occlude_rate` is 1 - area(visible) / area(whole), a detection's comes from its
    # predicted whole and visible masks; the occluded-region mask (default: the one named
    # `occluded`, if predicted) gets UOAIS's key `segm_<occluded>_uoais`.
    _C.MULTIMASK.OCCLUSION_MASKS = ["amodal", "visible"]
    # Boxes the evaluation predicts masks for: "" = the model's own detections; "gt" = every
    # non-crowd ground-truth object of the test set (its class, score 1.0), which adds the
    # completion protocol's miou_<name> and miou_<whole>_occ keys; or the path of a COCO detection
    # results JSON (image_id, category_id in the dataset's ids, bbox XYWH, score) of another model.
    _C.MULTIMASK.EVAL_BOXES = ""
    # True: every evaluation key is scored class-agnostically (all objects and detections one
    # class, SAMEO's protocol); False: per class, as COCO.
    _C.MULTIMASK.CLASS_AGNOSTIC_EVAL = False
    # Several training datasets whose classes differ: True = every category of every train and
    # test dataset becomes the one class "object" (NUM_CLASSES 1), and evaluation is class-agnostic.
    # Exclusive with CLASS_UNION. False = the datasets must have the same classes.
    _C.MULTIMASK.CLASS_AGNOSTIC_TRAIN = False
    # True = the training classes are the union of the DATASETS.TRAIN lists, matched by name (the
    # first dataset's list, then each later one's new names); every dataset's ids are remapped to
    # it, each test set's classes must be in it. NUM_CLASSES must be its length.
    _C.MULTIMASK.CLASS_UNION = False
    # Sampling weights of the DATASETS.TRAIN datasets: [] = each in proportion to its size; else
    # one weight > 0 per dataset, dataset i giving the share w_i / sum(w) of the sampled images
    # (detectron2's RepeatFactorTrainingSampler; needs DATALOADER.SAMPLER_TRAIN TrainingSampler).
    _C.MULTIMASK.DATASET_WEIGHTS = []
    # True = the evaluation adds the key "order": uoais-v2's occlusion-order accuracy OOACC of the
    # matched predictions (i occludes j when IoU(visible_i, occluded_j) > 0.1, pairwise), with its
    # counts. Needs the predicted whole and visible masks (OCCLUSION_MASKS). See
    # multimask/evaluation/occlusion_order.py.
    _C.MULTIMASK.ORDER_EVAL = False
    # Detections scored below this are left out of ORDER_EVAL, as uoais-v2's evaluation runs its
    # predictor with ROI_HEADS.SCORE_THRESH_TEST 0.5.
    _C.MULTIMASK.ORDER_SCORE_THRESHOLD = 0.5
    # The ground-truth order of ORDER_EVAL: "auto" = the dataset's own pairwise order where an
    # image has one (COCOA's depth_constraint, SynTable's order matrices, an `occludes` key: see
    # multimask/data/datasets/order_field.py), else built from the masks as uoais-v2 does;
    # "masks" = from the masks everywhere (uoais-v2's numbers, also on SynTable).
    _C.MULTIMASK.ORDER_GT = "auto"
    # Python modules imported before the model and datasets are built (by train_net.py, or by
    # get_multimask_cfg), e.g. ["my_pkg.heads"]: they register heads, ROI heads or datasets that the config
    # then selects by name. A module's optional `add_config(cfg)` is called before the YAML is merged.
    _C.MULTIMASK.CUSTOM_IMPORTS = []
    # False: a module of CUSTOM_IMPORTS that fails to import is an ImportError; True: a warning.
    _C.MULTIMASK.ALLOW_FAILED_IMPORTS = False
    # Validation loss: every TEST.EVAL_PERIOD iterations, the training losses (val/loss_mask_<name>,
    # val/total_loss, ...) on at most this many images of DATASETS.TEST[0]; 0 = off.
    _C.MULTIMASK.VAL_LOSS_MAX_IMAGES = 64


# Keys of ROI_MULTI_MASK_HEAD that repeat ROI_MASK_HEAD's. One left at multimask's default takes
# ROI_MASK_HEAD's value where that differs from detectron2's default, so a config that _BASE_s a GN
# or class-agnostic Mask R-CNN builds the multi-mask head the same way.
INHERITED_MASK_HEAD_KEYS = (
    "NUM_CONV",
    "CONV_DIM",
    "NORM",
    "POOLER_RESOLUTION",
    "POOLER_SAMPLING_RATIO",
    "POOLER_TYPE",
    "CLS_AGNOSTIC_MASK",
)


def multi_mask_head_cfg(cfg: CN) -> CN:
    """
    ``cfg.MODEL.ROI_MULTI_MASK_HEAD`` as the head is built from it: a copy in which each key of
    ``INHERITED_MASK_HEAD_KEYS`` left at multimask's default takes ``MODEL.ROI_MASK_HEAD``'s value,
    when that one is not detectron2's default (logged once, naming both keys).
    """
    defaults = get_cfg()
    add_multimask_config(defaults)
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD.clone()
    head.defrost()
    for key in INHERITED_MASK_HEAD_KEYS:
        single = cfg.MODEL.ROI_MASK_HEAD.get(key)
        if head[key] == defaults.MODEL.ROI_MULTI_MASK_HEAD[key] and (
            single != defaults.MODEL.ROI_MASK_HEAD[key]
        ):
            log_first_n(
                logging.INFO,
                f"MODEL.ROI_MULTI_MASK_HEAD.{key} is left at its default: using "
                f"MODEL.ROI_MASK_HEAD.{key} = {single!r}",
                key="message",
                name=__name__,
            )
            head[key] = single
    return head


def primary_mask_name(cfg: CN) -> str:
    """The PRIMARY mask name of a config: ROI_MULTI_MASK_HEAD.PRIMARY, or the first of MASK_NAMES."""
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD
    return head.PRIMARY or head.MASK_NAMES[0]


def check_multimask_config(cfg: CN) -> None:
    """
    Raise ValueError with a clear message if the ROI_MULTI_MASK_HEAD keys are inconsistent, or if
    test-time augmentation (TEST.AUG.ENABLED), which would drop all masks but one, is on.

    Called when the head is built, so every entry point (train_net.py, DefaultPredictor, tests) is covered.
    """
    head = multi_mask_head_cfg(cfg)
    names: List[str] = list(head.MASK_NAMES)
    prefix = "MODEL.ROI_MULTI_MASK_HEAD"
    if head.NUM_MASK < 1:
        raise ValueError(f"{prefix}.NUM_MASK must be >= 1, got {head.NUM_MASK}.")
    if len(names) != head.NUM_MASK:
        raise ValueError(
            f"{prefix}.MASK_NAMES has {len(names)} names {names} but NUM_MASK is {head.NUM_MASK}; "
            "they must match."
        )
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"{prefix}.MASK_NAMES has duplicate names {dups}: {names}.")
    bad = [n for n in names if not isinstance(n, str) or not n.isidentifier()]
    if bad:
        raise ValueError(
            f"{prefix}.MASK_NAMES entries must be identifiers (used in loss and metric names), got {bad}."
        )
    if head.SHARED_CONVS < -1 or head.SHARED_CONVS > head.NUM_CONV:
        raise ValueError(
            f"{prefix}.SHARED_CONVS must be -1 (all shared) or in [0, NUM_CONV={head.NUM_CONV}], "
            f"got {head.SHARED_CONVS}."
        )
    if len(head.LOSS_WEIGHTS) not in (0, head.NUM_MASK):
        raise ValueError(
            f"{prefix}.LOSS_WEIGHTS must be [] or have NUM_MASK={head.NUM_MASK} entries (one per name "
            f"in {names}), got {list(head.LOSS_WEIGHTS)}."
        )
    if head.PRIMARY and head.PRIMARY not in names:
        raise ValueError(f"{prefix}.PRIMARY={head.PRIMARY!r} is not one of MASK_NAMES {names}.")
    if cfg.TEST.AUG.ENABLED:
        # GeneralizedRCNNWithTTA merges the augmented predictions of pred_masks only: it would
        # return instances without pred_multimasks
        raise ValueError(
            "TEST.AUG.ENABLED: test-time augmentation (detectron2's GeneralizedRCNNWithTTA) merges "
            "pred_masks only and would drop pred_multimasks; multimask does not support it. Set "
            "TEST.AUG.ENABLED False."
        )
    # imported here: multimask.modeling imports this module
    from .modeling.mask_loss import parse_hidden_weights
    from .modeling.relations import parse_relations

    parse_relations(head.RELATIONS, names)
    parse_hidden_weights(head.HIDDEN_WEIGHTS, names)


def _decode_opt(value: Any) -> Any:
    """A command-line value as yacs's merge_from_list reads it: a Python literal, else the string."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def read_custom_imports(config_file: str = "", opts: Sequence[str] = ()) -> Tuple[List[str], bool]:
    """
    ``MULTIMASK.CUSTOM_IMPORTS`` and ``ALLOW_FAILED_IMPORTS`` of a YAML file (with its ``_BASE_`` chain)
    and of command-line opts, read without merging them into a config, so that the modules can add
    their own keys before the file is merged.

    Args:
        config_file: a YAML config path, or "" for none.
        opts: ``KEY VALUE`` pairs as given to ``merge_from_list``; they override the file.

    Returns:
        The module names (in order, without repeats) and the ALLOW_FAILED_IMPORTS flag.
    """
    section = {}
    if config_file:
        section = CN.load_yaml_with_base(config_file, allow_unsafe=True).get("MULTIMASK") or {}
    names = section.get("CUSTOM_IMPORTS") or []
    allow = section.get("ALLOW_FAILED_IMPORTS", False)
    for key, value in zip(opts[0::2], opts[1::2]):
        if key == "MULTIMASK.CUSTOM_IMPORTS":
            names = _decode_opt(value)
        elif key == "MULTIMASK.ALLOW_FAILED_IMPORTS":
            allow = _decode_opt(value)
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(
            f"MULTIMASK.CUSTOM_IMPORTS must be a list of module names, got {names!r}"
            + (f" (in {config_file} or its _BASE_ files)" if config_file else "")
        )
    return list(dict.fromkeys(names)), bool(allow)


def import_modules(
    names: Sequence[str], allow_failed: bool = False, key: str = "MULTIMASK.CUSTOM_IMPORTS"
) -> List[ModuleType]:
    """
    Import modules by name, with errors that name the module and the config key.

    Args:
        names: module names, e.g. ["my_pkg.heads"].
        allow_failed: log a warning for a module that fails to import instead of raising.
        key: the config key the names come from, quoted in messages.

    Returns:
        The imported modules, in order (failed ones left out).

    Raises:
        ImportError: a module failed to import (whatever it raised) and allow_failed is False.
    """
    modules = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{key} entries must be module names (str), got {name!r}")
        try:
            modules.append(importlib.import_module(name))
        except Exception as e:
            # a module may fail with any error while it runs, not only ImportError
            msg = f"{key}: cannot import module '{name}': {type(e).__name__}: {e}"
            if allow_failed:
                logger.warning(f"{msg}. Skipped, as failed imports are allowed.")
                continue
            raise ImportError(
                f"{msg}. Check that it is installed or on PYTHONPATH, or allow failed imports "
                "(MULTIMASK.ALLOW_FAILED_IMPORTS True / custom_imports.allow_failed=True) to skip it.",
                name=name,
            ) from e
        logger.info(f"Imported custom module '{name}' ({key})")
    return modules


def import_custom_modules(cfg: Any) -> List[ModuleType]:
    """
    Import the custom modules a config names: ``MULTIMASK.CUSTOM_IMPORTS`` of a CfgNode, or the top-level
    ``custom_imports`` of a LazyConfig (``dict(modules=[...], allow_failed=False)`` or a plain list).

    Call it before building a model or dataset from a config that was not made by ``get_multimask_cfg``
    (e.g. before ``DefaultPredictor(cfg)``). Importing twice is harmless (Python caches modules); the
    modules' ``add_config`` is not called here, since the config is already merged.

    Returns:
        The imported modules.
    """
    if isinstance(cfg, CN):
        mm = cfg.MULTIMASK
        return import_modules(list(mm.CUSTOM_IMPORTS), bool(mm.ALLOW_FAILED_IMPORTS))
    spec = cfg.get("custom_imports", None) or []
    if hasattr(spec, "keys"):
        unknown = set(spec.keys()) - {"modules", "allow_failed"}
        if unknown:
            raise ValueError(
                f"custom_imports has unknown keys {sorted(unknown)}; use modules, allow_failed"
            )
        return import_modules(
            list(spec.get("modules", []) or []),
            bool(spec.get("allow_failed", False)),
            key="custom_imports.modules",
        )
    return import_modules(list(spec), key="custom_imports")


def fall_back_to_cpu(cfg: CN) -> None:
    """
    Set ``MODEL.DEVICE`` to "cpu", with a warning, when it names CUDA and CUDA is not available:
    detectron2's default device is cuda, and it would fail deep inside torch ("Found no NVIDIA
    driver"). Every entry point (train_net.py, the demo and the tools) calls it on an unfrozen cfg.
    """
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available: using cpu.")
        cfg.MODEL.DEVICE = "cpu"


def get_multimask_cfg(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """
    detectron2's ``get_cfg()`` with multimask's keys, the custom modules imported, then the file and opts
    merged: what ``train_net.py``, ``demo/demo.py`` and the tools run. Order:

    1. ``add_multimask_config``;
    2. read ``MULTIMASK.CUSTOM_IMPORTS`` from the file (``_BASE_`` included) and opts, import the
       modules, and call each one's ``add_config(cfg)`` if it defines one, so the file may set its keys;
    3. ``merge_from_file(config_file)``, ``merge_from_list(opts)``.

    Args:
        config_file: a YAML config, or "" for the defaults.
        opts: ``KEY VALUE`` overrides.

    Returns:
        The config, not frozen.
    """
    cfg = get_cfg()
    add_multimask_config(cfg)
    names, allow_failed = read_custom_imports(config_file, opts)
    for module in import_modules(names, allow_failed):
        add_config = getattr(module, "add_config", None)
        if callable(add_config):
            add_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg
