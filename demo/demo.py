#!/usr/bin/env python
"""
Run a multimask model on images, a video or a webcam, and draw every predicted mask name.

    python demo/demo.py \\
        --config-file configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml \\
        --input "images/*.png" --output out/ --masks amodal,visible \\
        --json-output out/results.json --opts MODEL.WEIGHTS output/model_final.pth

Masks for boxes you already have (another detector's): --boxes FILE_OR_DIR (see --help and
``load_boxes``); the model's box head is then not used, each given box gets its K masks.

Results go to files (--output drawings, --json-output, --labelme-output), which never needs a
display; only when none is given (and always for --webcam) are they shown in a window, which needs
an opencv with a GUI (not opencv-python-headless) and a display.
"""

import argparse
import json
import os
import sys
import time

import cv2
import tqdm

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import multimask  # noqa: E402,F401  (registers the model, its heads and the builtin datasets)
from multimask.config import fall_back_to_cpu, get_multimask_cfg  # noqa: E402
from multimask.data.model_classes import dataset_ids, model_class_ids  # noqa: E402
from multimask.evaluation.given_boxes import dataset_category_ids, records_to_given  # noqa: E402
from multimask.utils.labelme_export import (  # noqa: E402
    DEFAULT_EPSILON,
    DEFAULT_MIN_IOU,
    instances_to_labelme,
)
from multimask.utils.results_json import instances_to_coco_json  # noqa: E402
from multimask_deploy.demo import expand_inputs, labelme_paths  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predictor import VisualizationDemo  # noqa: E402

WINDOW_NAME = "multimask detections"
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Codec by output extension; mp4v and MJPG come with opencv's bundled ffmpeg on every platform.
_VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "x264"}


