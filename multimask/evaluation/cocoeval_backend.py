"""
The COCOeval implementation behind ``MultiMaskCOCOEvaluator``, chosen in one place.

Three implementations compute the same COCO metrics:

- ``detectron2``: detectron2's ``COCOeval_opt`` (per-image matching and accumulation in C++), when
  ``detectron2._C`` is built;
- ``faster_coco_eval``: the ``faster-coco-eval`` package (a maintained pycocotools drop-in whose
  ``_prepare``, IoU, matching and accumulation run in C++);
- ``pycocotools``: the reference, pure Python apart from the mask IoU.

"auto" takes the first one that imports, in that order.
"""

import contextlib
import functools
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = [
    "BACKENDS",
    "PROTOCOL_IGNORE",
    "CocoEvalBackend",
    "RerunnableCOCOeval",
    "available_backends",
    "coco_eval_backend",
]

logger = logging.getLogger(__name__)

# In the order "auto" tries them.
BACKENDS = ("detectron2", "faster_coco_eval", "pycocotools")
# Ground-truth flag read by the rerunnable COCOeval classes: ignored like a crowd, but matched with
# the ordinary IoU (as COCOeval treats an instance outside the evaluated area range).
PROTOCOL_IGNORE = "multimask_ignore"


class _Rerunnable:
    """
    Mixin for a COCOeval class: ``evaluate()`` can run again on the same ground truth and
    detections with other ``area`` values, ``PROTOCOL_IGNORE`` flags and ``params.areaRng``, at
    the cost of the matching only.

    The first ``evaluate()`` prepares as the backend does (RLEs, per-image lists) and computes the
    IoUs; later ones reuse both, which is valid while ``imgIds``, ``catIds``, ``maxDets`` and the
    masks stay the same. Every backend reads ``area``, ``ignore`` and ``iscrowd`` from the
    annotation dicts of ``cocoGt`` / ``cocoDt`` when it matches (pycocotools and detectron2 list
    those dicts in ``self._gts`` / ``self._dts``; faster-coco-eval's C++ dataset holds references
    to them), so changing those dicts between runs reaches each of them;
    ``tests/test_evaluation_backends.py`` checks that it does.

    Every backend's ``_prepare`` rebuilds ``ignore`` from ``iscrowd`` alone; the flag is applied
    after it, on every run. A flagged instance keeps its own mask and normal IoU (unlike a crowd,
    it can absorb one detection only); a detection matched to it counts neither as a true nor as a
    false positive, and the instance is not counted as missed.
    """

    _prepared = False

    def _prepare(self):
        if not self._prepared:
            super()._prepare()
            self._prepared = True
            self._iou_cache = {}
        elif hasattr(self, "rle_iou_max_workers"):
            # faster-coco-eval computes IoUs in a thread pool: not worth it for cache lookups
            self.rle_iou_max_workers = 1
        for ann in self.cocoGt.anns.values():
            ann["ignore"] = int(bool(ann.get("iscrowd", 0) or ann.get(PROTOCOL_IGNORE, False)))

    def computeIoU(self, imgId, catId):
        key = (imgId, catId)
        if key not in self._iou_cache:
            self._iou_cache[key] = super().computeIoU(imgId, catId)
        return self._iou_cache[key]


class RerunnableCOCOeval(_Rerunnable, COCOeval):
    """pycocotools' COCOeval, rerunnable (see ``_Rerunnable``)."""


