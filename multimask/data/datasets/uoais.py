"""
UOAIS-Sim and SynTable (gist-ailab/uoais, ngzhili/uoais-v2): flat COCO JSON with three masks.

Read as the UOAIS loader reads them (``adet/data/uoais.py``, ``load_uoais_json``): each annotation
has ``segmentation`` (the amodal mask), ``visible_mask`` and ``occluded_mask`` (polygons or RLE,
uncompressed RLE too) and ``occluded_rate`` (the occluded fraction of the amodal mask, 0-1; UOAIS
calls an object occluded from 0.05 on). The images also name a ``depth_file_name``, which the RGB
model here does not read. UOAIS sets every ``category_id`` to 0 (one class, class-agnostic); the
reader keeps the file's own ``categories`` (one ``object`` class in UOAIS-Sim) instead.

The rate is written to the dataset dicts as ``occlude_rate``, the key the occluded-subset
evaluation reads, so the rate the file states is used rather than one recomputed from the masks.
SynTable's annotation files (``uoais_train.json``, ``annotation_final.json``) have this layout
(uoais-v2 registers them with the same loader); their images also name an
``occlusion_order_file_name``, the scene's occlusion-order matrix (``.npy`` under the dataset root),
which becomes the ground-truth order of ``MULTIMASK.ORDER_EVAL`` (:mod:`.order_field`). uoais-v2's
own OOACC builds its ground truth from the masks instead (``MULTIMASK.ORDER_GT "masks"``).
"""

from typing import Any, Dict, Mapping

from .coco import read_json
from .order_field import syntable_order

__all__ = ["UOAIS_MASK_FIELDS", "read_uoais_json"]

UOAIS_MASK_FIELDS = {
    "amodal": "segmentation",
    "visible": "visible_mask",
    "occluded": "occluded_mask",
}


def read_uoais_json(json_file: str, image_root: str) -> Dict[str, Any]:
    """
    Read a UOAIS-Sim / SynTable annotation file into the COCO-style dict the generic loader maps.

    Args:
        json_file: e.g. ``UOAIS-Sim/annotations/coco_anns_uoais_sim_train.json``.
        image_root: the image directory, which SynTable's ``occlusion_order_file_name`` paths
            are relative to, like its image file names.

    Returns:
        dict: the file's content, each annotation's ``occluded_rate`` renamed ``occlude_rate``
        (checked to lie in [0, 1] by the loader, which names the annotation otherwise), and
        ``occludes`` from the images' order matrices.
    """
    coco = read_json(json_file)
    anns = coco.get("annotations") if isinstance(coco, Mapping) else None
    if not isinstance(anns, list):
        raise ValueError(f"{json_file}: a UOAIS JSON needs a list 'annotations'")
    for ann in anns:
        if isinstance(ann, dict) and "occluded_rate" in ann:
            if "occlude_rate" in ann:
                raise ValueError(
                    f"{json_file}: annotation id {ann.get('id')} has both 'occluded_rate' and "
                    "'occlude_rate': which one is the occlusion rate?"
                )
            ann["occlude_rate"] = ann.pop("occluded_rate")
    syntable_order(coco, json_file, image_root)
    return coco
