"""
``MultiMaskVisualizer``: draw the K named masks of every instance, each name in its own style.

One instance keeps one color for all its masks; the mask name is told by the style:

* ``outline``: a solid contour (default of ``amodal``: the whole object, occluded parts included);
* ``fill``: a translucent fill with its edge, as detectron2 draws masks (default of ``visible``);
* ``hatch``: diagonal stripes inside the mask and a thin contour (default of ``occluded``);
* ``dashed``: a dashed contour only.

``draw_panels`` renders one panel per mask name side by side instead, each as a plain fill.
Class labels, scores and boxes are drawn as detectron2's ``Visualizer`` draws them.
"""

import logging
from typing import List, Mapping, Optional, Sequence

import matplotlib as mpl
import matplotlib.colors as mplc
import numpy as np
import torch

from detectron2.structures import BoxMode, Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import (
    ColorMode,
    GenericMask,
    VisImage,
    Visualizer,
    _create_text_labels,
)

from ..structures import segmentation_to_bitmask

__all__ = [
    "MultiMaskVisualizer",
    "MASK_STYLES",
    "DEFAULT_MASK_STYLES",
    "draw_panels",
    "auto_scale",
]

logger = logging.getLogger(__name__)

MASK_STYLES = ("fill", "hatch", "dashed", "outline")
# Styles of the mask names of the builtin datasets; other names take MASK_STYLES in turn.
DEFAULT_MASK_STYLES = {
    "amodal": "outline",
    "visible": "fill",
    "occluded": "hatch",
    "invisible": "hatch",
}
# Drawing order of the styles: fills at the bottom, contours on top.
_STYLE_ORDER = {style: i for i, style in enumerate(MASK_STYLES)}
_STYLE_WORDS = {"fill": "fill", "hatch": "hatched", "dashed": "dashed", "outline": "outline"}


def auto_scale(height: int, width: int, target: int = 512) -> float:
    """
    The drawing scale that brings an image's longer side up to `target` px (never below 1): labels
    have a minimum font size, so on small images (e.g. 128 px) they would cover the objects at
    scale 1.
    """
    return max(1.0, target / max(height, width))


