"""Ground-truth structures: ``MultiMasks`` (K named masks per instance) and the mask forms it stores."""

from .leaves import BitCrop, PolygonMask
from .multimasks import MultiMasks
from .named_masks import NamedMasks
from .segmentation import (
    DERIVED_OPS,
    derived_mask,
    is_derived,
    rle_runs,
    segmentation_to_bitmask,
    segmentation_to_crop,
    segmentation_to_rle,
    shift_polygon_coords,
)
from .storage import MaskStorage
