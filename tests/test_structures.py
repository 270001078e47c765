import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.layers import ROIAlign
from detectron2.structures import BitMasks, Instances, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask

from multimask import MultiMasks
from multimask.structures import segmentation_to_bitmask


def _masks(n=4, k=3, h=20, w=24):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, k, h, w, generator=g) > 0.5


def test_len_names_and_by_name():
    data = _masks()
    mm = MultiMasks(data, ["amodal", "visible", "occluded"])
    assert len(mm) == 4 and mm.mask_names == ("amodal", "visible", "occluded")
    assert mm.image_size == (20, 24)
    vis = mm["visible"]
    assert isinstance(vis, BitMasks) and torch.equal(vis.tensor, data[:, 1])
    assert torch.equal(mm.get("occluded").tensor, data[:, 2])
    with pytest.raises(KeyError, match="parts"):
        mm.get("parts")


@pytest.mark.parametrize(
    "index",
    [1, -1, slice(1, 3), torch.tensor([True, False, True, True]), torch.tensor([3, 0, 0, 2])],
)
def test_indexing_matches_tensor_indexing(index):
    data = _masks()
    annotated = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    mm = MultiMasks(data, ["a", "b", "c"], annotated)
    sub = mm[index]
    expected_index = slice(index, index + 1 if index != -1 else None) if isinstance(index, int) else index
    assert torch.equal(sub.tensor, data[expected_index])
    assert torch.equal(sub.annotated, annotated[expected_index])
    # indexing a view again composes
    assert torch.equal(sub[0].tensor, data[expected_index][0:1])


def test_cat_and_instances_protocol():
    a = MultiMasks(_masks(2, 2, 10, 10), ["x", "y"])
    b = MultiMasks(_masks(3, 2, 12, 8), ["x", "y"], torch.zeros(3, 2, dtype=torch.bool))
    c = MultiMasks.cat([a, b[torch.tensor([2, 0])]])
    assert len(c) == 4 and c.image_size == (12, 10)
    assert torch.equal(c.tensor[:2, :, :10, :10], a.tensor)
    assert torch.equal(c.tensor[2, :, :12, :8], b.tensor[2])
    assert not c.tensor[:2, :, 10:].any()  # padding is empty
    assert c.annotated.tolist() == [[True, True]] * 2 + [[False, False]] * 2

    inst1, inst2 = Instances((10, 10)), Instances((10, 10))
    inst1.gt_multimask, inst2.gt_multimask = a, a[1]
    merged = Instances.cat([inst1, inst2])
    assert len(merged.gt_multimask) == 3
    with pytest.raises(ValueError, match="names"):
        MultiMasks.cat([a, MultiMasks(_masks(1, 2, 10, 10), ["x", "z"])])


def test_to_device_keeps_view():
    mm = MultiMasks(_masks(), ["a", "b", "c"])[torch.tensor([2, 1])]
    moved = mm.to("cpu")
    assert moved.device.type == "cpu" and torch.equal(moved.tensor, mm.tensor)


def test_crop_and_resize_matches_bitmasks():
    data = _masks(5, 2, 32, 40)
    mm = MultiMasks(data, ["a", "b"])
    boxes = torch.tensor(
        [[0, 0, 40, 32], [4, 6, 20, 30], [10, 1, 38, 12], [2.5, 3.5, 9.5, 30.0], [0, 0, 5, 5]]
    )
    idx = torch.tensor([4, 0, 0, 3, 1])  # a view with repeats, as proposal matching makes
    out = mm[idx].crop_and_resize(boxes, 14)
    assert out.shape == (5, 2, 14, 14) and out.dtype == torch.bool
    # BitMasks' ROIAlign, aligned, with 2 x 2 samples per pixel (BitMasks samples adaptively); on
    # noise and integer boxes many pixels are ties (a mean of exactly 0.5), where float rounding
    # decides: ROIAlign itself gives 0.49999991 for some of them
    rois = torch.cat([torch.arange(5.0)[:, None], boxes], dim=1)
    align = ROIAlign((14, 14), 1.0, 2, aligned=True)
    for k in range(2):
        value = align(data[idx, k][:, None].float(), rois)[:, 0]
        differ = out[:, k] != (value >= 0.5)
        assert ((value[differ] - 0.5).abs() < 1e-5).all(), value[differ]
        assert differ.float().mean() < 0.005
        # on noise, the worst case, most pixels still agree with BitMasks' own sampling
        same = out[:, k] == BitMasks(data[idx, k]).crop_and_resize(boxes, 14)
        assert same.float().mean() > 0.85
    assert mm[torch.tensor([], dtype=torch.long)].crop_and_resize(torch.zeros(0, 4), 7).shape == (
        0, 2, 7, 7,
    )


