"""multimask_deploy: run exported multimask ONNX models with onnxruntime, numpy and opencv only."""
from .paste import paste_masks
from .predictor import OnnxMultiMaskPredictor, Predictions
from .preprocess import preprocess, resize_bilinear, resize_shortest_edge, shortest_edge_shape
from .render import draw_predictions
