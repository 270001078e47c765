#!/usr/bin/env python
from setuptools import find_packages, setup

setup(
    name="multimask",
    version="0.1.0",
    description="Several named masks per detected object (amodal / visible / occluded, parts) on detectron2",
    packages=find_packages(exclude=("tests", "benchmarks", "configs", "demo", "tools")),
    python_requires=">=3.8",
    # detectron2 has no PyPI release: install it first (tools/setup_env.sh does, see README.md).
    install_requires=[
        # the tested range: the whole suite passes on torch 2.11.0 / torchvision 0.26.0 (Python 3.12)
        # and on 2.14.1 / 0.29.1 (Python 3.11, what CI runs); see README "Install"
        "torch>=2.11,<2.15",
        "torchvision>=0.26,<0.30",
        "fvcore",
        "iopath",
        "yacs",
        "pycocotools>=2.0.2",
        # C++ COCOeval for MultiMaskCOCOEvaluator when detectron2 is built without _C
        "faster-coco-eval>=1.8",
        "opencv-python-headless",
        "tqdm",
        "matplotlib",
    ],
    # slurm: tools/submit_slurm.py (multimask.engine.SubmititJob); the tests use it too
    # onnx: tools/export_model.py --format onnx (TorchScript-based exporter, no onnxscript);
    # deploy: multimask_deploy / demo/onnx_demo.py (no torch); pins as tested (README "Deploy")
    extras_require={
        "test": ["pytest", "submitit>=1.5", "onnx==1.23.2", "onnxruntime==1.32.0"],
        "slurm": ["submitit>=1.5"],
        "onnx": ["onnx==1.23.2", "onnxruntime==1.32.0"],
        "deploy": ["onnxruntime==1.32.0", "numpy", "opencv-python-headless", "pycocotools>=2.0.2"],
    },
)
