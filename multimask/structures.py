"""``MultiMasks``: K named masks for each of N instances, carried by ``Instances`` as ``gt_multimask``."""
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F

from detectron2.layers import ROIAlign
from detectron2.structures import BitMasks, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask, rasterize_polygons_within_box

__all__ = [
    "DERIVED_OPS",
    "MultiMasks",
    "derived_mask",
    "is_derived",
    "rle_runs",
    "segmentation_to_rle",
    "rasterize_polygons_on_boxes",
    "segmentation_to_bitmask",
    "shift_polygon_coords",
]

# Polygons of one mask: flat float64 arrays [x0, y0, x1, y1, ...], in image coordinates.
Polygons = List[np.ndarray]


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


def rasterize_polygons_on_boxes(
    coords: np.ndarray,
    num_vertices: Sequence[int],
    polygons_per_mask: Sequence[int],
    out: np.ndarray,
    slots: Sequence[int],
) -> None:
    """
    Rasterise M polygon masks into full-image masks, each on its own bounding box only.

    Decoding a full-image mask costs O(H * W) and objects usually cover a small part of the image,
    so each mask is rasterised on its box (the result equals rasterising on the whole image).

    Args:
        coords: (V, 2) float64 vertices of every polygon of every mask, grouped by polygon, polygons
            grouped by mask, in image coordinates (need not lie inside the image).
        num_vertices: vertex count of each polygon.
        polygons_per_mask: M polygon counts, summing to len(num_vertices).
        out: bool array of shape (S, H, W), zero where the masks go; written in place.
        slots: M indices into `out`, where each mask goes.
    """
    if len(polygons_per_mask) == 0:
        return
    h, w = out.shape[1:]
    poly_starts = np.cumsum([0, *polygons_per_mask])[:-1]
    vertex_starts = np.cumsum([0, *num_vertices])[poly_starts]
    lo = np.floor(np.minimum.reduceat(coords, vertex_starts, axis=0)) - 1
    hi = np.ceil(np.maximum.reduceat(coords, vertex_starts, axis=0)) + 2
    lo = np.clip(lo, 0, [w, h]).astype(np.int64)
    hi = np.clip(hi, 0, [w, h]).astype(np.int64)
    vertex_mask = np.repeat(
        np.arange(len(polygons_per_mask)), np.diff(np.append(vertex_starts, len(coords)))
    )
    shifted = shift_polygon_coords(coords, lo[vertex_mask])
    flat = [p.ravel() for p in np.split(shifted, np.cumsum(num_vertices)[:-1])]
    for m, (first, count) in enumerate(zip(poly_starts, polygons_per_mask)):
        (x0, y0), (x1, y1) = lo[m], hi[m]
        if x1 <= x0 or y1 <= y0:
            continue  # entirely outside the image
        rles = mask_util.frPyObjects(flat[first : first + count], int(y1 - y0), int(x1 - x0))
        rle = rles[0] if count == 1 else mask_util.merge(rles)
        out[slots[m], y0:y1, x0:x1] = mask_util.decode(rle)


# Set operations a derived mask can apply to its two operands.
DERIVED_OPS = ("-", "&", "|")


def derived_mask(op: str, a: Any, b: Any) -> Dict[str, Any]:
    """
    A mask defined by a set operation on two masks, kept as its operands (not rasterised).

    Dataset dicts hold derived masks in this form, e.g. ``occluded = amodal - visible``: the
    operands are the annotation's own polygons / RLE dicts (shared, not copied), and the pixels are
    computed only where they are needed (on each ROI for the training targets, on the operands'
    boxes for evaluation).

    Args:
        op: "-" (a and not b), "&" (a and b) or "|" (a or b).
        a, b: polygons, RLE dicts, or derived masks.

    Returns:
        dict ``{"op": op, "operands": [a, b]}``.
    """
    if op not in DERIVED_OPS:
        raise ValueError(f"a derived mask's op must be one of {DERIVED_OPS}, got {op!r}")
    return {"op": op, "operands": [a, b]}


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


