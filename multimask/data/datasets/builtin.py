"""
Builtin dataset names, registered on import and loaded on first use.

The amodal datasets are read from ``$DETECTRON2_DATASETS`` (default ``datasets``), as detectron2's
own builtins are, with this layout::

    $DETECTRON2_DATASETS/
      kins/training/image_2/  kins/testing/image_2/
      kins/annotations/update_train_2020.json   update_test_2020.json     (KINS 2020)
      kins/annotations/instances_train.json     instances_val.json        (KINS 2019)
      coco/train2014/  coco/val2014/
      cocoa/annotations/COCO_amodal_train2014.json  COCO_amodal_val2014.json            (COCOA)
      cocoa/annotations/COCO_amodal_train2014_with_classes.json                         (COCOA-cls)
      cocoa/annotations/COCO_amodal_val2014_with_classes.json
      d2s/images/
      d2s/annotations/D2S_amodal_training_rot0.json  D2S_amodal_validation.json
      UOAIS-Sim/{train,val}/  UOAIS-Sim/annotations/coco_anns_uoais_sim_{train,val}.json (UOAIS-Sim)
      syntable/{train,validation}/  syntable/train/uoais_train.json                      (SynTable)
      syntable/validation/uoais_val.json
      OSD-0.2-depth/{image_color,annotation,amodal_annotation,occlusion_annotation}/    (OSD-Amodal)
      amodal_synth_drive/{train,val}/images/front/<video>/<frame>_rgb.jpg       (AmodalSynthDrive)
      amodal_synth_drive/{train,val}/amodal_instance_seg/front/<video>/<frame>_aminseg.{json,png}
      amodal_synth_drive/{train,val}/amodal_panoptic_seg/<camera>/<seq>/<frame>_ampano.{png,json}
      kitti360_aps/{train,val}/images/<seq>/<frame>_rgb.png                      (KITTI-360-APS)
      kitti360_aps/{train,val}/amodal_panoptic_seg/<seq>/<frame>_ampano.{png,json}
      cwalt_train/ann.json  cwalt_train/images/   cwalt_test/ann.json  cwalt_test/images/   (WALT)
      mp3d_amodal/mp3d_train/  mp3d_amodal/MP3D_seleted_train_10.29.pkl               (MP3D-Amodal)
      mp3d_amodal/mp3d_eval/   mp3d_amodal/MP3D_seleted_eval_10.29.pkl

WALT's folders are those of its configs (``data/cwalt_train/`` and ``data/cwalt_test/``, each with
its ``ann.json`` and the images it names); MP3D-Amodal's are its released files
(``mp3d_{train,eval}.zip`` unpacked, and the two pickles). KITTI-360-APS follows the amodal
panoptic evaluation's rule (an ``amodal_panoptic_seg`` folder under a base directory) with the
split folders of AmodalSynthDrive: the public code read for it fixes no split folder names.

The classes of the KINS and COCOA names are known before loading, as their files list them (KINS
2020: 8 categories, ``rider`` unused; KINS 2019: 7; COCOA: ``object``); COCOA-cls and D2SA names get
theirs when loaded. Loading a name whose files are missing raises FileNotFoundError naming the
expected path. The synthetic datasets ``multimask_synthetic_train`` / ``multimask_synthetic_val``
are generated on first use into ``$MULTIMASK_CACHE/synthetic`` (see
:mod:`multimask.data.datasets.synthetic`).
"""

import os
from typing import Dict, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from .amodal import RELEASED_CATEGORIES, amodal_metadata, categories_metadata, load_amodal_json
from .synthetic import register_synthetic_dataset

__all__ = [
    "BUILTIN_AMODAL_LAYOUT_SPLITS",
    "BUILTIN_AMODAL_SPLITS",
    "BUILTIN_SYNTHETIC_SPLITS",
    "register_all_amodal",
]

_KINS, _COCOA, _D2SA = "kins/annotations/", "cocoa/annotations/COCO_amodal_", "d2s/annotations/"

# name -> (format, image directory, annotation file), relative to $DETECTRON2_DATASETS
BUILTIN_AMODAL_SPLITS: Dict[str, Tuple[str, str, str]] = {
    "kins_2020_train": ("kins_2020", "kins/training/image_2", _KINS + "update_train_2020.json"),
    "kins_2020_test": ("kins_2020", "kins/testing/image_2", _KINS + "update_test_2020.json"),
    "kins_2019_train": ("kins_2019", "kins/training/image_2", _KINS + "instances_train.json"),
    "kins_2019_test": ("kins_2019", "kins/testing/image_2", _KINS + "instances_val.json"),
    "cocoa_train": ("cocoa", "coco/train2014", _COCOA + "train2014.json"),
    "cocoa_val": ("cocoa", "coco/val2014", _COCOA + "val2014.json"),
    "cocoa_cls_train": ("cocoa_cls", "coco/train2014", _COCOA + "train2014_with_classes.json"),
    "cocoa_cls_val": ("cocoa_cls", "coco/val2014", _COCOA + "val2014_with_classes.json"),
    "d2sa_train": ("d2sa", "d2s/images", _D2SA + "D2S_amodal_training_rot0.json"),
    "d2sa_val": ("d2sa", "d2s/images", _D2SA + "D2S_amodal_validation.json"),
}

