import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import Metadata
from detectron2.structures import Boxes, BoxMode, Instances

from multimask import MultiMasks
from multimask.utils import MultiMaskVisualizer, auto_scale, draw_panels

NAMES = ["amodal", "visible", "occluded"]
S = 64
GRAY = 128
# One object: amodal x 8..39, y 8..55; its right part (x >= 28) is hidden by something else.
AMODAL = (8, 8, 40, 56)  # x0, y0, x1, y1 (exclusive)
VISIBLE = (8, 8, 28, 56)
OCCLUDED = (28, 8, 40, 56)
META = Metadata(name="test_visualizer", thing_classes=["cube", "ball"])


def _mask(rect):
    m = np.zeros((S, S), dtype=bool)
    x0, y0, x1, y1 = rect
    m[y0:y1, x0:x1] = True
    return m


def _region(rect, grow):
    """The rect grown (grow > 0) or shrunk (grow < 0) by `grow` px on every side."""
    x0, y0, x1, y1 = rect
    return _mask((max(x0 - grow, 0), max(y0 - grow, 0), min(x1 + grow, S), min(y1 + grow, S)))


def _below_label(region):
    """The region without the rows a label at the box's top-left corner covers."""
    region = region.copy()
    region[: AMODAL[1] + 16] = False
    return region


def _predictions(with_boxes=False):
    inst = Instances((S, S))
    inst.pred_multimasks = torch.from_numpy(
        np.stack([_mask(AMODAL), _mask(VISIBLE), _mask(OCCLUDED)])
    )[None]
    inst.scores = torch.tensor([0.93])
    inst.pred_classes = torch.tensor([1])
    if with_boxes:
        inst.pred_boxes = Boxes(torch.tensor([AMODAL], dtype=torch.float32))
    return inst


def _image():
    return np.full((S, S, 3), GRAY, dtype=np.uint8)


def _changed(out):
    return np.abs(out.astype(int) - GRAY).max(axis=2) > 8


def _draw(mask_names, **kwargs):
    vis = MultiMaskVisualizer(_image(), META, pred_mask_names=NAMES, legend=False, **kwargs)
    return vis.draw_instance_predictions(_predictions(), mask_names=mask_names).get_image()


def test_each_mask_name_is_drawn_in_its_own_style():
    fill = _changed(_draw(["visible"]))
    outline = _changed(_draw(["amodal"]))
    hatch = _changed(_draw(["occluded"]))
    for changed, rect in ((fill, VISIBLE), (outline, AMODAL), (hatch, OCCLUDED)):
        assert changed[~_region(rect, 4)].mean() < 0.005  # nothing far from the mask
    # visible: a fill, every pixel inside is tinted (with the first palette color, blue)
    assert fill[_region(VISIBLE, -1)].mean() > 0.99
    out = _draw(["visible"]).astype(int)
    assert out[30, 18, 2] > out[30, 18, 0]
    # amodal: an outline, drawn on the border, the inside untouched
    assert outline[_region(AMODAL, 1) & ~_region(AMODAL, -1)].mean() > 0.9
    assert outline[_region(AMODAL, -4)].mean() < 0.05
    # occluded: stripes, about half of the inside
    assert 0.25 < hatch[_region(OCCLUDED, -2)].mean() < 0.75


def test_all_masks_together_and_legend():
    together = _draw(None)
    for name in NAMES:
        assert not np.array_equal(together, _draw([name]))
    # the stripes of the hidden part are drawn over the fill of the rest
    assert _changed(together)[_region(VISIBLE, -1)].mean() > 0.99
    with_legend = MultiMaskVisualizer(_image(), META, pred_mask_names=NAMES)
    img = with_legend.draw_instance_predictions(_predictions(), mask_names=["visible"]).get_image()
    assert _changed(img)[S - 8 :, 2:20].any() and not _changed(together)[S - 8 :, 2:6].any()


def test_boxes_and_labels_as_detectron2_draws_them():
    vis = MultiMaskVisualizer(_image(), META, pred_mask_names=NAMES, legend=False)
    out = vis.draw_instance_predictions(_predictions(with_boxes=True), mask_names=[]).get_image()
    # the label "ball 93%" is written on a black background from the box's top-left corner
    label = out[AMODAL[1] : AMODAL[1] + 12, AMODAL[0] : AMODAL[0] + 30]
    assert (label.max(axis=2) < 40).mean() > 0.3 and (label.max(axis=2) > 140).any()
    assert _changed(out)[AMODAL[1], AMODAL[0] + 5 : AMODAL[2] - 5].all()  # the box's top edge


