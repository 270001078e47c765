"""
MP3D-Amodal (Championchess/Amodal-Completion-in-the-Wild): "same with COCOA", read by the COCOA
reader after the differences below.

The released annotations are pickles (``MP3D_seleted_{train,eval}_10.29.pkl``, read by that repo's
``datasets/reader.py`` ``MP3DDataset`` with ``cvbase.load``) of COCOA's layout: ``images`` and one
``annotations`` entry per image with its ``regions`` and ``depth_constraint``. They differ from
COCOA in that every region is occluded and carries ``visible_mask`` (``read_MP3D`` asserts it), the
amodal ``segmentation`` is an RLE rather than a polygon, RLE ``counts`` are ``bytes`` (pycocotools'
output, pickled), the occlusion rate is ``occlusion_rate`` (COCOA: ``occlude_rate``), numbers may be
numpy scalars, and regions have a ``category_id``. A JSON conversion of the pickle (counts
decoded, as community converters write it) reads the same way.

The COCOA reader gives every region the one class ``object`` (MP3D-Amodal is evaluated
class-agnostically); the pickle is read with an unpickler that builds only plain containers and
numpy scalars / arrays, so a tampered file cannot run code.
"""

import io
import os
import pickle
from typing import Any, Dict, Mapping

import numpy as np

from .coco import read_json
from .mask_images import as_str_counts

__all__ = ["read_mp3d_amodal"]

_ALLOWED = {
    ("collections", "OrderedDict"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
}
_MASK_KEYS = ("segmentation", "visible_mask", "invisible_mask")


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not annotation data")
        return super().find_class(module, name)


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers (a float32 rate is no ``float``), recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_mp3d_amodal(path: str) -> Dict[str, Any]:
    """
    Read an MP3D-Amodal annotation file (``.pkl`` as released, or its JSON conversion) into
    COCOA's layout, ready for ``flatten_cocoa_regions``.

    Args:
        path: the ``.pkl`` (or ``.json``) file.

    Returns:
        dict: ``images`` and ``annotations`` with ``regions`` whose RLE counts are str and whose
        occlusion rate is ``occlude_rate``.
    """
    if path.endswith(".pkl"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"annotation file {path} does not exist")
        with open(path, "rb") as f:
            raw = f.read()
        try:
            data = _plain(_DataUnpickler(io.BytesIO(raw)).load())
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: not an MP3D-Amodal annotation pickle: {e}") from None
    else:
        data = read_json(path)
    anns = data.get("annotations") if isinstance(data, Mapping) else None
    if not isinstance(anns, list):
        raise ValueError(f"{path}: an MP3D-Amodal file needs a list 'annotations'")
    for ann in anns:
        for i, region in enumerate(ann.get("regions") or [] if isinstance(ann, dict) else []):
            if not isinstance(region, dict):
                continue  # the COCOA reader names it
            for key in _MASK_KEYS:
                if key in region:
                    region[key] = as_str_counts(region[key])
            if "occlusion_rate" in region:
                if "occlude_rate" in region:
                    raise ValueError(
                        f"{path}: annotation id {ann.get('id')} region {i} has both "
                        "'occlusion_rate' and 'occlude_rate'"
                    )
                region["occlude_rate"] = region.pop("occlusion_rate")
    return data