_UOAIS, _ASD = "UOAIS-Sim/", "amodal_synth_drive/"
# The released layouts of issue 24 (paths as their own code registers them: gist-ailab/uoais and
# ngzhili/uoais-v2 adet/data/builtin.py, the UOAIS README for OSD, S-AModal's get_asd_dataset,
# APSNet's read_asd_files): name -> (format, image directory, annotation file or folder)
BUILTIN_AMODAL_LAYOUT_SPLITS: Dict[str, Tuple[str, str, str]] = {
    **{
        f"uoais_sim_{split}": (
            "uoais",
            _UOAIS + split,
            f"{_UOAIS}annotations/coco_anns_uoais_sim_{split}.json",
        )
        for split in ("train", "val")
    },
    "syntable_train": ("uoais", "syntable/train", "syntable/train/uoais_train.json"),
    "syntable_val": ("uoais", "syntable/validation", "syntable/validation/uoais_val.json"),
    "osd_amodal": ("osd_amodal", "OSD-0.2-depth/image_color", "OSD-0.2-depth"),
    **{
        f"asd_{split}": (
            "asd_instances",
            f"{_ASD}{split}/images/front",
            f"{_ASD}{split}/amodal_instance_seg/front",
        )
        for split in ("train", "val")
    },
    **{
        f"asd_amodal_panoptic_{split}": (
            "amodal_panoptic",
            f"{_ASD}{split}/images",
            f"{_ASD}{split}/amodal_panoptic_seg",
        )
        for split in ("train", "val")
    },
    **{
        f"kitti360_aps_{split}": (
            "kitti360_aps",
            f"kitti360_aps/{split}/images",
            f"kitti360_aps/{split}/amodal_panoptic_seg",
        )
        for split in ("train", "val")
    },
    # WALT's configs: data_root 'data/cwalt_train/', data_root_test 'data/cwalt_test/'
    **{f"walt_{s}": ("walt", f"cwalt_{s}", f"cwalt_{s}/ann.json") for s in ("train", "test")},
    **{
        f"mp3d_amodal_{split}": (
            "mp3d_amodal",
            f"mp3d_amodal/mp3d_{split}",
            f"mp3d_amodal/MP3D_seleted_{split}_10.29.pkl",
        )
        for split in ("train", "eval")
    },
}

# name -> (number of images, seed); the two splits draw from disjoint random streams
BUILTIN_SYNTHETIC_SPLITS: Dict[str, Tuple[int, int]] = {
    "multimask_synthetic_train": (300, 0),
    "multimask_synthetic_val": (60, 1),
    # the accuracy benchmark's split (benchmarks/accuracy_tradeoff.py): 500 images, so that the
    # evaluation itself moves AP by well under the training seeds' spread
    "multimask_synthetic_val_500": (500, 2),
}


def _load_builtin(name: str, fmt: str, json_file: str, image_root: str, root: str):
    for path, what in ((json_file, "annotation file"), (image_root, "image directory")):
        if not PathManager.exists(path):
            raise FileNotFoundError(
                f"builtin dataset '{name}': its {what} {path} does not exist. Builtin datasets are "
                f"read from $DETECTRON2_DATASETS (now {root!r}); the expected layout is in "
                "multimask/data/datasets/builtin.py."
            )
    return load_amodal_json(json_file, image_root, fmt, name)


def register_all_amodal(root: str) -> None:
    """
    Register every name of ``BUILTIN_AMODAL_SPLITS`` and ``BUILTIN_AMODAL_LAYOUT_SPLITS`` with its
    files under `root`.

    Args:
        root: the datasets directory ($DETECTRON2_DATASETS).
    """
    splits = {**BUILTIN_AMODAL_SPLITS, **BUILTIN_AMODAL_LAYOUT_SPLITS}
    for name, (fmt, image_dir, json_rel) in splits.items():
        json_file, image_root = os.path.join(root, json_rel), os.path.join(root, image_dir)
        DatasetCatalog.register(
            name,
            lambda name=name, fmt=fmt, j=json_file, i=image_root: _load_builtin(
                name, fmt, j, i, root
            ),
        )
        meta = amodal_metadata(fmt, json_file, image_root)
        if fmt in RELEASED_CATEGORIES:
            # the classes of the files as released, known before loading; loading the file sets
            # the same (a file listing others is an error naming it, see coco._set_classes)
            meta.update(categories_metadata(RELEASED_CATEGORIES[fmt]))
        MetadataCatalog.get(name).set(**meta)


def _register_all_synthetic() -> None:
    for name, (num_images, seed) in BUILTIN_SYNTHETIC_SPLITS.items():
        register_synthetic_dataset(name, num_images, seed)


register_all_amodal(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
_register_all_synthetic()