class MultiMaskVisualizer(Visualizer):
    """
    detectron2's Visualizer that also draws ``pred_multimasks`` (predictions), the ``multimask``
    dicts of dataset annotations and ``gt_multimask`` (mapped training inputs).
    """

    def __init__(
        self,
        img_rgb: np.ndarray,
        metadata=None,
        scale: float = 1.0,
        instance_mode: ColorMode = ColorMode.IMAGE,
        *,
        pred_mask_names: Optional[Sequence[str]] = None,
        mask_styles: Optional[Mapping[str, str]] = None,
        legend: bool = True,
    ):
        """
        Args:
            img_rgb: the image, shape (H, W, 3), RGB in [0, 255].
            metadata: dataset metadata (``thing_classes``, ``thing_colors``, ``mask_names``).
            scale: output size relative to the image.
            instance_mode: ColorMode.IMAGE (one color per instance), SEGMENTATION (class colors from
                ``thing_colors``) or IMAGE_BW (gray outside the masks).
            pred_mask_names: names of the K channels of ``pred_multimasks``, in order (the config's
                MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES); default: ``metadata.mask_names``.
            mask_styles: mask name -> one of MASK_STYLES, overriding DEFAULT_MASK_STYLES.
            legend: write "name: style" of the drawn masks in the bottom-left corner.
        """
        super().__init__(img_rgb, metadata, scale=scale, instance_mode=instance_mode)
        names = (
            pred_mask_names
            if pred_mask_names is not None
            else self.metadata.get("mask_names", None)
        )
        self.pred_mask_names = list(names) if names is not None else None
        self.mask_styles = dict(mask_styles or {})
        bad = {n: s for n, s in self.mask_styles.items() if s not in MASK_STYLES}
        if bad:
            raise ValueError(f"unknown mask styles {bad}; choose from {list(MASK_STYLES)}")
        self.legend = legend
        # names of the masks being drawn, which give unknown names a style by position
        self._available_names: List[str] = []

    # ------------------------------------------------------------------ public drawing
    def draw_instance_predictions(
        self, predictions: Instances, mask_names: Optional[Sequence[str]] = None
    ) -> VisImage:
        """
        Draw boxes, "class score%" labels and the chosen masks of every prediction.

        Args:
            predictions: model output at this image's size, with `pred_multimasks` (N, K, H, W)
                bool and optionally `pred_boxes`, `scores`, `pred_classes`. Without
                `pred_multimasks` it is drawn as detectron2 draws `pred_masks`.
            mask_names: which of ``pred_mask_names`` to draw; None = all.
        """
        if not predictions.has("pred_multimasks"):
            return super().draw_instance_predictions(predictions)
        masks = predictions.pred_multimasks
        names = self.pred_mask_names
        if names is None:
            raise ValueError(
                "pred_multimasks has no names: pass pred_mask_names (cfg.MODEL.ROI_MULTI_MASK_HEAD."
                "MASK_NAMES) or metadata with mask_names to MultiMaskVisualizer"
            )
        if masks.dim() != 4 or masks.shape[1] != len(names):
            raise ValueError(
                f"pred_multimasks has shape {tuple(masks.shape)}, expected (N, {len(names)}, H, W) "
                f"for mask names {names}"
            )
        if tuple(masks.shape[2:]) != (self.output.height, self.output.width):
            raise ValueError(
                f"pred_multimasks are {tuple(masks.shape[2:])}, the image is "
                f"{(self.output.height, self.output.width)}: draw outputs pasted at the image size "
                "(the model's default output; see multimask_postprocess)"
            )
        masks = (masks >= 0.5 if masks.dtype != torch.bool else masks).cpu().numpy()
        classes = predictions.pred_classes.tolist() if predictions.has("pred_classes") else None
        scores = predictions.scores if predictions.has("scores") else None
        labels = _create_text_labels(classes, scores, self.metadata.get("thing_classes", None))
        boxes = predictions.pred_boxes if predictions.has("pred_boxes") else None
        return self.overlay_multimasks(
            {n: masks[:, k] for k, n in enumerate(names)},
            mask_names=mask_names,
            boxes=boxes,
            labels=labels,
            classes=classes,
        )

    def draw_dataset_dict(self, dic: dict, mask_names: Optional[Sequence[str]] = None) -> VisImage:
        """
        Draw the ground truth of one dataset dict: boxes, class labels and each annotation's
        ``multimask`` masks (polygons or RLE; masks that are None, i.e. not annotated, are not
        drawn).
        A dict whose annotations have no ``multimask`` is drawn as detectron2 draws it.

        Args:
            dic: a standard dataset dict with ``annotations``.
            mask_names: names to draw; None = those of ``metadata.mask_names`` and every other name
                found.
        """
        annos = dic.get("annotations") or []
        if not any("multimask" in a for a in annos):
            return super().draw_dataset_dict(dic)
        h, w = self.output.height, self.output.width
        where = f"{dic.get('file_name', '<no file_name>')} (image_id {dic.get('image_id')})"
        if (dic.get("height", h), dic.get("width", w)) != (h, w):
            raise ValueError(
                f"{where}: the dict says {dic['height']}x{dic['width']}, the image is {h}x{w}"
            )
        found = list(self.metadata.get("mask_names", None) or [])
        for a in annos:
            found += [n for n in (a.get("multimask") or {}) if n not in found]
        masks = {n: np.zeros((len(annos), h, w), dtype=bool) for n in found}
        annotated = {n: np.zeros(len(annos), dtype=bool) for n in found}
        for i, a in enumerate(annos):
            for name, segm in (a.get("multimask") or {}).items():
                if segm is None:
                    continue
                try:
                    masks[name][i] = segmentation_to_bitmask(segm, h, w)
                except ValueError as e:
                    raise ValueError(
                        f"{where}, annotation {i} (id {a.get('id')}), mask '{name}': {e}"
                    ) from e
                annotated[name][i] = True
        boxes = np.array(
            [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
        ).reshape(-1, 4)
        classes = [a["category_id"] for a in annos]
        labels = _create_text_labels(
            classes,
            None,
            self.metadata.get("thing_classes", None),
            [a.get("iscrowd", 0) for a in annos],
        )
        return self.overlay_multimasks(
            masks,
            mask_names=mask_names,
            boxes=boxes,
            labels=labels,
            classes=classes,
            annotated=annotated,
        )

    def draw_gt_instances(
        self, instances: Instances, mask_names: Optional[Sequence[str]] = None
    ) -> VisImage:
        """
        Draw mapped training targets (the dataloader's view): `gt_boxes`, `gt_classes` and
        `gt_multimask` (MultiMasks); masks that are not annotated are not drawn.
        """
        mm = instances.gt_multimask
        data = mm.tensor.cpu().numpy()
        annotated = mm.annotated.cpu().numpy()
        classes = instances.gt_classes.tolist() if instances.has("gt_classes") else None
        labels = _create_text_labels(classes, None, self.metadata.get("thing_classes", None))
        return self.overlay_multimasks(
            {n: data[:, k] for k, n in enumerate(mm.mask_names)},
            mask_names=mask_names,
            boxes=instances.gt_boxes if instances.has("gt_boxes") else None,
            labels=labels,
            classes=classes,
            annotated={n: annotated[:, k] for k, n in enumerate(mm.mask_names)},
        )

    def overlay_multimasks(
        self,
        masks: Mapping[str, np.ndarray],
        *,
        mask_names: Optional[Sequence[str]] = None,
        boxes=None,
        labels: Optional[List[str]] = None,
        classes: Optional[List[int]] = None,
        annotated: Optional[Mapping[str, np.ndarray]] = None,
    ) -> VisImage:
        """
        Draw N instances with several named masks each.

        Args:
            masks: mask name -> array of shape (N, H, W), bool, at the image size.
            mask_names: the names to draw, in any order; None = all of ``masks``.
            boxes: Boxes or array (N, 4) XYXY_ABS; labels are drawn at their corners (without
                boxes, no labels).
            labels: N strings.
            classes: N class ids, for class colors in ColorMode.SEGMENTATION.
            annotated: mask name -> (N,) bool; masks not annotated are skipped.
        """
        self._available_names = list(masks)
        names = list(masks) if mask_names is None else list(mask_names)
        unknown = [n for n in names if n not in masks]
        if unknown:
            raise ValueError(f"mask names {unknown} are not among the available {list(masks)}")
        n = len(next(iter(masks.values()))) if masks else 0
        colors = self._instance_colors(classes, n)
        if self._instance_mode == ColorMode.IMAGE_BW and n > 0 and names:
            keep = np.any([masks[name].any(axis=0) for name in names], axis=0)
            self.output.reset_image(self._create_grayscale_image(keep))

        order = sorted(names, key=lambda name: _STYLE_ORDER[self.style_of(name)])
        # Large instances first, as detectron2 does, so small ones are not buried under them.
        areas = [-sum(int(masks[name][i].sum()) for name in names) for i in range(n)]
        # Style by style over all instances: an occluded part is then hatched above the fill of the
        # object that hides it, and amodal outlines run over both.
        for name in order:
            for i in np.argsort(areas, kind="stable").tolist():
                if annotated is not None and not annotated[name][i]:
                    continue
                if masks[name][i].any():
                    self._draw_styled_mask(masks[name][i], colors[i], self.style_of(name))
        if boxes is not None and n > 0:
            self.overlay_instances(boxes=boxes, labels=labels, assigned_colors=colors)
        if self.legend and names:
            self._draw_legend(names)
        return self.output

    def style_of(self, name: str) -> str:
        """A mask name's style: from ``mask_styles``, DEFAULT_MASK_STYLES, else by position."""
        if name in self.mask_styles:
            return self.mask_styles[name]
        if name in DEFAULT_MASK_STYLES:
            return DEFAULT_MASK_STYLES[name]
        order = self.pred_mask_names or self._available_names
        pos = order.index(name) if name in order else 0
        return MASK_STYLES[pos % len(MASK_STYLES)]

    # ------------------------------------------------------------------ internals
    def _instance_colors(self, classes: Optional[List[int]], n: int) -> List[tuple]:
        # Deterministic (no jitter): the same instance has the same color in every panel.
        thing_colors = self.metadata.get("thing_colors", None)
        if self._instance_mode == ColorMode.SEGMENTATION and thing_colors and classes is not None:
            return [tuple(c / 255 for c in thing_colors[k]) for k in classes]
        palette = colormap(rgb=True, maximum=1)
        return [tuple(palette[i % len(palette)]) for i in range(n)]

    def _line_width(self, factor: float = 1.0) -> float:
        return max(self._default_font_size / 6 * factor * self.output.scale, 1.0)

    def _draw_styled_mask(self, mask: np.ndarray, color: tuple, style: str) -> None:
        if style == "fill":
            self.draw_binary_mask(mask, color=color, alpha=0.5, area_threshold=0)
            return
        if style == "hatch":
            self._draw_stripes(mask, color)
        line = {
            "outline": dict(linewidth=self._line_width(1.5), linestyle="-"),
            "dashed": dict(linewidth=self._line_width(0.8), linestyle=(0, (3, 2))),
            "hatch": dict(linewidth=self._line_width(0.4), linestyle="-"),
        }[style]
        for segment in GenericMask(mask, self.output.height, self.output.width).polygons:
            patch = mpl.patches.Polygon(
                segment.reshape(-1, 2), fill=False, edgecolor=mplc.to_rgb(color), **line
            )
            self.output.ax.add_patch(patch)

    def _draw_stripes(self, mask: np.ndarray, color: tuple) -> None:
        # Stripes are drawn as an image overlay at pixel level: matplotlib's own hatching has a
        # period in points, which VisImage's figure makes too fine or too coarse with image size.
        h, w = mask.shape
        period = max(4, int(round(min(h, w) / 40)))
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = ((xx + yy) % period) < max(period // 2, 1)
        rgba = np.zeros((h, w, 4), dtype=np.float32)
        rgba[..., :3] = mplc.to_rgb(color)
        rgba[..., 3] = (mask & stripes).astype(np.float32) * 0.85
        self.output.ax.imshow(
            rgba, extent=(0, self.output.width, self.output.height, 0), interpolation="nearest"
        )

    def _draw_legend(self, names: Sequence[str]) -> None:
        text = "  ".join(f"{n}: {_STYLE_WORDS[self.style_of(n)]}" for n in names)
        font_size = self._default_font_size * 0.7
        # draw_text anchors the text's top; leave one line (in image pixels) above the bottom edge.
        y = self.output.height - font_size * 1.6 * self.output.dpi / 72
        self.draw_text(
            text, (2, max(y, 0)), font_size=font_size, color="w", horizontal_alignment="left"
        )


def draw_panels(
    img_rgb: np.ndarray,
    mask_names: Sequence[str],
    metadata=None,
    *,
    predictions: Optional[Instances] = None,
    dataset_dict: Optional[dict] = None,
    gt_instances: Optional[Instances] = None,
    pred_mask_names: Optional[Sequence[str]] = None,
    scale: float = 1.0,
    instance_mode: ColorMode = ColorMode.IMAGE,
) -> np.ndarray:
    """
    One panel per mask name, side by side, each showing that mask of every instance as a fill (with
    boxes and labels) and the name in its top-left corner. Give exactly one of `predictions`,
    `dataset_dict` or `gt_instances`.

    Args:
        img_rgb: the image, shape (H, W, 3), RGB.
        mask_names: the names, one panel each, left to right.
        metadata, pred_mask_names, scale, instance_mode: as for MultiMaskVisualizer.

    Returns:
        ndarray of shape (H', K * W' + 4 * (K - 1), 3), uint8 RGB, with H', W' the scaled size.
    """
    given = [x for x in (predictions, dataset_dict, gt_instances) if x is not None]
    if len(given) != 1:
        raise ValueError("draw_panels needs exactly one of predictions, dataset_dict, gt_instances")
    if len(mask_names) == 0:
        raise ValueError("draw_panels needs at least one mask name")
    panels = []
    for name in mask_names:
        vis = MultiMaskVisualizer(
            img_rgb,
            metadata,
            scale,
            instance_mode,
            pred_mask_names=pred_mask_names,
            mask_styles={name: "fill"},
            legend=False,
        )
        if predictions is not None:
            vis.draw_instance_predictions(predictions, mask_names=[name])
        elif dataset_dict is not None:
            vis.draw_dataset_dict(dataset_dict, mask_names=[name])
        else:
            vis.draw_gt_instances(gt_instances, mask_names=[name])
        vis.draw_text(name, (2, 2), color="w", horizontal_alignment="left")
        panels.append(vis.get_output().get_image())
    gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)