def test_from_segmentations_polygon_rle_missing():
    h, w = 30, 40
    poly = [[5, 5, 25, 5, 25, 20, 5, 20]]
    dense = np.zeros((h, w), dtype=np.uint8)
    dense[10:15, 12:30] = 1
    rle = mask_util.encode(np.asfortranarray(dense))
    uncompressed = {"size": [h, w], "counts": [10 * h + 10, h * w - 10 * h - 10]}
    mm = MultiMasks.from_segmentations(
        [{"amodal": poly, "visible": rle}, {"amodal": uncompressed, "visible": None}],
        ["amodal", "visible"],
        (h, w),
    )
    assert mm.annotated.tolist() == [[True, True], [True, False]]
    assert mm.tensor[0, 0].sum() == 20 * 15  # pixels whose centre lies in the 20 x 15 polygon
    assert torch.equal(mm.tensor[0, 1], torch.from_numpy(dense.astype(bool)))
    assert not mm.tensor[1, 1].any()  # not annotated -> stored empty
    assert mm.tensor[1, 0].sum() == h * w - 10 * h - 10


def test_segmentation_errors_are_clear():
    rle = mask_util.encode(np.asfortranarray(np.ones((5, 5), dtype=np.uint8)))
    with pytest.raises(ValueError, match="differs from image size"):
        segmentation_to_bitmask(rle, 6, 5)
    with pytest.raises(ValueError, match="polygons, an RLE dict, an array or a derived mask"):
        segmentation_to_bitmask("abc", 5, 5)


def test_from_masks_polygons_and_bitmasks():
    poly = PolygonMasks([[[0, 0, 8, 0, 8, 8, 0, 8]]])
    bit = BitMasks(torch.ones(1, 10, 10, dtype=torch.bool))
    mm = MultiMasks.from_masks({"p": poly, "b": bit}, (10, 10))
    assert mm.mask_names == ("p", "b") and mm.tensor.shape == (1, 2, 10, 10)
    assert mm.tensor[0, 1].all() and 50 < mm.tensor[0, 0].sum() < 100


def test_polygon_backed_masks_match_rasterised_masks():
    """Masks stored as polygons (MASK_FORMAT polygon) behave as their rasterised bits, and their
    loss targets are PolygonMasks' (rasterised on each ROI), mixed with bits in the same structure."""
    h, w = 32, 40
    square = np.array([2.0, 2.0, 20.0, 2.0, 20.0, 15.0, 2.0, 15.0])
    triangle = np.array([5.0, 5.0, 30.0, 8.0, 12.0, 28.0])
    bits = np.zeros((2, 2, h, w), dtype=bool)
    bits[0, 1, 4:9, 6:30] = True  # instance 0, mask "b": given as bits
    polygons = [[[square], None], [None, [triangle]]]
    annotated = torch.tensor([[True, True], [False, True]])
    mm = MultiMasks(torch.from_numpy(bits), ["a", "b"], annotated, polygons=polygons)
    assert mm.has_polygons and mm.image_size == (h, w) and len(mm) == 2

    expected = bits.copy()
    expected[0, 0] = polygons_to_bitmask([square], h, w)
    expected[1, 1] = polygons_to_bitmask([triangle], h, w)
    np.testing.assert_array_equal(mm.tensor.numpy(), expected)
    np.testing.assert_array_equal(mm.get("b").tensor.numpy(), expected[:, 1])
    assert mm.area().tolist() == expected.reshape(2, 2, -1).sum(-1).tolist()

    view = mm[torch.tensor([1, 0, 0])].to("cpu")
    assert view.has_polygons and view.annotated.tolist() == [[False, True], [True, True], [True, True]]
    boxes = torch.tensor([[4.0, 4.0, 31.0, 29.0], [0.0, 0.0, 22.0, 16.0], [5.0, 3.0, 31.0, 10.0]])
    got = view.crop_and_resize(boxes, 10)
    assert got.shape == (3, 2, 10, 10)
    as_polygons = PolygonMasks([[triangle], [square], [square]]).crop_and_resize(boxes, 10)
    np.testing.assert_array_equal(got[0, 1].numpy(), as_polygons[0].numpy())
    np.testing.assert_array_equal(got[1:, 0].numpy(), as_polygons[1:].numpy())
    from_bits = BitMasks(torch.from_numpy(bits[[0, 0], 1])).crop_and_resize(boxes[1:], 10)
    np.testing.assert_array_equal(got[1:, 1].numpy(), from_bits.numpy())
    assert not got[0, 0].any()  # neither polygons nor bits: empty

    only_polygons = MultiMasks(None, ["a", "b"], polygons=polygons, image_size=(h, w))
    np.testing.assert_array_equal(only_polygons.tensor.numpy()[1], expected[1])
    cat = MultiMasks.cat([mm, only_polygons])
    assert len(cat) == 4 and cat.tensor[2:, 0].equal(torch.from_numpy(expected[:, 0]))
    with pytest.raises(ValueError, match="polygons and image_size"):
        MultiMasks(None, ["a", "b"])
    with pytest.raises(ValueError, match="one per mask name"):
        MultiMasks(None, ["a", "b"], polygons=[[None]], image_size=(h, w))