def setup_cfg(args):
    # as train_net.py: MULTIMASK.CUSTOM_IMPORTS (a user's head) imported before the file is merged
    cfg = get_multimask_cfg(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    fall_back_to_cpu(cfg)
    cfg.freeze()
    return cfg


def get_parser():
    parser = argparse.ArgumentParser(description="multimask demo")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--webcam", action="store_true", help="take inputs from webcam")
    parser.add_argument("--video-input", help="path to a video file")
    parser.add_argument(
        "--input", nargs="+", help="image files, or one glob pattern such as 'dir/*.jpg'"
    )
    parser.add_argument(
        "--output",
        help="a file (one image or a video) or a directory to save the drawings in; a path "
        "ending in '/', or given several inputs, is a directory and is created. Without it and "
        "without --json-output / --labelme-output, show them in a window (needs a display and an "
        "opencv with a GUI).",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score of a drawn instance"
    )
    parser.add_argument(
        "--masks",
        default="",
        help="comma-separated mask names to draw, e.g. amodal,visible (default: all)",
    )
    parser.add_argument(
        "--panels",
        action="store_true",
        help="one panel per mask name side by side, not one overlay",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="drawing size relative to the image (default: enlarge images under 512 px so "
        "labels fit)",
    )
    parser.add_argument(
        "--json-output",
        metavar="FILE",
        help="write COCO-style results (one RLE per mask name per instance) of all inputs to FILE",
    )
    parser.add_argument(
        "--labelme-output",
        metavar="DIR",
        help="write DIR/<image name>.json per input image: the --masks names of each object as "
        "LabelMe polygons '<class>_<mask name>' sharing a group_id, to correct in LabelMe and load "
        "with register_multimask_labelme_instances",
    )
    parser.add_argument(
        "--labelme-epsilon",
        type=float,
        default=DEFAULT_EPSILON,
        metavar="PIXELS",
        help="simplify the --labelme-output outlines (Douglas-Peucker) by up to this many pixels, "
        f"less where an outline would lose IoU {DEFAULT_MIN_IOU} with its pixels; 0 = a vertex "
        "at every pixel corner",
    )
    parser.add_argument(
        "--boxes",
        metavar="FILE_OR_DIR",
        help="predict the masks of these boxes instead of the model's detections (with --input): "
        "a COCO detection results JSON (a list of records with image_id, category_id in the "
        "dataset's ids, bbox XYWH, score, as coco_instances_results.json), whose image_id is an "
        "image of --boxes-dataset (matched to --input by file name; a record's own file_name "
        "wins), or a folder with one such list per image, DIR/<image name>.json. Records scoring "
        "below --confidence-threshold are skipped",
    )
    parser.add_argument(
        "--boxes-dataset",
        metavar="NAME",
        help="registered dataset whose image ids and category ids --boxes uses (default: the "
        "config's DATASETS.TEST[0])",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs to override"
    )
    return parser


def _is_dir_output(output: str, num_inputs: int) -> bool:
    return os.path.isdir(output) or output.endswith(os.sep) or num_inputs > 1


def _shows_window(args) -> bool:
    """Results are shown in a window only when no file is asked for (and always for --webcam)."""
    return bool(args.webcam) or not (args.output or args.json_output or args.labelme_output)


def _open_window():
    """Open the demo's window, or raise a clear error where that cannot work."""
    alternative = "give --output FILE_OR_DIR (or --json-output / --labelme-output) to write files"
    info = cv2.getBuildInformation().splitlines()
    gui = [line for line in info if line.strip().startswith("GUI:")]
    if gui and gui[0].split(":", 1)[1].strip() == "NONE":
        raise RuntimeError(
            f"demo.py shows results in a window when no output file is given, but this opencv "
            f"({cv2.__version__}) is built without a GUI (opencv-python-headless): {alternative}, "
            f"or install opencv-python"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise RuntimeError(
            f"demo.py shows results in a window when no output file is given, but there is no "
            f"display (DISPLAY is not set): {alternative}"
        )
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
    except cv2.error as e:
        raise RuntimeError(f"demo.py cannot open a window ({e}): {alternative}") from None


def _records_by_image(path, paths, dataset_name):
    """--boxes FILE: the records of each input image (by file name), through the dataset."""
    with PathManager.open(path, "r") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"--boxes {path}: not valid JSON: {e}") from None
    if not isinstance(records, list):
        raise ValueError(f"--boxes {path}: expected a list of detection records")
    names = None  # image_id -> file name, from the dataset, read only when needed
    by_name = {}
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not {"category_id", "bbox"} <= set(r):
            raise ValueError(f"--boxes {path}: record {i} lacks category_id or bbox: {r!r:.200}")
        if "file_name" in r:
            name = os.path.basename(r["file_name"])
        elif "image_id" not in r:
            raise ValueError(f"--boxes {path}: record {i} has neither image_id nor file_name")
        else:
            if names is None:
                if not dataset_name or dataset_name not in DatasetCatalog.list():
                    raise ValueError(
                        f"--boxes {path}: records name images by image_id, which needs a "
                        f"registered dataset (--boxes-dataset), got {dataset_name!r}"
                    )
                names = {
                    d["image_id"]: os.path.basename(d["file_name"])
                    for d in DatasetCatalog.get(dataset_name)
                }
            if r["image_id"] not in names:
                raise ValueError(
                    f"--boxes {path}: record {i}: image_id {r['image_id']!r} is not in dataset "
                    f"'{dataset_name}'"
                )
            name = names[r["image_id"]]
        by_name.setdefault(name, []).append(r)
    return {p: by_name.get(os.path.basename(p), []) for p in paths}


def load_boxes(path, paths, dataset_name):
    """
    The detection records (``bbox`` XYWH, ``category_id`` in the dataset's ids, ``score``) of
    each input image: from one results JSON, or from DIR/<image name>.json per image (a missing
    file is an error: write [] for an image without detection).
    """
    if not os.path.isdir(path):
        return _records_by_image(path, paths, dataset_name)
    out = {}
    for p in paths:
        json_path = os.path.join(path, os.path.splitext(os.path.basename(p))[0] + ".json")
        if not os.path.isfile(json_path):
            raise FileNotFoundError(f"--boxes {path}: no {json_path} for input {p}")
        with open(json_path) as f:
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"--boxes {json_path}: not valid JSON: {e}") from None
        if not isinstance(records, list):
            raise ValueError(f"--boxes {json_path}: expected a list of detection records")
        out[p] = records
    return out


def _given(demo, args, records, image, path):
    """The kept records of one image as given instances (bad boxes: an error naming both files)."""
    kept = [r for r in records if r.get("score", 1.0) >= args.confidence_threshold]
    num_classes = demo.predictor.num_classes
    category_ids = {}
    if args.boxes_dataset:  # its ids -> its contiguous ids -> the model's (one class, the union's)
        to_model = model_class_ids(demo.cfg, args.boxes_dataset)  # loads its classes if needed
        category_ids = dataset_category_ids(args.boxes_dataset)
        category_ids = {k: to_model[v] for k, v in category_ids.items() if v in to_model}
    category_ids = category_ids or {i: i for i in range(num_classes)}
    where = f"--boxes {args.boxes}, image {path}: "
    return records_to_given(kept, image.shape[:2], category_ids, num_classes, where)


