"""
The stored forms of one mask inside ``MultiMasks``, and how each is rasterised.

A mask of one instance is stored as one of:

- ``None``: empty (or not annotated: ``MultiMasks.annotated`` tells which);
- ``PolygonMask``: polygons in image coordinates (numpy, on the CPU, like ``PolygonMasks``);
- ``BitCrop``: bits of the mask's box only (plus a one-pixel zero margin inside the image), a slice
  of one packed 1-D bool tensor per ``MultiMasks`` that follows ``.to(device)``.

A derived mask (``occluded = amodal - visible``) is stored as the ``BitCrop`` of its exact result
(``segmentation_to_rle``, the masks evaluation scores), made by the mapper like any RLE mask: there
is no set operation here, so its training target is the target of that one mask whatever the forms
of its operands.

Polygons are rasterised on ROIs by pycocotools, batched (``rasterize_polygons_on_rois``), with the
same arithmetic as detectron2's ``rasterize_polygons_within_box``: the result is identical to
``PolygonMasks.crop_and_resize``. pycocotools' rule: each vertex is scaled by 5 and rounded, the
polygon's edges are walked on that 5x grid, and a pixel is set when its centre column's crossing
count says it is inside (see pycocotools' ``rleFrPoly``).
"""

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util

from .segmentation import is_valid_polygon, shift_polygon_coords

__all__ = [
    "BitCrop",
    "Leaf",
    "PolygonMask",
    "rasterize_polygons_in_boxes",
    "rasterize_polygons_on_rois",
]


class PolygonMask:
    """
    The polygons of one mask.

    Attributes:
        coords (ndarray): (V, 2) float64 vertices of all its polygons, polygon after polygon.
        lengths (ndarray): (P,) int64 vertex count of each polygon (each >= 3).
    """

    __slots__ = ("coords", "lengths")

    def __init__(self, coords: np.ndarray, lengths: Sequence[int]):
        self.coords = coords
        self.lengths = np.asarray(lengths, dtype=np.int64)

    @classmethod
    def from_polygons(cls, polygons: Sequence[Sequence[float]]) -> Optional["PolygonMask"]:
        """From flat [x0, y0, x1, y1, ...] polygons; those failing ``is_valid_polygon`` are skipped
        (None if all)."""
        valid = [p for p in polygons if is_valid_polygon(p)]
        arrays = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in valid]
        if not arrays:
            return None
        return cls(np.concatenate(arrays), [len(a) for a in arrays])

    def polygons(self) -> List[np.ndarray]:
        """The polygons as flat [x0, y0, x1, y1, ...] float64 arrays (views)."""
        ends = np.cumsum(self.lengths)
        flat = self.coords.reshape(-1)
        return [flat[2 * (e - n) : 2 * e] for e, n in zip(ends.tolist(), self.lengths.tolist())]

    def extent(self) -> np.ndarray:
        """(x0, y0, x1, y1) of the vertices, float64."""
        return np.concatenate([self.coords.min(axis=0), self.coords.max(axis=0)])


class BitCrop:
    """
    Bits of one mask on a window of the image: ``flat[offset : offset + h * w]`` viewed as (h, w),
    with its top-left pixel at (x0, y0). Outside the window the mask is 0.
    """

    __slots__ = ("offset", "x0", "y0", "h", "w")

    def __init__(self, offset: int, x0: int, y0: int, h: int, w: int):
        self.offset, self.x0, self.y0, self.h, self.w = offset, x0, y0, h, w

    def moved(self, offset: int) -> "BitCrop":
        return BitCrop(self.offset + offset, self.x0, self.y0, self.h, self.w)


Leaf = Optional[Union[PolygonMask, BitCrop]]


def rasterize_polygons_on_rois(
    masks: Sequence[PolygonMask], boxes: np.ndarray, mask_size: int
) -> np.ndarray:
    """
    Rasterise each polygon mask inside its box, at mask_size x mask_size, in a few batched calls.

    Equal to detectron2's ``rasterize_polygons_within_box(polygons, box, mask_size)`` for each pair:
    the vertices are moved to the box corner and scaled with the same float32 ratio, then rasterised
    by pycocotools.

    Args:
        masks: T polygon masks.
        boxes: (T, 4) XYXY boxes, one per mask (float32 values, as detectron2 reads them).
        mask_size: M.

    Returns:
        ndarray of shape (T, M, M), bool (not C-contiguous).
    """
    t = len(masks)
    if t == 0:
        return np.zeros((0, mask_size, mask_size), dtype=bool)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(t, 4)
    m = np.float32(mask_size)
    ratio_w = m / np.maximum(boxes[:, 2] - boxes[:, 0], np.float32(0.1))
    ratio_h = m / np.maximum(boxes[:, 3] - boxes[:, 1], np.float32(0.1))
    num_vertices = np.fromiter((len(p.coords) for p in masks), dtype=np.int64, count=t)
    per_vertex = np.repeat(np.arange(t), num_vertices)
    coords = np.concatenate([p.coords for p in masks])
    origin = boxes[:, :2].astype(np.float64)[per_vertex]
    scale = np.stack([ratio_w, ratio_h], axis=1).astype(np.float64)[per_vertex]
    flat = ((coords - origin) * scale).reshape(-1)
    lengths = np.concatenate([p.lengths for p in masks])
    ends = 2 * np.cumsum(lengths)
    starts = ends - 2 * lengths
    rles = mask_util.frPyObjects(
        [flat[a:b] for a, b in zip(starts.tolist(), ends.tolist())], mask_size, mask_size
    )
    merged, first = [], 0
    for p in masks:
        n = len(p.lengths)
        merged.append(rles[first] if n == 1 else mask_util.merge(rles[first : first + n]))
        first += n
    # a view, not a copy: pycocotools' (M, M, T) Fortran-ordered 0/1 bytes seen as (T, M, M) bool
    return mask_util.decode(merged).transpose(2, 0, 1).view(np.bool_)


def rasterize_polygons_in_boxes(
    masks: Sequence[PolygonMask], image_size: Tuple[int, int]
) -> List[Optional[Tuple[int, int, np.ndarray]]]:
    """
    Rasterise polygon masks at image resolution, each on its own box only (a full-image mask costs
    O(H * W) and objects usually cover a small part of the image). The pixels equal a rasterisation
    on the whole image: vertices are moved so that pycocotools snaps them to the same grid points.

    Args:
        masks: polygon masks in image coordinates (vertices may lie outside the image).
        image_size: (H, W).

    Returns:
        per mask, (x0, y0, bits) with bits an (h, w) bool array whose top-left pixel is (x0, y0),
        with a zero margin of one pixel where the image allows; None when the mask lies outside.
    """
    h, w = image_size
    out: List[Optional[Tuple[int, int, np.ndarray]]] = []
    for p in masks:
        lo = np.floor(p.coords.min(axis=0)) - 2
        hi = np.ceil(p.coords.max(axis=0)) + 3
        (x0, y0), (x1, y1) = np.clip(lo, 0, [w, h]).astype(int), np.clip(hi, 0, [w, h]).astype(int)
        if x1 <= x0 or y1 <= y0:
            out.append(None)
            continue
        shifted = shift_polygon_coords(p.coords, np.array([x0, y0])).reshape(-1)
        polys = PolygonMask(shifted.reshape(-1, 2), p.lengths).polygons()
        rle = mask_util.merge(mask_util.frPyObjects(polys, int(y1 - y0), int(x1 - x0)))
        out.append((int(x0), int(y0), mask_util.decode(rle).astype(bool)))
    return out