def test_mask_styles_can_be_overridden_and_are_checked():
    default = _draw(["occluded"])
    as_fill = _draw(["occluded"], mask_styles={"occluded": "fill"})
    assert _changed(as_fill)[_region(OCCLUDED, -1)].mean() > 0.99
    assert not np.array_equal(default, as_fill)
    dashed = _changed(_draw(["occluded"], mask_styles={"occluded": "dashed"}))
    border = _region(OCCLUDED, 1) & ~_region(OCCLUDED, -1)
    assert 0.3 < dashed[border].mean() < 0.95  # gaps in the line
    # names without a default style take the styles in turn, by position
    vis = MultiMaskVisualizer(_image(), META, pred_mask_names=["full", "seen", "hidden", "shadow"])
    assert [vis.style_of(n) for n in vis.pred_mask_names] == ["fill", "hatch", "dashed", "outline"]
    with pytest.raises(ValueError, match="unknown mask styles"):
        MultiMaskVisualizer(_image(), META, mask_styles={"amodal": "glow"})


def test_prediction_errors_are_explicit():
    vis = MultiMaskVisualizer(_image(), META, pred_mask_names=NAMES)
    with pytest.raises(ValueError, match="not among the available"):
        vis.draw_instance_predictions(_predictions(), mask_names=["shadow"])
    raw = _predictions()
    raw.pred_multimasks = torch.rand(1, 3, 28, 28)
    with pytest.raises(ValueError, match="pasted at the image size"):
        vis.draw_instance_predictions(raw)
    with pytest.raises(ValueError, match="expected \\(N, 2, H, W\\)"):
        MultiMaskVisualizer(_image(), META, pred_mask_names=NAMES[:2]).draw_instance_predictions(
            _predictions()
        )


def _dataset_dict(visible_rle_size=(S, S)):
    x0, y0, x1, y1 = AMODAL
    rle = mask_util.encode(np.asfortranarray(_mask(VISIBLE).astype(np.uint8)))
    rle["size"] = list(visible_rle_size)
    rle["counts"] = rle["counts"].decode()
    anno = {
        "id": 7,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 0,
        "multimask": {
            "amodal": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            "visible": rle,
            "occluded": None,  # not annotated: must not be drawn
        },
    }
    return {"file_name": "img_3.png", "image_id": 3, "height": S, "width": S, "annotations": [anno]}


def test_dataset_dict_draws_polygons_and_rle_and_skips_unannotated():
    vis = MultiMaskVisualizer(_image(), META, legend=False)
    changed = _changed(vis.draw_dataset_dict(_dataset_dict()).get_image())
    assert changed[_below_label(_region(VISIBLE, -1))].mean() > 0.99  # RLE visible mask, filled
    assert changed[_below_label(_region(OCCLUDED, -4))].mean() < 0.05  # None: nothing inside
    assert changed[_region(AMODAL, 1) & ~_region(AMODAL, -1)].mean() > 0.9  # polygon outline + box


def test_dataset_dict_errors_name_the_file_and_annotation():
    vis = MultiMaskVisualizer(_image(), META)
    with pytest.raises(
        ValueError, match=r"img_3.png \(image_id 3\), annotation 0 \(id 7\), mask 'visible'"
    ):
        vis.draw_dataset_dict(_dataset_dict(visible_rle_size=(32, 32)))


def test_gt_instances_of_the_dataloader():
    inst = Instances((S, S))
    inst.gt_boxes = Boxes(torch.tensor([AMODAL], dtype=torch.float32))
    inst.gt_classes = torch.tensor([0])
    masks = torch.from_numpy(np.stack([_mask(AMODAL), _mask(VISIBLE), _mask(OCCLUDED)]))[None]
    inst.gt_multimask = MultiMasks(masks, NAMES, torch.tensor([[True, False, True]]))
    vis = MultiMaskVisualizer(_image(), META, legend=False)
    changed = _changed(vis.draw_gt_instances(inst).get_image())
    assert changed[_below_label(_region(OCCLUDED, -2))].mean() > 0.25  # hatched
    assert changed[_below_label(_region(VISIBLE, -4))].mean() < 0.05  # visible not annotated


def test_panels_one_per_mask_name():
    out = draw_panels(
        _image(), NAMES, META, predictions=_predictions(), pred_mask_names=NAMES, scale=1.0
    )
    assert out.shape == (S, 3 * S + 2 * 4, 3) and out.dtype == np.uint8
    panels = [out[:, k * (S + 4) : k * (S + 4) + S] for k in range(3)]
    for panel, rect in zip(panels, (AMODAL, VISIBLE, OCCLUDED)):
        changed = _changed(panel)
        changed[:18, :] = False  # the panel's title
        inside = _region(rect, -1)
        inside[:18] = False
        assert changed[inside].mean() > 0.99
        assert changed[~_region(rect, 4)].mean() < 0.005
    with pytest.raises(ValueError, match="exactly one"):
        draw_panels(_image(), NAMES, META)


def test_auto_scale_enlarges_small_images_only():
    assert auto_scale(128, 96) == 4.0
    assert auto_scale(800, 1333) == 1.0