def run_images(demo, args, logger, records=None):
    """Predict (and draw) every --input image; append its results to `records` unless None."""
    paths = expand_inputs(args.input)
    boxes = load_boxes(args.boxes, paths, args.boxes_dataset) if args.boxes else None
    as_dir = args.output and _is_dir_output(args.output, len(paths))
    if as_dir:
        PathManager.mkdirs(args.output)
    json_paths = labelme_paths(paths, args.labelme_output) if args.labelme_output else None
    show = _shows_window(args)
    classes = demo.metadata.get("thing_classes", None)
    for idx, path in enumerate(tqdm.tqdm(paths, disable=show)):
        img = read_image(path, format="BGR")
        given = _given(demo, args, boxes[path], img, path) if boxes is not None else None
        start = time.time()
        if args.output or show:
            predictions, drawing = demo.run_on_image(img, given)
        else:  # files of results only: no drawing
            predictions = demo.predict(img, given)
        logger.info(f"{path}: detected {len(predictions)} instances in {time.time() - start:.2f}s")
        if records is not None:
            records += instances_to_coco_json(
                predictions,
                idx,
                demo.pred_mask_names,
                file_name=path,
                dataset_ids=dataset_ids(demo.metadata),
            )
        if json_paths:
            instances_to_labelme(
                predictions,
                path,
                json_paths[idx],
                classes,
                demo.mask_names,
                pred_mask_names=demo.pred_mask_names,
                epsilon=args.labelme_epsilon,
            )
        if args.output:
            out = os.path.join(args.output, os.path.basename(path)) if as_dir else args.output
            if os.path.splitext(out)[1].lower() not in _IMAGE_EXTENSIONS:
                out += ".png"
            cv2.imwrite(out, drawing[:, :, ::-1])
        elif show:
            cv2.imshow(WINDOW_NAME, drawing[:, :, ::-1])
            if cv2.waitKey(0) == 27:
                break  # esc to quit
    if show:
        cv2.destroyAllWindows()


def _open_writer(path, fps, frame_shape):
    ext = os.path.splitext(path)[1].lower()
    codec = _VIDEO_CODECS.get(ext)
    if codec is None:
        raise ValueError(f"video output {path}: use one of the extensions {sorted(_VIDEO_CODECS)}")
    h, w = frame_shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, (w, h), True)
    if not writer.isOpened():
        raise RuntimeError(f"could not open a {codec} video writer for {path}; try a .mp4 output")
    return writer


def run_video(demo, args, logger, records=None):
    """Predict and draw every frame; append its results to `records` unless None."""
    if args.webcam:
        video, source = cv2.VideoCapture(0), "webcam"
    else:
        video, source = cv2.VideoCapture(args.video_input), args.video_input
        if not video.isOpened():
            raise FileNotFoundError(f"cannot open video {args.video_input}")
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    writer, out = None, None
    if args.output and not args.webcam:
        out = args.output
        if os.path.isdir(out) or out.endswith(os.sep):
            PathManager.mkdirs(out)
            out = os.path.join(out, os.path.splitext(os.path.basename(source))[0] + ".mp4")
    ids = dataset_ids(demo.metadata)
    show = _shows_window(args)
    frames = demo.run_on_video(video, draw=bool(out) or show)
    for idx, (predictions, drawing) in enumerate(tqdm.tqdm(frames)):
        if records is not None:
            records += instances_to_coco_json(
                predictions, idx, demo.pred_mask_names, file_name=source, dataset_ids=ids
            )
        if out:
            if writer is None:  # panels make frames wider than the video: size from the first one
                writer = _open_writer(out, fps, drawing.shape)
            writer.write(drawing[:, :, ::-1])
        elif show:
            cv2.imshow(WINDOW_NAME, drawing[:, :, ::-1])
            if cv2.waitKey(1) == 27:
                break  # esc to quit
    video.release()
    if writer is not None:
        writer.release()
        logger.info(f"wrote {out}")
    if show:
        cv2.destroyAllWindows()


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="multimask")
    logger = setup_logger()
    logger.info("Arguments: " + str(args))
    if sum(bool(x) for x in (args.input, args.video_input, args.webcam)) != 1:
        raise ValueError("give exactly one of --input, --video-input, --webcam")
    if args.labelme_output and not args.input:
        raise ValueError("--labelme-output writes one file per image: use it with --input")
    if args.boxes and not args.input:
        raise ValueError("--boxes gives boxes per image: use it with --input")
    if args.labelme_epsilon < 0:
        raise ValueError(f"--labelme-epsilon must be >= 0 pixels, got {args.labelme_epsilon}")
    if _shows_window(args):
        _open_window()  # before the model is built: fail fast where no window can open
    cfg = setup_cfg(args)
    if args.boxes and args.boxes_dataset is None and len(cfg.DATASETS.TEST):
        args.boxes_dataset = cfg.DATASETS.TEST[0]
    masks = [m.strip() for m in args.masks.split(",") if m.strip()]
    demo = VisualizationDemo(
        cfg,
        mask_names=masks or None,
        panels=args.panels,
        scale=args.scale,
        given_boxes=bool(args.boxes),
    )
    # Results are kept only to be written: without --json-output a long video or the webcam
    # would otherwise grow this list without bound.
    records = [] if args.json_output else None
    if args.input:
        run_images(demo, args, logger, records)
    else:
        run_video(demo, args, logger, records)
    if args.json_output:
        PathManager.mkdirs(os.path.dirname(os.path.abspath(args.json_output)))
        with PathManager.open(args.json_output, "w") as f:
            json.dump(records, f)
        logger.info(f"wrote {len(records)} results to {args.json_output}")
    return records


if __name__ == "__main__":
    main()
