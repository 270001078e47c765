from .coco_evaluation import MultiMaskCOCOEvaluator
from .cocoeval_backend import SubsetCOCOeval, available_backends, coco_eval_backend
