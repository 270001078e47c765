#!/usr/bin/env python
"""
Render the ground truth of registered multi-mask datasets, every mask name, to check a dataset
registration (or the augmentations) before training:

    python tools/visualize_data.py \\
        --config-file configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml \\
        --source annotation --output-dir vis/ --num-images 8
    python tools/visualize_data.py --config-file <yaml> --source dataloader --output-dir vis/ \\
        --panels

``annotation`` draws the dataset dicts of cfg.DATASETS.TRAIN (or --dataset) on the original images;
``dataloader`` draws what the model is trained on: images and ``gt_multimask`` after
MultiMaskDatasetMapper's augmentations.
"""

import argparse
import itertools
import logging
import os
import sys

import cv2

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import multimask  # noqa: E402,F401  (registers the builtin datasets)
from multimask.config import get_multimask_cfg  # noqa: E402
from multimask.data import MultiMaskDatasetMapper  # noqa: E402
from multimask.utils import MultiMaskVisualizer, auto_scale, draw_panels  # noqa: E402

logger = logging.getLogger("multimask.visualize_data")


def setup(args):
    # as train_net.py: MULTIMASK.CUSTOM_IMPORTS (a user's datasets, head) imported before merging
    cfg = get_multimask_cfg(args.config_file, args.opts)
    if args.dataset:
        cfg.DATASETS.TRAIN = tuple(args.dataset)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    return cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Render ground truth of multi-mask datasets")
    parser.add_argument("--source", choices=["annotation", "dataloader"], default="annotation")
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--dataset", nargs="+", help="dataset names (default: cfg.DATASETS.TRAIN)")
    parser.add_argument("--output-dir", required=True, help="directory for the renderings")
    parser.add_argument("--num-images", type=int, default=10, help="images to render (per dataset)")
    parser.add_argument("--masks", default="", help="comma-separated mask names (default: all)")
    parser.add_argument("--panels", action="store_true", help="one panel per mask name")
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="output size relative to the image (default: enlarge images under 512 px so labels "
        "fit)",
    )
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser.parse_args(argv)


def _render(img_rgb, metadata, names, args, **target):
    """target: dataset_dict=... or gt_instances=...; returns RGB uint8."""
    scale = args.scale if args.scale is not None else auto_scale(*img_rgb.shape[:2])
    if args.panels:
        return draw_panels(img_rgb, names, metadata, scale=scale, **target)
    vis = MultiMaskVisualizer(img_rgb, metadata, scale=scale)
    if "dataset_dict" in target:
        return vis.draw_dataset_dict(target["dataset_dict"], mask_names=names).get_image()
    return vis.draw_gt_instances(target["gt_instances"], mask_names=names).get_image()


def _names(metadata, available, requested):
    names = requested or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"--masks {unknown} not among the dataset's mask names {list(available)}")
    return names


def _output_path(output_dir, dataset_name, file_name):
    return os.path.join(output_dir, f"{dataset_name}_{os.path.basename(file_name)}")


def visualize_annotations(cfg, args, requested):
    written = []
    for name in cfg.DATASETS.TRAIN:
        metadata = MetadataCatalog.get(name)
        for dic in itertools.islice(DatasetCatalog.get(name), args.num_images):
            img = utils.read_image(dic["file_name"], "RGB")
            found = list(metadata.get("mask_names", None) or [])
            for a in dic.get("annotations", []):
                found += [n for n in (a.get("multimask") or {}) if n not in found]
            out = _render(img, metadata, _names(metadata, found, requested), args, dataset_dict=dic)
            written.append(_output_path(args.output_dir, name, dic["file_name"]))
            cv2.imwrite(written[-1], out[:, :, ::-1])
    return written


def visualize_dataloader(cfg, args, requested):
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    loader = build_detection_train_loader(cfg, mapper=MultiMaskDatasetMapper(cfg, is_train=True))
    written = []
    for batch in loader:
        for d in batch:
            if len(written) >= args.num_images:
                return written
            img = utils.convert_image_to_rgb(d["image"].permute(1, 2, 0), cfg.INPUT.FORMAT)
            inst = d["instances"]
            names = _names(metadata, inst.gt_multimask.mask_names, requested)
            out = _render(img, metadata, names, args, gt_instances=inst)
            written.append(_output_path(args.output_dir, "dataloader", d["file_name"]))
            cv2.imwrite(written[-1], out[:, :, ::-1])
    return written


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="multimask")
    cfg = setup(args)
    PathManager.mkdirs(args.output_dir)
    requested = [m.strip() for m in args.masks.split(",") if m.strip()]
    if args.source == "annotation":
        written = visualize_annotations(cfg, args, requested)
    else:
        written = visualize_dataloader(cfg, args, requested)
    logger.info(f"Wrote {len(written)} renderings to {args.output_dir}")
    return written


if __name__ == "__main__":
    main()
