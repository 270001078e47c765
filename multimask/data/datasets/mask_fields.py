"""
The mask-field mapping of a multi-mask COCO JSON: parsing, validation, per-annotation evaluation.

The syntax is documented in :mod:`multimask.data.datasets.coco`. In short, each mask name maps to
an expression over *operands*, where an operand is another mask name of the mapping, an annotation
key, or the keyword ``empty``::

    "KEY_OR_NAME"               the annotation key (or another mask of the mapping)
    "A or B"                    A when A is present in the annotation, else B
    "A - B", "A & B", "A | B"   difference, intersection, union of two masks

Masks are returned in the forms the standard dataset dict allows: the annotation's own polygons or
RLE dict when taken as they are, ``[]`` for ``empty``, and a derived mask
(``multimask.structures.derived_mask``: the operation and its operands, not rasterised) when
computed; ``multimask.structures.segmentation_to_rle`` turns any of them into pixels.
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ...structures import derived_mask, rle_runs
from ...structures.segmentation import check_polygon_coords, is_valid_polygon

__all__ = ["MaskFields", "MaskFieldError", "rle_length"]

_OPS = ("or", "-", "&", "|")
_OCCLUDERS = re.compile(r"occluders\((\S+)\)")
_EMPTY = "empty"


class MaskFieldError(ValueError):
    """A mask value of an annotation is malformed; the loader adds the file and annotation id."""


def normalize(value: Any, height: int, width: int) -> Tuple[Optional[Any], int]:
    """
    Validate one raw mask value of an annotation.

    Args:
        value: polygons (list of flat [x0, y0, x1, y1, ...] lists), one flat polygon (a list of
            numbers, as in COCOA), an RLE dict (compressed or uncompressed), or None.
        height, width: the image size, which an RLE must have.

    Returns:
        (mask, num_dropped): the mask as polygons (list of lists; ``[]`` is an annotated empty
        mask) or the RLE dict as given, or None when not annotated; and how many polygons were
        dropped by ``is_valid_polygon`` (fewer than 3 points, or an odd number of coordinates). A
        mask whose polygons were all dropped is None.

    Raises:
        MaskFieldError: the value is neither polygons nor RLE, or the RLE's size is not the
            image's, or a polygon coordinate breaks ``check_polygon_coords``.
    """
    if value is None:
        return None, 0
    if isinstance(value, list):
        if len(value) == 0:
            return [], 0  # an annotated empty mask
        if isinstance(value[0], (int, float)):
            value = [value]  # one flat polygon
        if not all(
            isinstance(p, list) and (len(p) == 0 or isinstance(p[0], (int, float))) for p in value
        ):
            raise MaskFieldError("holds a list that is neither polygons nor one flat polygon")
        polygons = [p for p in value if is_valid_polygon(p)]
        dropped = len(value) - len(polygons)
        try:
            check_polygon_coords(polygons, height, width)
        except ValueError as e:
            raise MaskFieldError(f"holds {e}") from None
        return (polygons if polygons else None), dropped
    if isinstance(value, dict):
        if "counts" not in value or "size" not in value:
            raise MaskFieldError(
                f"holds a dict with keys {sorted(value)}, not an RLE (counts, size)"
            )
        size = value["size"]
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            raise MaskFieldError(f"holds an RLE of size {size}, but the image is {[height, width]}")
        if not isinstance(value["counts"], (str, bytes, list)):
            raise MaskFieldError(f"holds an RLE whose counts is a {type(value['counts']).__name__}")
        if rle_length(value["counts"]) != height * width:
            # pycocotools would fail on it ("Invalid RLE mask representation") only when training
            # reads it, without saying which annotation
            raise MaskFieldError(
                f"holds an RLE whose counts do not describe the {height} x {width} pixels of its "
                "size: it is truncated or corrupt"
            )
        return value, 0
    raise MaskFieldError(f"holds a {type(value).__name__}, neither polygons nor RLE")


def rle_length(counts: Any) -> int:
    """
    The number of pixels an RLE's counts describe (what its size must multiply to), or -1 if the
    counts are malformed: negative runs, or a compressed string that is cut or has other characters.

    Args:
        counts: uncompressed (list of ints) or compressed (pycocotools' str / bytes) RLE counts.
    """
    runs = rle_runs(counts)
    return -1 if runs is None else int(runs.sum())


class MaskFields:
    """
    A parsed mask-field mapping.

    Attributes:
        names (list[str]): the mask names, in mapping order.
        keys (list[str]): the annotation keys read by the mapping.
    """

    def __init__(self, mask_fields: Mapping[str, str]):
        """
        Args:
            mask_fields: ordered dict mask name -> expression (see the module docstring).

        Raises:
            ValueError: empty mapping, an expression that does not parse, or masks defined in terms
                of each other in a cycle.
        """
        if not isinstance(mask_fields, Mapping) or len(mask_fields) == 0:
            raise ValueError(
                f"mask_fields must be a non-empty dict mask name -> field, got {mask_fields!r}"
            )
        self.names: List[str] = list(mask_fields)
        self.mask_fields = dict(mask_fields)
        # name -> (op, operands); op "=" for a single operand; operand = (kind, value)
        self._exprs: Dict[str, Tuple[str, List[Tuple[str, str]]]] = {}
        for name, expr in mask_fields.items():
            if not isinstance(expr, str):
                raise ValueError(f"mask_fields[{name!r}] must be a str, got {expr!r}")
            tokens = expr.split()
            occluders = _OCCLUDERS.fullmatch(expr.strip())
            if occluders:
                arg = occluders.group(1)
                if arg not in mask_fields or arg == name:
                    raise ValueError(
                        f"mask_fields[{name!r}] = {expr!r}: occluders() takes another mask name of "
                        f"the mapping ({[n for n in mask_fields if n != name]})"
                    )
                self._exprs[name] = ("occluders", [("mask", arg)])
            elif len(tokens) == 1:
                self._exprs[name] = ("=", [self._operand(name, tokens[0])])
            elif len(tokens) == 3 and tokens[1] in _OPS:
                ops = [self._operand(name, tokens[0]), self._operand(name, tokens[2])]
                self._exprs[name] = (tokens[1], ops)
            else:
                raise ValueError(
                    f"mask_fields[{name!r}] = {expr!r} does not parse: expected 'KEY', 'A or B', "
                    "'A - B', 'A & B' or 'A | B' (operands: mask names, annotation keys or 'empty')"
                )
        # masks computed per image, from the other objects of the image (see resolve_occluders)
        self.occluder_names = [n for n, (op, _) in self._exprs.items() if op == "occluders"]
        for name, (op, ops) in self._exprs.items():
            used = [v for kind, v in ops if kind == "mask" and v in self.occluder_names]
            if op != "occluders" and used:
                raise ValueError(
                    f"mask_fields[{name!r}] = {self.mask_fields[name]!r} uses the occluder mask "
                    f"{used[0]!r}, which is computed per image after the others: use its source "
                    "mask instead"
                )
        self._order = self._topological_order()
        self.keys = sorted({v for _, ops in self._exprs.values() for k, v in ops if k == "key"})

    def _operand(self, owner: str, token: str) -> Tuple[str, str]:
        if token == _EMPTY:
            return ("empty", token)
        # Another mask's name refers to that mask; the own name can only be an annotation key.
        if token in self.mask_fields and token != owner:
            return ("mask", token)
        return ("key", token)

    def _topological_order(self) -> List[str]:
        order: List[str] = []
        state: Dict[str, int] = {}  # 1 = visiting, 2 = done

        def visit(name: str, path: List[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join(path[path.index(name) :] + [name])
                raise ValueError(f"mask_fields define masks in terms of each other: {cycle}")
            state[name] = 1
            for kind, value in self._exprs[name][1]:
                if kind == "mask":
                    visit(value, path + [name])
            state[name] = 2
            order.append(name)

        for name in self.names:
            visit(name, [])
        return order

    def resolve(
        self, annotation: Mapping[str, Any], height: int, width: int
    ) -> Tuple[Dict[str, Optional[Any]], int]:
        """
        Evaluate every mask of one annotation.

        Args:
            annotation: the JSON annotation.
            height, width: its image's size.

        Returns:
            (masks, num_dropped_polygons): masks is a dict name -> polygons / RLE dict / None
            (not annotated), in mapping order.

        Raises:
            MaskFieldError: naming the mask and key whose value is malformed.
        """
        values: Dict[str, Optional[Any]] = {}
        raw: Dict[str, Tuple[Optional[Any], int]] = {}

        def operand(kind: str, value: str) -> Optional[Any]:
            if kind == "mask":
                return values[value]
            if kind == "empty":
                return []
            if value not in raw:
                try:
                    raw[value] = normalize(annotation.get(value), height, width)
                except MaskFieldError as e:
                    raise MaskFieldError(f"key {value!r} {e}") from None
            return raw[value][0]

        for name in self._order:
            op, ops = self._exprs[name]
            try:
                if op == "occluders":
                    result = None  # filled by resolve_occluders, once the image is read
                elif op == "=":
                    result = operand(*ops[0])
                elif op == "or":
                    # A key falls back when it is absent, not when its polygons are all degenerate:
                    # that mask then stays not annotated rather than being silently replaced.
                    kind, value = ops[0]
                    if kind == "key":
                        absent = annotation.get(value) is None
                    else:
                        absent = kind == "mask" and values[value] is None
                    result = operand(*ops[1]) if absent else operand(*ops[0])
                else:
                    a, b = operand(*ops[0]), operand(*ops[1])
                    result = None if a is None or b is None else derived_mask(op, a, b)
            except MaskFieldError as e:
                raise MaskFieldError(f"mask {name!r} ({self.mask_fields[name]!r}): {e}") from None
            values[name] = result
        dropped = sum(n for _, n in raw.values())
        return {name: values[name] for name in self.names}, dropped

    def resolve_occluders(
        self,
        objects: Sequence[Dict[str, Any]],
        depth_key: Optional[str] = None,
        cluster_key: Optional[str] = None,
    ) -> None:
        """
        Fill every ``occluders(SRC)`` mask of one image's objects, in place.

        The occluder mask of an object is the union of the SRC masks of the OTHER objects that lie
        in front of it and whose box overlaps its box, cropped to its box (BCNet / AISFormer's
        occluder). In front: a smaller value under `depth_key` (COCOA's ``order``: 1 is the front);
        when either object has no depth (or depth_key is None), every overlapping object counts.
        With `cluster_key`, the depth is an order within one cluster only (KINS: ``ico_id`` is "the
        relative occlusion id in this cluster", ``oco_id`` the cluster, per the KINS README):
        objects of two different clusters never occlude each other. A crowd region
        (``iscrowd``) is never an occluder; its own occluder mask is its SRC mask, the region, as
        its other masks are, so that evaluation ignores detections there for this mask too.
        The mask is kept as a derived mask of those objects' masks (nothing rasterised here); an
        object with no such neighbour gets an annotated empty mask. Not annotated when its own SRC
        is not.

        Args:
            objects: the image's annotations as the loader made them (``bbox`` XYWH_ABS,
                ``multimask``, ``iscrowd``, optionally `depth_key` and `cluster_key`).
            depth_key: annotation key of the depth order, or None.
            cluster_key: annotation key of the cluster the depth order holds in, or None (one
                order for the whole image).
        """

        def value(obj: Mapping[str, Any], key: Optional[str]) -> Any:
            return obj.get(key) if key else None

        for name in self.occluder_names:
            src = self._exprs[name][1][0][1]
            boxes = [_xyxy(o["bbox"]) for o in objects]
            for i, obj in enumerate(objects):
                if obj["multimask"].get(src) is None:
                    obj["multimask"][name] = None
                    continue
                if obj.get("iscrowd", 0):
                    obj["multimask"][name] = obj["multimask"][src]
                    continue
                depth, cluster = value(obj, depth_key), value(obj, cluster_key)
                front = []
                for j, other in enumerate(objects):
                    mask = other["multimask"].get(src)
                    if j == i or mask is None or other.get("iscrowd", 0):
                        continue
                    other_cluster = value(other, cluster_key)
                    apart = cluster is not None and other_cluster not in (None, cluster)
                    if apart or not _overlap(boxes[i], boxes[j]):
                        continue
                    other_depth = value(other, depth_key)
                    if depth is None or other_depth is None or other_depth < depth:
                        front.append(mask)
                if not front:
                    obj["multimask"][name] = []
                    continue
                x0, y0, x1, y1 = boxes[i]
                box_polygon = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                # one n-ary union of the occluders, not a chain of binary ones
                union = derived_mask("|", *front) if len(front) > 1 else front[0]
                obj["multimask"][name] = derived_mask("&", union, box_polygon)


def _xyxy(box: Sequence[float]) -> Tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h


def _overlap(a: Tuple[float, ...], b: Tuple[float, ...]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
