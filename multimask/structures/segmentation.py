"""
Masks in the forms dataset dicts allow, and the one path from any of them to pixels.

A mask of one instance is given as polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists or
arrays, image coordinates), an RLE dict (pycocotools' compressed or uncompressed counts), an
(H, W) array, or a *derived* mask: a set operation on two such masks kept as its operands
(``derived_mask``), e.g. ``occluded = amodal - visible``. ``segmentation_to_rle`` and
``segmentation_to_bitmask`` turn every form into a full-image RLE / bitmask, and
``segmentation_to_crop`` into the bits of its box only. ``_encode_one`` is the one implementation of
the set operations: evaluation scores its result, and the mapper keeps the same result (on its box)
as the training mask, so a derived mask's target is the target of the mask that is evaluated.
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch

__all__ = [
    "DERIVED_OPS",
    "MAX_POLYGON_EXTENT",
    "check_polygon_coords",
    "is_valid_polygon",
    "derived_mask",
    "is_derived",
    "rle_runs",
    "segmentation_to_bitmask",
    "segmentation_to_crop",
    "segmentation_to_rle",
    "shift_polygon_coords",
]



def is_valid_polygon(polygon: Any) -> bool:
    """
    The one validity rule for a polygon of a mask, as detectron2's ``load_coco_json`` filters
    them: a flat ``[x0, y0, x1, y1, ...]`` sequence with an even count of at least 6 numbers
    (3 points). Every reader, the mapper and the rasteriser drop the others.
    """
    return len(polygon) >= 6 and len(polygon) % 2 == 0


# Polygon vertices farther than this many image sizes from the image are an error: pycocotools
# allocates memory in proportion to a polygon's extent (1e8 px needs ~8 GB), and a NaN vertex is
# worse still, so such a value would end the process instead of raising.
MAX_POLYGON_EXTENT = 10


def check_polygon_coords(polygons: Sequence[Any], height: int, width: int) -> None:
    """
    Check the coordinates of polygons against the one coordinate limit: finite numbers, within
    ``MAX_POLYGON_EXTENT`` times the image size of the image.

    Args:
        polygons: flat polygons or (P, 2) vertex arrays, in the coordinates of a (height, width)
            image.
        height, width: that image's size.

    Raises:
        ValueError: saying what is wrong (callers add the file, image and annotation).
    """
    if len(polygons) == 0:
        return
    try:
        coords = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in polygons])
    except (TypeError, ValueError):
        raise ValueError("a polygon with a coordinate that is not a number") from None
    if not np.isfinite(coords).all():
        raise ValueError("a polygon with a NaN or infinite coordinate")
    limit = MAX_POLYGON_EXTENT * max(height, width)
    if coords.size and np.abs(coords).max() > limit:
        raise ValueError(
            f"a polygon coordinate {float(np.abs(coords).max()):g}, more than "
            f"{MAX_POLYGON_EXTENT}x the {height} x {width} image away from it"
        )

def shift_polygon_coords(coords: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """
    Move polygon vertices by an integer offset, so that pycocotools rasterises them as unmoved.

    pycocotools snaps each vertex to a 1/5 px grid, as ``trunc(5 * v + 0.5)``, before rasterising.
    ``5 * (x - x0)`` and ``5 * x - 5 * x0`` can round differently in floating point, which flips
    boundary pixels when ``5 * x + 0.5`` is (nearly) an integer, as it is for a fifth of all
    coordinates given with two decimals. So the grid point is computed from the unmoved coordinates,
    then shifted, and the returned vertex lies where pycocotools snaps it to exactly that point.

    Args:
        coords: vertices (V, 2), float64, image coordinates.
        offset: integer (x0, y0), shape (2,) or (V, 2).

    Returns:
        ndarray (V, 2), float64: the vertices in the coordinates of a crop with corner `offset`.
    """
    q = np.trunc(coords * 5.0 + 0.5) - 5 * offset
    # trunc rounds towards zero: a negative grid point q needs 5 * v + 0.5 in (q - 1, q]
    return np.where(q >= 0, q, q - 1) / 5.0


# Set operations a derived mask can apply to its two operands.
DERIVED_OPS = ("-", "&", "|")


def derived_mask(op: str, a: Any, b: Any, *more: Any) -> Dict[str, Any]:
    """
    A mask defined by a set operation on masks, kept as its operands (not rasterised).

    Dataset dicts hold derived masks in this form, e.g. ``occluded = amodal - visible``: the
    operands are the annotation's own polygons / RLE dicts (shared, not copied), and the pixels are
    computed when they are needed, always by ``segmentation_to_rle`` (for evaluation; for training
    by the mapper, on the original image, then transformed as an RLE mask).

    Args:
        op: "-" (a and not b), "&" (a and b and ...) or "|" (a or b or ...).
        a, b, more: polygons, RLE dicts, or derived masks; "&" and "|" take any number >= 2 (one
            n-ary pycocotools merge, not a chain of binary ones), "-" exactly two.

    Returns:
        dict ``{"op": op, "operands": [a, b, *more]}``.
    """
    if op not in DERIVED_OPS:
        raise ValueError(f"a derived mask's op must be one of {DERIVED_OPS}, got {op!r}")
    if op == "-" and more:
        raise ValueError(f"a derived mask 'A - B' takes two operands, got {2 + len(more)}")
    return {"op": op, "operands": [a, b, *more]}


def is_derived(segm: Any) -> bool:
    """Whether `segm` is a derived mask (see ``derived_mask``)."""
    return isinstance(segm, dict) and "op" in segm and "operands" in segm


def rle_runs(counts: Any) -> Optional[np.ndarray]:
    """
    The run lengths of RLE counts (alternating 0s and 1s, starting with 0s), or None when malformed:
    negative runs, or a compressed string that is cut or has other characters.

    Args:
        counts: uncompressed (list of ints) or compressed (pycocotools' str / bytes) RLE counts.

    Returns:
        int64 array of the runs.
    """
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            return None
        return np.asarray(counts, dtype=np.int64)
    # pycocotools' string format: runs as 6-bit groups (5 value bits, bit 0x20 "more follows", sign
    # bit 0x10 in the last group), offset by 48; from the third run on, each run is stored as the
    # difference to the run two places before. Decoded here with array operations.
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except UnicodeEncodeError:
        return None
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63 or c[-1] & 0x20:
        return None
    ends = np.flatnonzero((c & 0x20) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 7:  # > 35 bits: no real mask has such a run
        return None
    shift = 5 * (np.arange(c.size) - np.repeat(starts, lengths))
    runs = np.add.reduceat((c & 0x1F) << shift, starts)
    runs -= np.where(c[ends] & 0x10, np.left_shift(1, 5 * lengths), 0)
    runs[1::2] = np.cumsum(runs[1::2])
    runs[2::2] = np.cumsum(runs[2::2])
    if runs.min() < 0:
        return None
    return runs


def _invert_rle(rle: Dict[str, Any]) -> Dict[str, Any]:
    """The complement of a compressed RLE, computed on its runs (no decoding to pixels)."""
    runs = rle_runs(rle["counts"])
    if runs is None:
        raise ValueError("malformed RLE counts")
    inverted = runs[1:] if len(runs) and runs[0] == 0 else np.concatenate(([0], runs))
    h, w = rle["size"]
    return mask_util.frPyObjects({"counts": inverted.tolist(), "size": [h, w]}, h, w)


def segmentation_to_rle(
    segm: Any, height: int, width: int, memo: Optional[Dict[int, Any]] = None
) -> Dict[str, Any]:
    """
    Encode one mask in any form the dataset dicts allow as a compressed RLE of the image size.

    Args:
        segm: polygons (list of flat [x0, y0, x1, y1, ...] lists or arrays; polygons failing
            ``is_valid_polygon`` are skipped), an RLE dict (compressed or uncompressed counts), an
            (H, W) array, or a derived mask (``derived_mask``).
        height, width: the image size.
        memo: the masks already encoded (pass one empty dict for the masks of one image, so that
            a mask and the derived masks made of it are encoded once); None = none.

    Returns:
        compressed RLE dict (bytes counts), as pycocotools returns it.

    Raises:
        ValueError: an RLE or array of another size than the image, or a value of no known form.
    """
    return _encode(segm, height, width, {} if memo is None else memo)


def _encode(segm: Any, height: int, width: int, memo: Dict[int, Any]) -> Dict[str, Any]:
    # the memo keeps each mask alive beside its RLE, so that its id cannot be reused meanwhile
    if id(segm) not in memo:
        memo[id(segm)] = (segm, _encode_one(segm, height, width, memo))
    return memo[id(segm)][1]


def _encode_one(segm: Any, height: int, width: int, memo: Dict[int, Any]) -> Dict[str, Any]:
    if isinstance(segm, list):
        polys = [np.asarray(p, dtype=np.float64).ravel() for p in segm if is_valid_polygon(p)]
        if not polys:
            return mask_util.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        return mask_util.merge(mask_util.frPyObjects(polys, height, width))
    if is_derived(segm):
        op, operands = segm["op"], segm["operands"]
        if op not in DERIVED_OPS or len(operands) < 2 or (op == "-" and len(operands) != 2):
            raise ValueError(
                f"a derived mask is 'A - B', 'A & B & ...' or 'A | B | ...', got op {op!r} with "
                f"{len(operands)} operands"
            )
        rles = [_encode(x, height, width, memo) for x in operands]
        if op == "-":
            # pycocotools has no difference: a - b = a & ~b, with ~b inverted in run-length form
            return mask_util.merge([rles[0], _invert_rle(rles[1])], intersect=True)
        return mask_util.merge(rles, intersect=op == "&")  # one n-ary merge
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"RLE dict needs 'counts' and 'size', got keys {sorted(segm)}")
        if [int(s) for s in segm["size"]] != [height, width]:
            raise ValueError(
                f"RLE size {list(segm['size'])} differs from image size {[height, width]}"
            )
        if isinstance(segm["counts"], list):  # uncompressed RLE
            return mask_util.frPyObjects(segm, height, width)
        return segm
    if isinstance(segm, (np.ndarray, torch.Tensor)):
        arr = np.asarray(segm.cpu() if isinstance(segm, torch.Tensor) else segm)
        if arr.shape != (height, width):
            raise ValueError(f"bitmask shape {arr.shape} differs from image size {(height, width)}")
        return mask_util.encode(np.asfortranarray(arr.astype(np.uint8)))
    raise ValueError(
        f"a mask must be polygons, an RLE dict, an array or a derived mask, got {type(segm).__name__}"
    )


def segmentation_to_bitmask(segm: Any, height: int, width: int) -> np.ndarray:
    """
    Rasterise one instance's mask given in any form (see ``segmentation_to_rle``).

    Args:
        segm: polygons, an RLE dict, an (H, W) array or a derived mask.
        height, width: the image size the mask must have.

    Returns:
        ndarray of shape (H, W), bool.

    Raises:
        ValueError: if the mask is of another size than the image or of no known form.
    """
    if isinstance(segm, (np.ndarray, torch.Tensor)):
        arr = np.asarray(segm.cpu() if isinstance(segm, torch.Tensor) else segm)
        if arr.shape != (height, width):
            raise ValueError(f"bitmask shape {arr.shape} differs from image size {(height, width)}")
        return arr.astype(bool)
    return mask_util.decode(segmentation_to_rle(segm, height, width)).astype(bool)


def segmentation_to_crop(
    segm: Any, height: int, width: int, memo: Optional[Dict[int, Any]] = None
) -> Tuple[int, int, np.ndarray]:
    """
    The pixels of one mask in any form (see ``segmentation_to_rle``) on its tight box only.

    The mask is encoded as ``segmentation_to_rle`` encodes it (a derived mask: its exact result,
    as evaluation scores it), and its runs are decoded on the columns its pixels span, never on
    the whole image: O(H * box width + number of runs).

    Args:
        segm: polygons, an RLE dict, an (H, W) array or a derived mask.
        height, width: the image size.
        memo: as in ``segmentation_to_rle``.

    Returns:
        (x0, y0, bits): bits an (h, w) bool array whose top-left pixel is (x0, y0), tight around
        the mask's pixels; (0, 0, a (0, 0) array) when the mask is empty.

    Raises:
        ValueError: as ``segmentation_to_rle``, or malformed RLE counts.
    """
    rle = segmentation_to_rle(segm, height, width, memo)
    runs = rle_runs(rle["counts"])
    if runs is None or runs.sum() != height * width:
        raise ValueError(f"malformed RLE counts for a {height} x {width} mask")
    ends = np.cumsum(runs)
    starts = ends - runs
    on = 2 * np.flatnonzero(runs[1::2]) + 1  # the non-empty runs of 1s (column-major pixels)
    if len(on) == 0:
        return 0, 0, np.zeros((0, 0), dtype=bool)
    x0, x1 = int(starts[on[0]] // height), int((ends[on[-1]] - 1) // height + 1)
    # the runs from the first to the last run of 1s, padded with 0s to whole columns
    first, last = on[0], on[-1]
    lengths = np.concatenate(
        ([starts[first] - x0 * height], runs[first : last + 1], [x1 * height - ends[last]])
    )
    values = np.zeros(len(lengths), dtype=bool)
    values[1:-1:2] = True  # runs alternate, starting (at `first`) with 1s
    bits = np.repeat(values, lengths).reshape(x1 - x0, height).T
    rows = np.flatnonzero(bits.any(axis=1))
    return x0, int(rows[0]), bits[rows[0] : rows[-1] + 1]
