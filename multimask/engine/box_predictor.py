"""``MultiMaskBoxPredictor``: detectron2's DefaultPredictor for boxes you already have."""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances

from ..evaluation.given_boxes import GIVEN_INSTANCES, make_given_instances

__all__ = ["MultiMaskBoxPredictor"]


class MultiMaskBoxPredictor(DefaultPredictor):
    """
    Predict the K masks of a multi-mask model for given boxes (another detector's, a user's),
    with ``DefaultPredictor``'s model, weights (``MODEL.WEIGHTS``) and preprocessing (BGR input
    converted to ``INPUT.FORMAT``, ``ResizeShortestEdge`` to ``INPUT.{MIN,MAX}_SIZE_TEST``). The
    model's box head does not run: the boxes go to the mask head through
    ``GeneralizedRCNN.inference(..., detected_instances=...)``.

    Example::

        predictor = MultiMaskBoxPredictor(cfg)
        out = predictor(bgr_image, boxes=[[10, 20, 80, 90]], classes=[2], scores=[0.9])
        out["instances"].pred_multimasks      # (1, K, H, W) bool
        outs = predictor.predict_batch([img_a, img_b], [boxes_a, boxes_b], [classes_a, classes_b])

    Each output has exactly one prediction per given box, in order: `pred_boxes` (the given XYXY
    boxes), `pred_classes`, `scores` (given, else 1.0; a MaskIoU branch does not rescore them),
    `pred_multimasks` (N, K, H, W) and `pred_masks` (N, H, W, the PRIMARY mask), at the original
    image size. Zero boxes give zero instances.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg: a multimask config (``add_multimask_config``) with ``MODEL.WEIGHTS``.
        """
        super().__init__(cfg)
        roi_heads = self.model.roi_heads
        self.num_classes = int(roi_heads.num_classes)
        mask_head = getattr(roi_heads, "mask_head", None)
        if mask_head is None or not hasattr(mask_head, "mask_names"):
            raise ValueError(
                "MultiMaskBoxPredictor needs a multi-mask head (MODEL.MASK_ON True, ROI_HEADS.NAME "
                "MultiMaskROIHeads)"
            )
        # one mask channel: the head needs no class (class-agnostic, or a single class)
        self.class_agnostic = int(mask_head.num_mask_channels) == 1
        self.mask_names: List[str] = list(mask_head.mask_names)

    def __call__(
        self, original_image: np.ndarray, boxes: Any, classes: Any = None, scores: Any = None
    ) -> Dict[str, Instances]:
        """
        Args:
            original_image: (H, W, 3) uint8, BGR (as cv2 reads it).
            boxes: (N, 4) XYXY boxes in image coordinates (list, numpy array or tensor), inside
                [0, W] x [0, H], finite, with x1 > x0 and y1 > y0.
            classes: N contiguous class ids in [0, NUM_CLASSES); may be None only for a
                class-agnostic mask head (then `pred_classes` is 0).
            scores: N scores, or None (1.0 each).

        Returns:
            {"instances": Instances} as described in the class docstring.

        Raises:
            ValueError: bad boxes, classes or scores, naming the box.
        """
        return self.predict_batch(
            [original_image],
            [boxes],
            None if classes is None else [classes],
            None if scores is None else [scores],
        )[0]

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[Any],
        classes: Optional[Sequence[Any]] = None,
        scores: Optional[Sequence[Any]] = None,
    ) -> List[Dict[str, Instances]]:
        """
        Several images in one forward pass.

        Args:
            images: BGR images, as for ``__call__`` (any sizes).
            boxes: per image, its (N_i, 4) XYXY boxes.
            classes: per image, its N_i classes; None (or a None entry) as for ``__call__``.
            scores: per image, its N_i scores; None (or a None entry) as for ``__call__``.

        Returns:
            per image, {"instances": Instances}, in order.
        """
        n = len(images)
        for what, values in (("boxes", boxes), ("classes", classes), ("scores", scores)):
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} entries of {what} for {n} images")
        inputs = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image {i}: expected (H, W, 3) BGR, got shape {image.shape}")
            where = f"image {i}: " if n > 1 else ""
            given = make_given_instances(
                image.shape[:2],
                boxes[i],
                None if classes is None else classes[i],
                None if scores is None else scores[i],
                num_classes=self.num_classes,
                class_agnostic=self.class_agnostic,
                where=where,
            )
            inputs.append(self._input(image, given))
        with torch.no_grad():
            return self.model(inputs)

    def _input(self, original_image: np.ndarray, given: Instances) -> Dict[str, Any]:
        """The model input of one image, preprocessed as in ``DefaultPredictor.__call__``."""
        if self.input_format == "RGB":
            # whether the model expects BGR inputs or RGB
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        return {"image": image, "height": height, "width": width, GIVEN_INSTANCES: given}
