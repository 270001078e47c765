"""
``OnnxMultiMaskPredictor``: a multimask ONNX model (``tools/export_model.py --format onnx``) run in
onnxruntime, with ``DefaultPredictor``'s preprocessing and ``multimask_postprocess``'s pasting,
importing only onnxruntime, numpy and opencv.
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .paste import paste_masks
from .preprocess import preprocess

__all__ = [
    "FORMAT_VERSION",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "REQUIRED_METADATA",
    "OnnxMultiMaskPredictor",
    "Predictions",
]

# The graph's input / output names and metadata keys: multimask.utils.onnx_export imports and writes them.
FORMAT_VERSION = "multimask-onnx-1"
INPUT_NAMES = ("image", "image_size")
OUTPUT_NAMES = ("pred_boxes", "scores", "pred_classes", "pred_multimasks")
REQUIRED_METADATA = (
    "mask_names",
    "primary",
    "input_format",
    "min_size_test",
    "max_size_test",
    "score_thresh_test",
    "mask_threshold",
    "thing_classes",
    "dataset_ids",
)


class Predictions:
    """
    One image's detections at its own size, the fields of multimask's ``Instances`` as arrays.

    Attributes:
        image_size: (H, W).
        boxes: (N, 4) float32 XYXY; scores: (N,) float32; classes: (N,) int64.
        masks: (N, K, H, W) bool, K in ``mask_names`` order.
        raw_masks: (N, K, M, M) float32 probabilities in each box, before pasting.
    """

    def __init__(self, image_size, boxes, scores, classes, masks, raw_masks, mask_names):
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.boxes, self.scores, self.classes = boxes, scores, classes
        self.masks, self.raw_masks = masks, raw_masks
        self.mask_names: List[str] = list(mask_names)

    def __len__(self) -> int:
        return len(self.scores)

    def mask(self, name: str) -> np.ndarray:
        """(N, H, W) bool: the masks of one name."""
        return self.masks[:, self.mask_names.index(name)]


class OnnxMultiMaskPredictor:
    """
    Runs an exported multimask model on BGR images, as ``DefaultPredictor`` runs the eager one.

    Example::

        predictor = OnnxMultiMaskPredictor("export/model.onnx")
        pred = predictor(cv2.imread("image.jpg"))
        amodal = pred.mask("amodal")  # (N, H, W) bool
    """

    def __init__(
        self,
        model_path: str,
        providers: Optional[Sequence[str]] = None,
        num_threads: int = 0,
        confidence_threshold: Optional[float] = None,
    ):
        """
        Args:
            model_path: the .onnx file.
            providers: onnxruntime execution providers; None = ["CPUExecutionProvider"].
            num_threads: onnxruntime's intra-op threads; 0 = its default (all cores).
            confidence_threshold: keep detections scoring above it (as the demo's
                ``--confidence-threshold``, which sets SCORE_THRESH_TEST); None = every detection
                of the graph, which applied the exported model's SCORE_THRESH_TEST to the box
                scores (with MaskIoU, the scores it returns are then rescaled, as in eager
                inference). It cannot be lower than that; a higher one filters the returned
                (with MaskIoU: rescaled) scores.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not an ONNX model, or not one exported by multimask (names the problem).
        """
        import onnxruntime as ort

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"ONNX model {model_path} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        try:
            self.session = ort.InferenceSession(
                model_path, options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # onnxruntime raises its own InvalidProtobuf, Fail, ...
            raise ValueError(f"{model_path} is not a loadable ONNX model: {e}") from None
        self.meta = self._read_metadata(model_path)
        self.mask_names: List[str] = list(self.meta["mask_names"])
        self.primary_index = self.mask_names.index(self.meta["primary"])
        self.class_names: Optional[List[str]] = self.meta["thing_classes"]
        self.dataset_ids: Optional[List[int]] = self.meta["dataset_ids"]
        floor = float(self.meta["score_thresh_test"])
        if confidence_threshold is None:
            confidence_threshold = floor
        if confidence_threshold < floor:
            raise ValueError(
                f"confidence threshold {confidence_threshold} is below the exported model's "
                f"score threshold {floor} (MODEL.ROI_HEADS.SCORE_THRESH_TEST at export): detections "
                "under it are not in the graph; export again with a lower SCORE_THRESH_TEST"
            )
        self.confidence_threshold = float(confidence_threshold)
        # the graph filtered at `floor` already; filtering its (MaskIoU-rescaled) scores again
        # would drop detections eager inference keeps
        self._filter = self.confidence_threshold > floor

    def _read_metadata(self, path: str) -> Dict[str, Any]:
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if inputs != INPUT_NAMES or outputs != OUTPUT_NAMES:
            raise ValueError(
                f"{path} has inputs {list(inputs)} and outputs {list(outputs)}, not those of a "
                f"multimask export ({list(INPUT_NAMES)}, {list(OUTPUT_NAMES)}): export it with "
                "tools/export_model.py --format onnx"
            )
        props = self.session.get_modelmeta().custom_metadata_map
        version = props.get("multimask_format")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: metadata multimask_format is {version!r}, this predictor reads "
                f"{FORMAT_VERSION!r}: export the model again with this version of multimask"
            )
        missing = [k for k in REQUIRED_METADATA if k not in props]
        if missing:
            raise ValueError(f"{path}: metadata lacks {missing}; export the model again")
        try:
            meta = {k: json.loads(props[k]) for k in REQUIRED_METADATA}
        except ValueError as e:
            raise ValueError(f"{path}: unreadable metadata ({e}); export the model again") from None
        if meta["primary"] not in meta["mask_names"]:
            raise ValueError(f"{path}: primary {meta['primary']!r} not in {meta['mask_names']}")
        return meta

    def preprocess(self, image_bgr: np.ndarray) -> np.ndarray:
        """(3, h, w) float32: the model's input for a BGR uint8 image (see ``preprocess``)."""
        return preprocess(
            image_bgr,
            self.meta["input_format"],
            int(self.meta["min_size_test"]),
            int(self.meta["max_size_test"]),
        )

    def run(self, image: np.ndarray, image_size) -> Dict[str, np.ndarray]:
        """
        The graph's raw outputs (masks not pasted) for a preprocessed image.

        Args:
            image: shape (3, h, w) float32, from ``preprocess``.
            image_size: (H, W) of the original image.

        Returns:
            dict of OUTPUT_NAMES: boxes at (H, W), scores, classes, (N, K, M, M) probabilities.
        """
        size = np.asarray(image_size, dtype=np.int64).reshape(2)
        out = dict(zip(OUTPUT_NAMES, self.session.run(None, {"image": image, "image_size": size})))
        masks = out["pred_multimasks"]
        if masks.ndim != 4 or masks.shape[1] != len(self.mask_names):
            raise ValueError(
                f"the model returned masks of shape {masks.shape}, not (N, {len(self.mask_names)}"
                f", M, M) for its mask names {self.mask_names}: its metadata does not match it"
            )
        return out

    def __call__(self, image_bgr: np.ndarray) -> Predictions:
        """
        Args:
            image_bgr: shape (H, W, 3), uint8 BGR (as cv2.imread gives it).

        Returns:
            the detections scoring above ``confidence_threshold`` (all the graph's at the
            default), masks pasted at (H, W).
        """
        size = image_bgr.shape[:2]
        out = self.run(self.preprocess(image_bgr), size)
        keep = out["scores"] > self.confidence_threshold
        if not self._filter:
            keep[:] = True
        boxes, raw = out["pred_boxes"][keep], out["pred_multimasks"][keep]
        n, k = raw.shape[:2]
        pasted = paste_masks(
            raw.reshape(n * k, *raw.shape[2:]),
            np.repeat(boxes, k, axis=0),
            size,
            float(self.meta["mask_threshold"]),
        ).reshape(n, k, *size)
        return Predictions(
            size, boxes, out["scores"][keep], out["pred_classes"][keep], pasted, raw, self.mask_names
        )
