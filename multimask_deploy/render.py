"""
Drawings of multi-mask predictions with opencv only (no matplotlib, no detectron2): the demo's
layout (boxes, "class score%" labels, each mask name in its style, a legend of the styles; one
overlay or one panel per name), drawn by cv2 rather than detectron2's Visualizer, so the pixels
differ from ``demo/demo.py``'s drawings.
"""

from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

__all__ = ["DEFAULT_MASK_STYLES", "MASK_STYLES", "draw_predictions", "style_of"]

# As multimask.utils.visualizer (tests/test_onnx_deploy.py checks they agree).
MASK_STYLES = ("fill", "hatch", "dashed", "outline")
DEFAULT_MASK_STYLES = {
    "amodal": "outline",
    "visible": "fill",
    "occluded": "hatch",
    "invisible": "hatch",
}
_WORDS = {"fill": "fill", "hatch": "hatched", "dashed": "dashed", "outline": "outline"}
# RGB, the first colors of detectron2's colormap
_PALETTE = np.array(
    [
        [0, 114, 189], [217, 83, 25], [237, 177, 32], [126, 47, 142], [119, 172, 48],
        [77, 190, 238], [162, 20, 47], [77, 77, 77], [153, 153, 153], [255, 0, 0],
        [255, 128, 0], [191, 191, 0], [0, 255, 0], [0, 0, 255], [170, 0, 255],
    ],
    dtype=np.uint8,
)  # fmt: skip


def style_of(name: str, names: Sequence[str]) -> str:
    """A mask name's style: DEFAULT_MASK_STYLES, else MASK_STYLES by its position in `names`."""
    if name in DEFAULT_MASK_STYLES:
        return DEFAULT_MASK_STYLES[name]
    return MASK_STYLES[list(names).index(name) % len(MASK_STYLES)]


def _draw_mask(canvas: np.ndarray, mask: np.ndarray, color, style: str, width: int) -> None:
    if style == "fill":
        canvas[mask] = (0.5 * canvas[mask] + 0.5 * np.asarray(color)).astype(np.uint8)
        return
    if style == "hatch":
        h, w = mask.shape
        period = max(4, int(round(min(h, w) / 40)))
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = mask & (((xx + yy) % period) < max(period // 2, 1))
        canvas[stripes] = (0.15 * canvas[stripes] + 0.85 * np.asarray(color)).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = {"outline": 2 * width, "dashed": width, "hatch": max(width // 2, 1)}[style]
    if style != "dashed":
        cv2.polylines(canvas, contours, True, tuple(int(c) for c in color), thickness)
        return
    for contour in contours:  # every other run of 6 contour points
        points = contour.reshape(-1, 2)
        for start in range(0, len(points), 12):
            segment = points[start : start + 6]
            if len(segment) > 1:
                cv2.polylines(canvas, [segment], False, tuple(int(c) for c in color), thickness)


def draw_predictions(
    image_rgb: np.ndarray,
    predictions,
    mask_names: Sequence[str],
    class_names: Optional[Sequence[str]] = None,
    scale: float = 1.0,
    panels: bool = False,
) -> np.ndarray:
    """
    Args:
        image_rgb: shape (H, W, 3), uint8 RGB.
        predictions: ``multimask_deploy.Predictions`` at (H, W).
        mask_names: the names to draw, a subset of ``predictions.mask_names``.
        class_names: contiguous class id -> name; None = ids.
        scale: drawing size relative to the image.
        panels: one panel per mask name side by side, not one overlay.

    Returns:
        the drawing, RGB uint8.
    """
    unknown = [n for n in mask_names if n not in predictions.mask_names]
    if unknown:
        raise ValueError(f"mask names {unknown} are not predicted ({predictions.mask_names})")
    if panels:
        return np.concatenate(
            [draw_predictions(image_rgb, predictions, [n], class_names, scale) for n in mask_names],
            axis=1,
        )
    h, w = image_rgb.shape[:2]
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    canvas = cv2.resize(image_rgb, size, interpolation=cv2.INTER_NEAREST) if scale != 1 else None
    canvas = canvas if canvas is not None else image_rgb.copy()
    width = max(int(round(min(size) / 200)), 1)
    order: Dict[str, int] = {s: i for i, s in enumerate(MASK_STYLES)}
    names: List[str] = sorted(mask_names, key=lambda n: order[style_of(n, predictions.mask_names)])
    for i in range(len(predictions)):
        color = _PALETTE[i % len(_PALETTE)]
        for name in names:
            mask = predictions.mask(name)[i]
            if scale != 1:
                mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            _draw_mask(canvas, mask, color, style_of(name, predictions.mask_names), width)
        x0, y0, x1, y1 = (predictions.boxes[i] * scale).round().astype(int).tolist()
        cv2.rectangle(canvas, (x0, y0), (x1, y1), tuple(int(c) for c in color), width)
        c = int(predictions.classes[i])
        label = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        text = f"{label} {predictions.scores[i] * 100:.0f}%"
        font = 0.3 + 0.05 * max(scale, 1.0)
        cv2.putText(canvas, text, (x0, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, font,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    legend = "  ".join(f"{n}: {_WORDS[style_of(n, predictions.mask_names)]}" for n in mask_names)
    cv2.putText(canvas, legend, (2, size[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3 + 0.05 * max(scale, 1),
                (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return canvas
