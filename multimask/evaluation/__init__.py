from .coco_evaluation import MultiMaskCOCOEvaluator
from .cocoeval_backend import available_backends, coco_eval_backend
from .completion import completion_miou
from .given_boxes import attach_given_boxes, load_detections, make_given_instances
from .occlusion_order import evaluate_occlusion_order
