"""
``VisualizationDemo``: DefaultPredictor (or MultiMaskBoxPredictor, for given boxes) plus
MultiMaskVisualizer, on images and videos.
"""

import logging
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detectron2.engine.defaults import DefaultPredictor
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode

from multimask.data.model_classes import model_metadata
from multimask.engine import MultiMaskBoxPredictor
from multimask.utils import MultiMaskVisualizer, auto_scale, draw_panels

logger = logging.getLogger(__name__)


class VisualizationDemo:
    """Runs a multi-mask model on BGR images or video frames and draws the chosen mask names."""

    def __init__(
        self,
        cfg,
        instance_mode: ColorMode = ColorMode.IMAGE,
        mask_names: Optional[Sequence[str]] = None,
        panels: bool = False,
        scale: Optional[float] = None,
        given_boxes: bool = False,
    ):
        """
        Args:
            cfg: a config with ``add_multimask_config`` applied and MODEL.WEIGHTS set.
            instance_mode: detectron2's ColorMode for the drawings.
            mask_names: which of cfg MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES to draw; None = all.
            panels: draw one panel per mask name side by side instead of one overlay.
            scale: drawing size relative to the image; None = ``auto_scale`` (enlarges small
                images).
            given_boxes: predict masks for boxes given to ``predict`` (``MultiMaskBoxPredictor``)
                instead of the model's own detections.
        """
        self.pred_mask_names: List[str] = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
        self.mask_names = list(mask_names) if mask_names else list(self.pred_mask_names)
        unknown = [n for n in self.mask_names if n not in self.pred_mask_names]
        if unknown:
            raise ValueError(
                f"--masks {unknown} not predicted by this model, whose mask names are "
                f"{self.pred_mask_names} (MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)"
            )
        # the model's classes: one dataset's, or "object" / the union of several datasets'
        # (multimask/data/model_classes.py)
        self.metadata = model_metadata(cfg)
        self.cfg = cfg
        self.instance_mode = instance_mode
        self.panels = panels
        self.scale = scale
        self.predictor = MultiMaskBoxPredictor(cfg) if given_boxes else DefaultPredictor(cfg)

    def draw(self, image_rgb: np.ndarray, instances: Instances) -> np.ndarray:
        """
        Args:
            image_rgb: shape (H, W, 3), RGB.
            instances: predictions at (H, W), on the CPU.

        Returns:
            the drawing, RGB uint8.
        """
        scale = self.scale if self.scale is not None else auto_scale(*image_rgb.shape[:2])
        if self.panels:
            return draw_panels(
                image_rgb,
                self.mask_names,
                self.metadata,
                predictions=instances,
                pred_mask_names=self.pred_mask_names,
                scale=scale,
                instance_mode=self.instance_mode,
            )
        vis = MultiMaskVisualizer(
            image_rgb,
            self.metadata,
            scale=scale,
            instance_mode=self.instance_mode,
            pred_mask_names=self.pred_mask_names,
        )
        return vis.draw_instance_predictions(instances, mask_names=self.mask_names).get_image()

    def predict(self, image_bgr: np.ndarray, given: Optional[Instances] = None) -> Instances:
        """
        Args:
            image_bgr: shape (H, W, 3), uint8 BGR, as cv2 or detectron2's
                ``read_image(format="BGR")`` give it.
            given: with ``given_boxes``, the boxes (Instances with `pred_boxes` XYXY in image
                coordinates, `pred_classes`, `scores`, as ``records_to_given`` builds them).

        Returns:
            the predictions: Instances on the CPU, `pred_multimasks` (N, K, H, W) bool; for given
            boxes exactly one per box, in order.
        """
        if isinstance(self.predictor, MultiMaskBoxPredictor):
            if given is None:
                raise ValueError("this demo predicts masks for given boxes: pass given=")
            boxes, classes, scores = given.pred_boxes.tensor, given.pred_classes, given.scores
            out = self.predictor(image_bgr, boxes, classes, scores)
        elif given is not None:
            raise ValueError("given boxes need VisualizationDemo(..., given_boxes=True)")
        else:
            out = self.predictor(image_bgr)
        return out["instances"].to("cpu")

    def run_on_image(
        self, image_bgr: np.ndarray, given: Optional[Instances] = None
    ) -> Tuple[Instances, np.ndarray]:
        """
        Args:
            image_bgr, given: as for ``predict``.

        Returns:
            the predictions (as ``predict`` gives them) and the drawing (H', W', 3) RGB uint8.
        """
        instances = self.predict(image_bgr, given)
        return instances, self.draw(image_bgr[:, :, ::-1], instances)

    def run_on_video(
        self, video: cv2.VideoCapture, draw: bool = True
    ) -> Iterator[Tuple[Instances, Optional[np.ndarray]]]:
        """
        Yields, frame by frame, the predictions and the drawing (RGB uint8; None unless `draw`)
        of an opened video.
        """
        while video.isOpened():
            ok, frame = video.read()
            if not ok:
                break
            if draw:
                yield self.run_on_image(frame)
            else:
                yield self.predict(frame), None

