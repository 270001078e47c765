#!/usr/bin/env python
"""
Run an exported multimask ONNX model on images with onnxruntime: no torch, no detectron2.

    python tools/export_model.py --config-file <yaml> --format onnx --output export/ \\
        MODEL.WEIGHTS output/model_final.pth
    python demo/onnx_demo.py --model export/model.onnx --input "images/*.png" --output out/ \\
        --json-output out/results.json --labelme-output out/labelme/ --confidence-threshold 0.5

The logic is ``multimask_deploy.demo`` (onnxruntime, numpy, opencv; pycocotools for the JSON and
LabelMe files).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from multimask_deploy.demo import main  # noqa: E402

if __name__ == "__main__":
    main()
