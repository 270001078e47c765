"""
WALT (dineshreddy91/WALT): COCO JSON whose ``segmentation`` nests the two masks of an object.

As WALT's mmdetection dataset writes and reads it (``Walt_Train/code_local/datasets/
parking_real.py``: ``save_json`` and ``_parse_ann_info``): each annotation's ``segmentation`` is a
one-element list ``[{"full": <polygons>, "visible": <polygons>}]`` (``full`` the amodal mask; WALT
reads an entry without ``full`` as visible-only), ``bbox`` is XYWH, ``occ_percentage`` is the
occluded percentage of the object, 0-100, and ``categories`` is ``[{"id": 0, "name": "car"}]``
(category id 0). The reader lifts the two masks to the annotation keys ``full`` and ``visible``
and writes ``occlude_rate = occ_percentage / 100``; an object without ``full`` has its amodal
(and occluded) mask not annotated.

Errors name the annotation: a ``segmentation`` that is not such a one-element list of a dict, an
``occ_percentage`` that is not a number in [0, 100].
"""

from typing import Any, Dict, Mapping

from .coco import read_json

__all__ = ["WALT_MASK_FIELDS", "read_walt_json"]

# "visible" as the visible mask's own expression is the annotation key of that name
WALT_MASK_FIELDS = {"amodal": "full", "visible": "visible", "occluded": "amodal - visible"}


def read_walt_json(json_file: str, image_root: str) -> Dict[str, Any]:
    """
    Read a WALT annotation file into the COCO-style dict the generic loader maps.

    Args:
        json_file: WALT's ``ann.json``.
        image_root: the folder its ``file_name`` entries (``images/<name>``) are relative to
            (unused here: the loader resolves them).

    Returns:
        dict: the file's content, each annotation with ``full`` / ``visible`` instead of the
        nested ``segmentation``, and ``occlude_rate`` instead of ``occ_percentage``.
    """
    del image_root
    coco = read_json(json_file)
    anns = coco.get("annotations") if isinstance(coco, Mapping) else None
    if not isinstance(anns, list):
        raise ValueError(f"{json_file}: a WALT JSON needs a list 'annotations'")
    for ann in anns:
        if not isinstance(ann, dict):
            continue  # the loader names it
        where = f"{json_file}: annotation id {ann.get('id')} (image id {ann.get('image_id')})"
        segm = ann.pop("segmentation", None)
        if not (isinstance(segm, list) and len(segm) == 1 and isinstance(segm[0], dict)):
            got = f"a list of {len(segm)}" if isinstance(segm, list) else type(segm).__name__
            raise ValueError(
                f"{where}: 'segmentation' must be WALT's [{{'full': ..., 'visible': ...}}], "
                f"got {got}"
            )
        unknown = sorted(set(segm[0]) - {"full", "visible"})
        if unknown:
            raise ValueError(f"{where}: 'segmentation' has keys {unknown}; WALT has full, visible")
        ann["full"], ann["visible"] = segm[0].get("full"), segm[0].get("visible")
        if "occ_percentage" in ann:
            occ = ann.pop("occ_percentage")
            if isinstance(occ, bool) or not isinstance(occ, (int, float)) or not 0 <= occ <= 100:
                raise ValueError(f"{where}: occ_percentage {occ!r} is not a number in [0, 100]")
            ann["occlude_rate"] = occ / 100.0
    return coco
