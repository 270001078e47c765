"""
Load time and memory per image of the issue-24 dataset readers, on generated fixtures in each
released layout at the dataset's real image size.

For each reader, a fixture of ``--images`` images with ``--objects`` objects each (rectangles and
ellipses that overlap, half of them occluded) is written to a temporary folder in the released
layout, then ``load_amodal_json`` loads it ``--rounds`` times. Reported per image: the median load
time (wall), the memory the loaded dataset dicts keep (``tracemalloc``, measured in a separate load:
tracing slows the code) and the peak memory of the load, next to what the same masks would take as
dense uint8 arrays (objects x 3 masks x H x W bytes), the form the readers never build.

    python benchmarks/bench_readers.py [--images 10] [--objects 12] [--rounds 3]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from multimask.data.datasets.amodal import load_amodal_json  # noqa: E402

# reader -> (height, width) of the dataset's images
SIZES = {
    "uoais": (480, 640),  # UOAIS-Sim
    "osd_amodal": (480, 640),  # OSD
    "asd_instances": (1080, 1920),  # AmodalSynthDrive
    "kitti360_aps": (376, 1408),  # KITTI-360
    "walt": (1080, 1920),  # WALT (~1920 x 1080 cameras)
}


def _rle(mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _objects(h: int, w: int, n: int, rng: np.random.Generator) -> List[Tuple[np.ndarray, ...]]:
    """n (amodal, visible) pairs, painted back to front so that later objects occlude earlier."""
    amodals, owner = [], np.full((h, w), -1, np.int32)
    for i in range(n):
        m = np.zeros((h, w), np.uint8)
        cx, cy = int(rng.integers(w // 8, w - w // 8)), int(rng.integers(h // 8, h - h // 8))
        ax, ay = int(rng.integers(w // 20, w // 6)), int(rng.integers(h // 20, h // 5))
        if i % 2:
            cv2.ellipse(m, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
        else:
            m[max(cy - ay, 0) : cy + ay, max(cx - ax, 0) : cx + ax] = 1
        amodals.append(m.astype(bool))
        owner[amodals[-1]] = i
    return [(a, owner == i) for i, a in enumerate(amodals)]


def _polygon(mask: np.ndarray) -> List[List[float]]:
    mask = mask.astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _image(path: str, h: int, w: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.zeros((h, w, 3), np.uint8))


def make_uoais(root, h, w, n_img, n_obj, rng):
    images, anns = [], []
    for i in range(n_img):
        _image(os.path.join(root, "img", f"{i}.png"), h, w)
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        for j, (a, v) in enumerate(_objects(h, w, n_obj, rng)):
            anns.append(
                {"id": i * 1000 + j, "image_id": i, "category_id": 1, "iscrowd": 0,
                 "segmentation": _polygon(a), "visible_mask": _rle(v),
                 "occluded_mask": _rle(a & ~v), "occluded_rate": float((a & ~v).sum() / a.sum())}
            )
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "object"}]}, f)
    return path, os.path.join(root, "img")


def make_walt(root, h, w, n_img, n_obj, rng):
    images, anns = [], []
    for i in range(n_img):
        _image(os.path.join(root, "images", f"{i}.jpg"), h, w)
        images.append({"id": i, "file_name": f"images/{i}.jpg", "height": h, "width": w})
        for j, (a, v) in enumerate(_objects(h, w, n_obj, rng)):
            ys, xs = np.nonzero(a)
            anns.append(
                {"id": i * 1000 + j, "image_id": i, "category_id": 0, "iscrowd": 0,
                 "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                 "occ_percentage": float(100 - 100 * v.sum() / a.sum()),
                 "segmentation": [{"full": _polygon(a), "visible": _polygon(v)}]}
            )
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 0, "name": "car"}]}, f)
    return path, root


def make_osd(root, h, w, n_img, n_obj, rng):
    for sub in ("image_color", "annotation", "amodal_annotation", "occlusion_annotation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(n_img):
        stem = f"test{i}"
        _image(os.path.join(root, "image_color", stem + ".png"), h, w)
        ids = np.zeros((h, w), np.uint8)
        for k, (a, v) in enumerate(_objects(h, w, n_obj, rng), start=1):
            ids[v] = k
            path = os.path.join(root, "amodal_annotation", f"{stem}_{k}.png")
            cv2.imwrite(path, a * np.uint8(255))
            if (a & ~v).any():
                path = os.path.join(root, "occlusion_annotation", f"{stem}_{k}.png")
                cv2.imwrite(path, (a & ~v) * np.uint8(255))
        cv2.imwrite(os.path.join(root, "annotation", stem + ".png"), ids)
    return root, os.path.join(root, "image_color")


def make_asd(root, h, w, n_img, n_obj, rng):
    gt, img = os.path.join(root, "amodal_instance_seg"), os.path.join(root, "images")
    for i in range(n_img):
        frame = os.path.join("vid", f"front_full_{i:04d}")
        _image(os.path.join(img, frame + "_rgb.jpg"), h, w)
        os.makedirs(os.path.dirname(os.path.join(gt, frame)), exist_ok=True)
        ids, entries = np.zeros((h, w), np.uint16), {}
        for k, (a, v) in enumerate(_objects(h, w, n_obj, rng), start=1):
            ids[v] = k
            occluded = bool((a & ~v).any())
            entries[str(k)] = {"category_id": 26, "track_id": k, "occluded": occluded,
                               "amodal_mask": _rle(a) if occluded else [],
                               "occlusion_mask": _rle(a & ~v) if occluded else []}
        cv2.imwrite(os.path.join(gt, frame + "_aminseg.png"), ids)
        with open(os.path.join(gt, frame + "_aminseg.json"), "w") as f:
            json.dump(entries, f)
    return gt, img


def make_panoptic(root, h, w, n_img, n_obj, rng):
    ann, img = os.path.join(root, "amodal_panoptic_seg"), os.path.join(root, "images")
    for i in range(n_img):
        frame = os.path.join("cam0", "seq", f"{i:010d}")
        _image(os.path.join(img, frame + "_rgb.png"), h, w)
        os.makedirs(os.path.dirname(os.path.join(ann, frame)), exist_ok=True)
        pano, entries = np.full((h, w), 7, np.uint16), {}
        for k, (a, v) in enumerate(_objects(h, w, n_obj, rng), start=1):
            thing = 26 * 1000 + k
            pano[v] = thing
            occluded = bool((a & ~v).any())
            entries[str(thing)] = {"occluded": occluded}
            if occluded:
                entries[str(thing)].update(amodal_mask=_rle(a), occlusion_mask=_rle(a & ~v))
        cv2.imwrite(os.path.join(ann, frame + "_ampano.png"), pano)
        with open(os.path.join(ann, frame + "_ampano.json"), "w") as f:
            json.dump(entries, f)
    return ann, img


MAKERS: Dict[str, Callable] = {
    "uoais": make_uoais,
    "osd_amodal": make_osd,
    "asd_instances": make_asd,
    "kitti360_aps": make_panoptic,
    "walt": make_walt,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--objects", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{args.images} images x {args.objects} objects per reader, median of {args.rounds}")
    print("| format | image size | load ms / image | kept MiB / image | peak MiB (load) "
          "| dense masks MiB / image |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, maker in MAKERS.items():
            h, w = SIZES[fmt]
            ann, images = maker(os.path.join(tmp, fmt), h, w, args.images, args.objects, rng)
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                dicts = load_amodal_json(ann, images, fmt)
                times.append(time.perf_counter() - t0)
            assert len(dicts) == args.images
            del dicts
            tracemalloc.start()
            dicts = load_amodal_json(ann, images, fmt)
            kept, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            n_obj = sum(len(d["annotations"]) for d in dicts) / len(dicts)
            dense = n_obj * 3 * h * w / 2**20
            print(
                f"| `{fmt}` | {w} x {h} "
                f"| {1000 * statistics.median(times) / args.images:.1f} "
                f"| {kept / args.images / 2**20:.3f} | {peak / 2**20:.1f} | {dense:.1f} |"
            )


if __name__ == "__main__":
    main()
