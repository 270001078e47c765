"""Config keys of multimask: ``add_multimask_config`` and the checks run on a merged config."""
from typing import List

from detectron2.config import CfgNode as CN


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

    _C.MULTIMASK = CN()
    # Minimum occlusion rate (1 - visible area / amodal area, or the dataset's own `occlude_rate`) of an
    # instance to count in the `segm_<name>_occluded` evaluation subset.
    _C.MULTIMASK.OCCLUDED_THRESHOLD = 0.1


def primary_mask_name(cfg: CN) -> str:
    """The PRIMARY mask name of a config: ROI_MULTI_MASK_HEAD.PRIMARY, or the first of MASK_NAMES."""
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD
    return head.PRIMARY or head.MASK_NAMES[0]


def check_multimask_config(cfg: CN) -> None:
    """
    Raise ValueError with a clear message if the ROI_MULTI_MASK_HEAD keys are inconsistent.

    Called when the head is built, so every entry point (train_net.py, DefaultPredictor, tests) is covered.
    """
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD
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
