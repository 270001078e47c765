"""multimask: several named masks per detected object, on stock detectron2."""
from .config import add_multimask_config
from .evaluation import MultiMaskCOCOEvaluator
from .structures import MultiMasks
from . import modeling  # registers MultiMaskRCNN, MultiMaskROIHeads, MultiMaskRCNNConvUpsampleHead
from . import data  # registers builtin datasets
