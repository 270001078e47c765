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
    "SUBSET_IGNORE",
    "CocoEvalBackend",
    "SubsetCOCOeval",
    "available_backends",
    "coco_eval_backend",
]

logger = logging.getLogger(__name__)

# In the order "auto" tries them.
BACKENDS = ("detectron2", "faster_coco_eval", "pycocotools")
# Ground-truth flag read by the subset-aware COCOeval classes: ignored like a crowd, but matched
# with the ordinary IoU.
SUBSET_IGNORE = "multimask_subset_ignore"


class _SubsetIgnore:
    """
    Mixin for a COCOeval class: ground truth flagged ``SUBSET_IGNORE`` is ignored.

    Every backend's ``_prepare`` rebuilds ``gt["ignore"]`` from ``iscrowd`` alone, so an ``ignore``
    key in the ground truth has no effect; the flag is applied after it. A flagged instance keeps
    its own mask and normal IoU (unlike a crowd, it can absorb one detection only); a detection
    matched to it counts neither as a true nor as a false positive, and the instance is not counted
    as missed: the same rule COCOeval applies to instances outside the evaluated area range.

    The prepared ground truth of all three backends refers to the annotation dicts of ``cocoGt``
    (pycocotools and detectron2 list them in ``self._gts``; faster-coco-eval's C++ dataset holds
    references and reads ``ignore`` when it matches), so flagging those dicts reaches each of them.
    ``tests/test_evaluation_backends.py`` checks that it does.
    """

    def _prepare(self):
        super()._prepare()
        for ann in self.cocoGt.anns.values():
            if ann.get(SUBSET_IGNORE, False):
                ann["ignore"] = 1


class SubsetCOCOeval(_SubsetIgnore, COCOeval):
    """pycocotools' COCOeval that also ignores ground truth flagged ``SUBSET_IGNORE``."""


@dataclass(frozen=True)
class CocoEvalBackend:
    """
    One COCOeval implementation: its COCO class and its subset-aware COCOeval class.

    Attributes:
        name: one of ``BACKENDS``.
        coco_cls: the COCO class its COCOeval expects (ground truth and results).
        cocoeval_cls: its COCOeval class with ``SUBSET_IGNORE`` support.
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
        """``coco_gt.loadRes(results)``, also for an empty list, on copies (loadRes adds keys)."""
        if not results:  # pycocotools' loadRes fails on an empty list; no detection at all is AP 0
            return self.coco({**coco_gt.dataset, "annotations": []})
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes([dict(r) for r in results])

    def cocoeval(self, coco_gt: Any, coco_dt: Any, iou_type: str) -> Any:
        return self.cocoeval_cls(coco_gt, coco_dt, iou_type, **self.cocoeval_kwargs)


def _detectron2() -> CocoEvalBackend:
    # raises ImportError when detectron2 was installed without its compiled _C
    from detectron2.evaluation.fast_eval_api import COCOeval_opt

    class SubsetCOCOevalOpt(_SubsetIgnore, COCOeval_opt):
        pass

    return CocoEvalBackend("detectron2", COCO, SubsetCOCOevalOpt)


def _faster_coco_eval() -> CocoEvalBackend:
    import faster_coco_eval

    class SubsetCOCOevalFaster(_SubsetIgnore, faster_coco_eval.COCOeval_faster):
        pass

    # print: its progress and summary lines then go where pycocotools' do (stdout, captured)
    return CocoEvalBackend(
        "faster_coco_eval", faster_coco_eval.COCO, SubsetCOCOevalFaster, {"print_function": print}
    )


def _pycocotools() -> CocoEvalBackend:
    return CocoEvalBackend("pycocotools", COCO, SubsetCOCOeval)


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