@dataclass(frozen=True)
class CocoEvalBackend:
    """
    One COCOeval implementation: its COCO class and its rerunnable COCOeval class.

    Attributes:
        name: one of ``BACKENDS``.
        coco_cls: the COCO class its COCOeval expects (ground truth and results).
        cocoeval_cls: its COCOeval class, rerunnable (see ``_Rerunnable``).
        cocoeval_kwargs: extra constructor arguments of ``cocoeval_cls``.
    """

    name: str
    coco_cls: type
    cocoeval_cls: type
    cocoeval_kwargs: Dict[str, Any] = field(default_factory=dict)

    def coco(self, dataset: Dict[str, list]) -> Any:
        """A COCO object indexing the in-memory `dataset` (images, categories, annotations)."""
        coco = self.coco_cls()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco.createIndex()
        return coco

    def load_results(self, coco_gt: Any, results: List[Dict[str, Any]]) -> Any:
        """
        The results COCO of `results`, as ``coco_gt.loadRes(results)`` builds it for boxes or
        masks (ids 1..N, ``iscrowd`` 0), on copies, also for an empty list.

        Each record must carry its ``area`` (``loadRes`` computes ``w * h`` of a box, or the pixel
        area of a mask): the evaluator knows it already, and ``loadRes``' loop over the records is
        a large part of an evaluation. A mask record gets no ``bbox`` (mask AP does not read it).
        """
        anns = [{**r, "id": k, "iscrowd": 0} for k, r in enumerate(results, 1)]
        dataset = coco_gt.dataset
        return self.coco(
            {"images": dataset["images"], "categories": dataset["categories"], "annotations": anns}
        )

    def cocoeval(self, coco_gt: Any, coco_dt: Any, iou_type: str) -> Any:
        return self.cocoeval_cls(coco_gt, coco_dt, iou_type, **self.cocoeval_kwargs)


def _detectron2() -> CocoEvalBackend:
    # raises ImportError when detectron2 was installed without its compiled _C
    from detectron2.evaluation.fast_eval_api import COCOeval_opt

    class RerunnableCOCOevalOpt(_Rerunnable, COCOeval_opt):
        pass

    return CocoEvalBackend("detectron2", COCO, RerunnableCOCOevalOpt)


def _faster_coco_eval() -> CocoEvalBackend:
    import faster_coco_eval

    class RerunnableCOCOevalFaster(_Rerunnable, faster_coco_eval.COCOeval_faster):
        pass

    # print: its progress and summary lines then go where pycocotools' do (stdout, captured)
    return CocoEvalBackend(
        "faster_coco_eval",
        faster_coco_eval.COCO,
        RerunnableCOCOevalFaster,
        {"print_function": print},
    )


def _pycocotools() -> CocoEvalBackend:
    return CocoEvalBackend("pycocotools", COCO, RerunnableCOCOeval)


_LOADERS: Dict[str, Callable[[], CocoEvalBackend]] = {
    "detectron2": _detectron2,
    "faster_coco_eval": _faster_coco_eval,
    "pycocotools": _pycocotools,
}


@functools.lru_cache(maxsize=None)
def _load(name: str) -> CocoEvalBackend:
    return _LOADERS[name]()  # an ImportError propagates, and is not cached


def _importable(name: str) -> bool:
    try:
        _load(name)
    except ImportError:
        return False
    return True


def available_backends() -> List[str]:
    """The backends that import here, in the order "auto" tries them."""
    return [n for n in BACKENDS if _importable(n)]


_logged = set()


def coco_eval_backend(name: str = "auto") -> CocoEvalBackend:
    """
    The one place that chooses the COCOeval implementation.

    Args:
        name: "auto" (the first of ``BACKENDS`` that imports), or one of ``BACKENDS``.

    Returns:
        the backend; which one is logged once per process.

    Raises:
        ValueError: an unknown name; ImportError: a named backend that is not installed.
    """
    if name == "auto":
        # pycocotools is a dependency, so some backend always imports
        name = next(n for n in BACKENDS if _importable(n))
    elif name not in _LOADERS:
        raise ValueError(f"unknown COCOeval backend '{name}'; known: auto, {', '.join(BACKENDS)}")
    try:
        backend = _load(name)
    except ImportError as e:
        hint = {
            "detectron2": "build detectron2 with its C++ extension (detectron2._C)",
            "faster_coco_eval": "pip install faster-coco-eval",
        }.get(name, "pip install pycocotools")
        raise ImportError(f"COCOeval backend '{name}' is not available ({e}); {hint}") from e
    if name not in _logged:
        _logged.add(name)
        logger.info(f"COCO evaluation backend: {name}")
    return backend
