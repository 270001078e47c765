"""
Shared pieces of the readers whose masks are images (OSD-Amodal, AmodalSynthDrive, amodal panoptic):
reading a mask or id-map PNG, the image size from its header, and compressed RLE encoding.

A mask read from a PNG is encoded to a compressed RLE at once (``counts`` an ASCII str, as
pycocotools writes it to JSON), so a loaded dataset holds no full-image array: the dense PNG lives
only while its objects are encoded.
"""

import logging
import os
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

__all__ = [
    "as_str_counts",
    "encode_rle",
    "find_image",
    "image_size",
    "progress",
    "read_mask_png",
    "rle_area",
]

logger = logging.getLogger(__name__)


def read_mask_png(path: str, what: str, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """
    Read a single-channel PNG (8 or 16 bit) as it is stored.

    Args:
        path: the PNG file.
        what: what the file is, for messages ("visible id map of image test42").
        size: (height, width) the PNG must have, or None.

    Returns:
        (H, W) integer array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, more than one channel, or a size other than `size`, naming the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: file {path} does not exist")
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"{what}: {path} is not a readable image")
    if array.ndim == 3:
        # an RGB-saved binary mask has equal channels; an RGB id map would be read wrongly
        if array.shape[2] in (3, 4) and all(
            np.array_equal(array[..., 0], array[..., c]) for c in (1, 2)
        ):
            array = array[..., 0]
        else:
            raise ValueError(
                f"{what}: {path} has {array.shape[2]} channels; expected one (an id map or a mask)"
            )
    if size is not None and tuple(array.shape) != tuple(size):
        raise ValueError(
            f"{what}: {path} is {array.shape[0]} x {array.shape[1]} (height x width), but its "
            f"image is {size[0]} x {size[1]}"
        )
    return array


def image_size(path: str, what: str) -> Tuple[int, int]:
    """
    (height, width) of an image, from its header only (the pixels are not decoded).

    Raises:
        FileNotFoundError / ValueError naming the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: image {path} does not exist")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except OSError as e:
        raise ValueError(f"{what}: {path} is not a readable image ({e})") from None
    return height, width


def find_image(stem: str, suffixes: Sequence[str], what: str) -> str:
    """
    The first existing file among ``stem + suffix``; FileNotFoundError listing every path tried.
    """
    tried = [stem + s for s in suffixes]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{what}: no image found; tried {tried}")


def encode_rle(mask: np.ndarray) -> Dict[str, Any]:
    """
    Compressed RLE of a boolean (H, W) mask, ``{"size": [H, W], "counts": str}``.
    """
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def rle_area(rle: Dict[str, Any]) -> int:
    """Pixel count of a compressed or uncompressed RLE, without decoding it."""
    if isinstance(rle["counts"], list):
        rle = mask_util.frPyObjects(rle, *rle["size"])
    return int(mask_util.area(rle))


def as_str_counts(rle: Any) -> Any:
    """An RLE dict with bytes counts (pickled pycocotools output) given str counts; else as is."""
    if isinstance(rle, dict) and isinstance(rle.get("counts"), bytes):
        return dict(rle, counts=rle["counts"].decode("ascii"))
    return rle


def progress(items: Sequence[Any], desc: str) -> Iterable[Any]:
    """`items` with a tqdm progress bar when tqdm is installed and the scan is long enough."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, disable=len(items) < 50, leave=False)
