from .coco_evaluation import MultiMaskCOCOEvaluator, SubsetCOCOeval
