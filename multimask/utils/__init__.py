"""After training: drawing several named masks per instance, JSON results, LabelMe, TorchScript."""

from .export import (
    SCRIPTING_FIELDS,
    TRACED_OUTPUT_NAMES,
    ExportableMultiMaskRCNN,
    export_scripting,
    export_tracing,
    outputs_to_instances,
    prepare_image,
)
from .labelme_export import LABELME_VERSION, instances_to_labelme, mask_to_polygons
from .results_json import (
    coco_records,
    encode_instances,
    instances_to_coco_json,
    multimask_records,
)
from .visualizer import (
    DEFAULT_MASK_STYLES,
    MASK_STYLES,
    MultiMaskVisualizer,
    auto_scale,
    draw_panels,
)