def segmentation_to_rle(segm: Any, height: int, width: int) -> Dict[str, Any]:
    """
    Encode one mask in any form the dataset dicts allow as a compressed RLE of the image size.

    Args:
        segm: polygons (list of flat [x0, y0, x1, y1, ...] lists or arrays; polygons with fewer
            than 3 points are skipped), an RLE dict (compressed or uncompressed counts), an (H, W)
            array, or a derived mask (``derived_mask``).
        height, width: the image size.

    Returns:
        compressed RLE dict (bytes counts), as pycocotools returns it.

    Raises:
        ValueError: an RLE or array of another size than the image, or a value of no known form.
    """
    if isinstance(segm, list):
        polys = [np.asarray(p, dtype=np.float64).ravel() for p in segm if len(p) >= 6]
        if not polys:
            return mask_util.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        return mask_util.merge(mask_util.frPyObjects(polys, height, width))
    if is_derived(segm):
        op, (a, b) = segm["op"], segm["operands"]
        ra, rb = segmentation_to_rle(a, height, width), segmentation_to_rle(b, height, width)
        if op in ("&", "|"):
            return mask_util.merge([ra, rb], intersect=op == "&")
        if op != "-":
            raise ValueError(f"a derived mask's op must be one of {DERIVED_OPS}, got {op!r}")
        # pycocotools has no difference: a - b = a & ~b, with ~b inverted in run-length form
        return mask_util.merge([ra, _invert_rle(rb)], intersect=True)
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"RLE dict needs 'counts' and 'size', got keys {sorted(segm)}")
        if [int(s) for s in segm["size"]] != [height, width]:
            raise ValueError(f"RLE size {list(segm['size'])} differs from image size {[height, width]}")
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
    Rasterise one instance's mask given in any COCO form.

    Args:
        segm: polygons (list of flat [x0, y0, x1, y1, ...] lists), an RLE dict (compressed or uncompressed
            counts, with "size" = [height, width]), or an (H, W) array.
        height, width: the image size the mask must have.

    Returns:
        ndarray of shape (H, W), bool.

    Raises:
        ValueError: if the mask is of another size than the image or of no known form.
    """
    if isinstance(segm, list):
        if len(segm) == 0:
            return np.zeros((height, width), dtype=bool)
        return polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in segm], height, width)
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"RLE dict needs 'counts' and 'size', got keys {sorted(segm)}")
        if [int(s) for s in segm["size"]] != [height, width]:
            raise ValueError(f"RLE size {list(segm['size'])} differs from image size {[height, width]}")
        rle = segm
        if isinstance(segm["counts"], list):  # uncompressed RLE
            rle = mask_util.frPyObjects(segm, height, width)
        return mask_util.decode(rle).astype(bool)
    if isinstance(segm, (np.ndarray, torch.Tensor)):
        arr = np.asarray(segm.cpu() if isinstance(segm, torch.Tensor) else segm)
        if arr.shape != (height, width):
            raise ValueError(f"bitmask shape {arr.shape} differs from image size {(height, width)}")
        return arr.astype(bool)
    raise ValueError(f"a mask must be polygons, an RLE dict or an array, got {type(segm).__name__}")


class MultiMasks:
    """
    K named masks per instance, plus a flag per (instance, mask) saying whether that mask is annotated.

    A mask that is not annotated for an instance is stored as empty and must be ignored (the losses and the
    evaluator do); it is never a claim that the object has an empty mask.

    Each mask is stored either as bits (an (N, K, H, W) tensor) or, like detectron2's ``PolygonMasks``,
    as polygons that are rasterised only when needed: ``crop_and_resize`` (the training targets)
    rasterises them on each ROI at the target size, and the full-image accessors (``tensor``, ``get``,
    ``area``, ...) rasterise every polygon mask once and keep the result. The dataset mapper keeps
    polygon annotations as polygons with ``INPUT.MASK_FORMAT "polygon"`` (detectron2's default), which
    saves rasterising and moving (N, K, H, W) bits per image.

    Indexing does not copy the masks: it keeps a view (an index into the stored masks), so detectron2's
    proposal matching, which indexes every ``gt_*`` field with one row per sampled proposal, costs no
    memory per proposal. ``crop_and_resize`` then reads the ROI of each row from the shared storage.

    Attributes:
        mask_names (tuple[str]): the K names, in order.
        annotated (Tensor): shape (N, K), bool.
        image_size (tuple[int, int]): (H, W).
    """

    def __init__(
        self,
        masks: Optional[Union[torch.Tensor, np.ndarray]],
        mask_names: Sequence[str],
        annotated: Optional[Union[torch.Tensor, np.ndarray]] = None,
        _index: Optional[torch.Tensor] = None,
        *,
        polygons: Optional[List[List[Optional[Polygons]]]] = None,
        image_size: Optional[Tuple[int, int]] = None,
        _cache: Optional[list] = None,
    ):
        """
        Args:
            masks: shape (N, K, H, W), bool or 0/1 numbers; None = no mask stored as bits (then
                `polygons` and `image_size` are required).
            mask_names: K names.
            annotated: shape (N, K) bool; None = every mask annotated.
            polygons: N lists of K entries: the polygons of that mask (a non-empty list of flat
                [x0, y0, x1, y1, ...] arrays, image coordinates) or None where the mask is given by
                `masks` (or is empty). Where an entry has polygons, `masks` must be empty there.
            image_size: (H, W); required when `masks` is None, else it must agree with `masks`.
        """
        self.mask_names = tuple(mask_names)
        k = len(self.mask_names)
        if masks is not None:
            device = masks.device if isinstance(masks, torch.Tensor) else torch.device("cpu")
            masks = torch.as_tensor(masks, device=device)
            if masks.dim() != 4:
                raise ValueError(
                    f"MultiMasks expects masks of shape (N, K, H, W), got {tuple(masks.shape)}"
                )
            if masks.shape[1] != k:
                raise ValueError(
                    f"masks have K={masks.shape[1]} channels but {k} names were given: "
                    f"{list(self.mask_names)}"
                )
            masks = masks if masks.dtype == torch.bool else masks != 0
            size = (int(masks.shape[2]), int(masks.shape[3]))
            if image_size is not None and tuple(image_size) != size:
                raise ValueError(f"image_size {tuple(image_size)} but masks of size {size}")
            num_stored = len(masks)
        else:
            if polygons is None or image_size is None:
                raise ValueError("MultiMasks without bit masks needs polygons and image_size")
            device = torch.device("cpu")
            size = (int(image_size[0]), int(image_size[1]))
            num_stored = len(polygons)
        if polygons is not None:
            if len(polygons) != num_stored or any(len(p) != k for p in polygons):
                raise ValueError(
                    f"polygons must hold {num_stored} lists of {k} entries (one per mask name)"
                )
        self._bits = masks
        self._polygons = polygons
        self._size = size
        self._device = device
        # the full-image bits, once rasterised; shared by every view of the same storage
        self._cache = [None] if _cache is None else _cache
        self._index = (
            torch.arange(num_stored, device=device) if _index is None else _index.to(torch.long)
        )
        if annotated is None:
            annotated = torch.ones((len(self._index), k), dtype=torch.bool)
        self.annotated = torch.as_tensor(annotated, device=device).to(torch.bool)
        if self.annotated.shape != (len(self._index), k):
            raise ValueError(
                f"annotated must have shape {(len(self._index), k)}, "
                f"got {tuple(self.annotated.shape)}"
            )

    def _view(self, index: torch.Tensor, annotated: torch.Tensor) -> "MultiMasks":
        return MultiMasks(
            self._bits,
            self.mask_names,
            annotated,
            _index=index,
            polygons=self._polygons,
            image_size=self._size,
            _cache=self._cache,
        )

    @property
    def _data(self) -> torch.Tensor:
        """The stored masks as full-image bits, shape (S, K, H, W): polygon masks rasterised once."""
        if self._polygons is None:
            return self._bits
        if self._cache[0] is None:
            h, w = self._size
            s, k = len(self._polygons), len(self.mask_names)
            if self._bits is None:
                data = np.zeros((s * k, h, w), dtype=bool)
            else:
                data = self._bits.cpu().numpy().reshape(s * k, h, w).copy()
            slots, per_mask, polys = [], [], []
            for i, per_inst in enumerate(self._polygons):
                for j, p in enumerate(per_inst):
                    if p:
                        slots.append(i * k + j)
                        per_mask.append(len(p))
                        polys.extend(np.asarray(q, dtype=np.float64).reshape(-1, 2) for q in p)
            if polys:
                rasterize_polygons_on_boxes(
                    np.concatenate(polys), [len(q) for q in polys], per_mask, data, slots
                )
            self._cache[0] = torch.from_numpy(data).view(s, k, h, w).to(self._device)
        return self._cache[0]

    @property
    def has_polygons(self) -> bool:
        """Whether some masks are stored as polygons (rasterised when needed)."""
        return self._polygons is not None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_segmentations(
        cls,
        segms: Sequence[Union[Dict[str, Any], Sequence[Any]]],
        mask_names: Sequence[str],
        image_size: Tuple[int, int],
    ) -> "MultiMasks":
        """
        Build from per-instance masks in COCO forms.

        Args:
            segms: one entry per instance: a dict mask name -> mask, or a list of K masks in mask_names
                order. A mask is polygons, an RLE dict, an (H, W) array, or None (not annotated).
                Names missing from a dict are not annotated.
            mask_names: K names.
            image_size: (H, W).
        """
        h, w = image_size
        k = len(mask_names)
        data = np.zeros((len(segms), k, h, w), dtype=bool)
        annotated = np.zeros((len(segms), k), dtype=bool)
        for i, per_inst in enumerate(segms):
            if isinstance(per_inst, dict):
                per_inst = [per_inst.get(name) for name in mask_names]
            if len(per_inst) != k:
                raise ValueError(f"instance {i} has {len(per_inst)} masks, expected {k}")
            for j, segm in enumerate(per_inst):
                if segm is None:
                    continue
                data[i, j] = segmentation_to_bitmask(segm, h, w)
                annotated[i, j] = True
        return cls(torch.from_numpy(data), mask_names, torch.from_numpy(annotated))

    @classmethod
    def from_masks(
        cls,
        masks: Dict[str, Union[BitMasks, PolygonMasks, torch.Tensor]],
        image_size: Tuple[int, int],
        annotated: Optional[torch.Tensor] = None,
    ) -> "MultiMasks":
        """
        Build from one detectron2 mask structure (or (N, H, W) tensor) per name.

        Args:
            masks: ordered dict mask name -> BitMasks / PolygonMasks / Tensor (N, H, W), same N for all.
            image_size: (H, W), used to rasterise PolygonMasks.
            annotated: (N, K) bool, None = all annotated.
        """
        h, w = image_size
        per_name = []
        for m in masks.values():
            if isinstance(m, PolygonMasks):
                m = BitMasks.from_polygon_masks(m, h, w)
            per_name.append(m.tensor if isinstance(m, BitMasks) else torch.as_tensor(m))
        return cls(torch.stack(per_name, dim=1), list(masks.keys()), annotated)

    # ------------------------------------------------------------- the Instances protocol
    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, item: Union[int, slice, torch.Tensor, str]) -> Union["MultiMasks", BitMasks]:
        """
        Index instances like ``BitMasks`` (int / slice / bool or long tensor -> MultiMasks), or get one
        mask of every instance by name (str -> BitMasks of shape (N, H, W)).
        """
        if isinstance(item, str):
            return self.get(item)
        if isinstance(item, int):
            item = slice(item, item + 1 if item != -1 else None)
        if isinstance(item, torch.Tensor) and item.dtype == torch.bool:
            if item.shape != (len(self),):
                raise IndexError(f"bool index of shape {tuple(item.shape)} for {len(self)} instances")
        return self._view(self._index[item], self.annotated[item])

    @classmethod
    def cat(cls, multimasks_list: List["MultiMasks"]) -> "MultiMasks":
        """Concatenate along instances; masks of different image sizes are zero-padded to the largest."""
        if len(multimasks_list) == 0:
            raise ValueError("MultiMasks.cat needs at least one MultiMasks")
        names = multimasks_list[0].mask_names
        for m in multimasks_list:
            if m.mask_names != names:
                raise ValueError(f"cannot cat MultiMasks with names {m.mask_names} and {names}")
        h = max(m.image_size[0] for m in multimasks_list)
        w = max(m.image_size[1] for m in multimasks_list)
        tensors = [
            F.pad(m.tensor, (0, w - m.image_size[1], 0, h - m.image_size[0])) for m in multimasks_list
        ]
        annotated = torch.cat([m.annotated for m in multimasks_list])
        return cls(torch.cat(tensors), names, annotated)

    def to(self, *args: Any, **kwargs: Any) -> "MultiMasks":
        """Move the bits (polygons stay numpy arrays, as in ``PolygonMasks``)."""
        device = torch.empty(0, device=self._device).to(*args, **kwargs).device
        bits = None if self._bits is None else self._bits.to(device=device)
        cache = [None if self._cache[0] is None else self._cache[0].to(device=device)]
        return MultiMasks(
            bits,
            self.mask_names,
            self.annotated.to(device=device),
            _index=self._index.to(device=device),
            polygons=self._polygons,
            image_size=self._size,
            _cache=cache,
        )

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------ accessors
    @property
    def image_size(self) -> Tuple[int, int]:
        return self._size

    @property
    def tensor(self) -> torch.Tensor:
        """The masks as a tensor of shape (N, K, H, W), bool (a copy when this is an indexed view)."""
        return self._data[self._index]

    def name_index(self, name: str) -> int:
        if name not in self.mask_names:
            raise KeyError(f"mask name {name!r} not in {list(self.mask_names)}")
        return self.mask_names.index(name)

    def get(self, name: str) -> BitMasks:
        """The mask called `name` of every instance, as BitMasks of shape (N, H, W)."""
        return BitMasks(self._data[self._index, self.name_index(name)])

    def annotated_for(self, name: str) -> torch.Tensor:
        """Shape (N,) bool: which instances have the mask `name` annotated."""
        return self.annotated[:, self.name_index(name)]

    def area(self) -> torch.Tensor:
        """Shape (N, K), the pixel count of every mask (0 for masks that are not annotated)."""
        return self.tensor.flatten(2).sum(dim=2)

    def nonempty(self) -> torch.Tensor:
        """Shape (N,) bool: instances with at least one non-empty mask."""
        return self.tensor.flatten(1).any(dim=1)

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """
        Crop each instance's K masks to its box and resize them, as ``BitMasks.crop_and_resize`` does
        for one mask.

        Args:
            boxes: shape (N, 4), XYXY in image coordinates, one per instance.
            mask_size: side M of the output.

        Returns:
            Tensor of shape (N, K, M, M), bool.
        """
        if len(boxes) != len(self):
            raise ValueError(f"{len(boxes)} boxes for {len(self)} instances")
        if len(self) == 0:
            return torch.zeros(
                (0, len(self.mask_names), mask_size, mask_size), dtype=torch.bool, device=self.device
            )
        k = len(self.mask_names)
        if self._bits is None:
            out = torch.zeros((len(self), k, mask_size, mask_size), dtype=torch.bool, device=self.device)
        else:
            # Only the stored rows that are referenced are converted to float; the view's index is
            # the ROIAlign batch index, so no per-proposal copy of the full masks is made.
            used, batch_idx = torch.unique(self._index, return_inverse=True)
            data = self._bits[used].to(dtype=torch.float32)
            rois = torch.cat([batch_idx.to(boxes.dtype)[:, None], boxes.to(data.device)], dim=1)
            out = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True).forward(
                data, rois.to(data.dtype)
            )
            out = out >= 0.5
        if self._polygons is not None:
            # as PolygonMasks.crop_and_resize: rasterise each polygon mask on its ROI, at M x M, on
            # the CPU (polygons are numpy arrays), then one copy to the device
            boxes_np = boxes.detach().to("cpu", torch.float64).numpy()
            rasterized = torch.zeros((len(self), k, mask_size, mask_size), dtype=torch.bool)
            from_polygons = torch.zeros((len(self), k), dtype=torch.bool)
            for r, s in enumerate(self._index.tolist()):
                for j, polys in enumerate(self._polygons[s]):
                    if polys:
                        rasterized[r, j] = rasterize_polygons_within_box(polys, boxes_np[r], mask_size)
                        from_polygons[r, j] = True
            out = torch.where(
                from_polygons.to(out.device)[:, :, None, None], rasterized.to(out.device), out
            )
        return out

    def __repr__(self) -> str:
        return (
            f"MultiMasks(num_instances={len(self)}, mask_names={list(self.mask_names)}, "
            f"image_size={self.image_size})"
        )

    def __iter__(self) -> Iterable[torch.Tensor]:
        yield from self.tensor
