"""MP3D-Amodal (format ``mp3d_amodal``): the COCOA-layout pickle as released, via COCOA's reader."""

import json
import os
import pickle

import numpy as np
import pycocotools.mask as mask_util
import pytest

from multimask.data.datasets.amodal import load_amodal_json

from .test_data_coco import H, W, bits, write_images

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


FULL, VISIBLE = rect(5, 30, 5, 40), rect(5, 30, 20, 40)


def rle_bytes(mask):
    """pycocotools' own output: counts are bytes, as MP3D's pickle stores them."""
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def mp3d_content():
    region = {
        "segmentation": rle_bytes(FULL),  # amodal, an RLE (COCOA: a polygon)
        "visible_mask": rle_bytes(VISIBLE),  # every MP3D region is occluded
        "area": np.float64(FULL.sum()),
        "occlusion_rate": np.float32(0.4),
        "category_id": 17,
        "isStuff": 0,
        "name": "chair",
    }
    return {
        "images": [{"id": 3, "file_name": "house_0003.jpg", "height": H, "width": W}],
        "annotations": [{"id": 3, "image_id": 3, "depth_constraint": "", "regions": [region]}],
    }


def check(dicts):
    (d,) = dicts
    (obj,) = d["annotations"]
    np.testing.assert_array_equal(bits(obj["multimask"]["amodal"]), FULL)
    np.testing.assert_array_equal(bits(obj["multimask"]["visible"]), VISIBLE)
    np.testing.assert_array_equal(bits(obj["multimask"]["occluded"]), FULL & ~VISIBLE)
    assert isinstance(obj["multimask"]["amodal"]["counts"], str)
    assert obj["occlude_rate"] == pytest.approx(0.4) and type(obj["occlude_rate"]) is float
    assert obj["category_id"] == 0  # COCOA's one class, object


def test_mp3d_pickle_and_json(tmp_path):
    image_root = str(tmp_path / "mp3d_eval")
    write_images(image_root, mp3d_content()["images"])
    pkl = str(tmp_path / "MP3D_seleted_eval_10.29.pkl")
    with open(pkl, "wb") as f:
        pickle.dump(mp3d_content(), f)
    check(load_amodal_json(pkl, image_root, "mp3d_amodal", "test_mp3d_pkl"))
    # a JSON conversion (counts decoded, rate a float) reads the same
    content = mp3d_content()
    region = content["annotations"][0]["regions"][0]
    for key in ("segmentation", "visible_mask"):
        region[key] = dict(region[key], counts=region[key]["counts"].decode())
    region["area"], region["occlusion_rate"] = float(region["area"]), 0.4
    path = str(tmp_path / "mp3d.json")
    with open(path, "w") as f:
        json.dump(content, f)
    check(load_amodal_json(path, image_root, "mp3d_amodal"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_mp3d_pickle_that_would_run_code_is_refused(tmp_path):
    pkl = str(tmp_path / "evil.pkl")
    with open(pkl, "wb") as f:
        pickle.dump({"annotations": [_Evil()]}, f)
    with pytest.raises(ValueError, match=r"evil.pkl: not an MP3D-Amodal annotation pickle: "
                       r"refusing to load posix.system"):
        load_amodal_json(pkl, str(tmp_path), "mp3d_amodal")


def test_mp3d_builtin_names_read_the_released_files(tmp_path):
    """mp3d_amodal_{train,eval}: the unpacked mp3d_*.zip beside MP3D_seleted_*_10.29.pkl."""
    from multimask.data.datasets.builtin import BUILTIN_AMODAL_LAYOUT_SPLITS, _load_builtin

    fmt, image_dir, pkl_rel = BUILTIN_AMODAL_LAYOUT_SPLITS["mp3d_amodal_eval"]
    assert pkl_rel.endswith("MP3D_seleted_eval_10.29.pkl") and fmt == "mp3d_amodal"
    image_root, pkl = str(tmp_path / image_dir), str(tmp_path / pkl_rel)
    write_images(image_root, mp3d_content()["images"])
    with open(pkl, "wb") as f:
        pickle.dump(mp3d_content(), f)
    dicts = _load_builtin("mp3d_amodal_eval", fmt, pkl, image_root, str(tmp_path))
    check(dicts)
    # its depth_constraint (empty: one region) is the stated occlusion order, with no pair
    assert dicts[0]["occlusion_order"] == []
