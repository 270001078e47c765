"""uoais-v2's occlusion-order accuracy (OOACC), against a numpy reference written from its rules."""

import itertools
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from multimask.evaluation import MultiMaskCOCOEvaluator
from multimask.evaluation.occlusion_order import hungarian_assignment

H = W = 40


def box(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(m):
    return mask_util.encode(np.asfortranarray(m.astype(np.uint8)))


# A known scene: A in front of B in front of C (amodal boxes overlapping left to right), D alone
AMODAL = [box(2, 2, 16, 16), box(10, 4, 26, 18), box(20, 6, 36, 20), box(4, 26, 14, 36)]
VISIBLE = [AMODAL[0], AMODAL[1] & ~AMODAL[0], AMODAL[2] & ~AMODAL[1], AMODAL[3]]
ORDER = {(0, 1), (1, 2)}  # (occluder, occludee)


def reference_ooacc(gt, preds):
    """
    uoais-v2's rules, in plain numpy: brute-force matching maximising the summed F-measure of
    the amodal masks, OOAM entries IoU(visible_i, amodal_j xor visible_j) > 0.1, rows and
    columns of unmatched objects wrong, the diagonal left out.
    """
    correct = total = 0
    for (g_am, g_vis), p in zip(gt, preds):
        n, m = len(g_am), len(p)
        f = np.zeros((n, m))
        for i, j in itertools.product(range(n), range(m)):
            tp = (g_am[i] & p[j][0]).sum()
            if tp:
                pr, rc = tp / p[j][0].sum(), tp / g_am[i].sum()
                f[i, j] = 2 * pr * rc / (pr + rc)
        best, match = -1.0, {}
        k = min(n, m)
        for rows in itertools.permutations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                if sum(f[r, c] for r, c in zip(rows, cols)) > best + 1e-12:
                    best, match = sum(f[r, c] for r, c in zip(rows, cols)), dict(zip(rows, cols))

        def iou(a, b):
            u = (a | b).sum()
            return (a & b).sum() / u if u else 0.0

        for i, j in itertools.product(range(n), range(n)):
            if i == j:
                continue
            total += 1
            gt_rel = iou(g_vis[i], g_am[j] & ~g_vis[j]) > 0.1
            if i not in match or j not in match:
                continue
            pv, (pa_j, pv_j) = p[match[i]][1], p[match[j]]
            correct += (iou(pv, pa_j ^ pv_j) > 0.1) == gt_rel
    return 100.0 * correct / total


@pytest.fixture()
def scene():
    name = f"order_{uuid.uuid4().hex[:8]}"
    dicts = []
    for image_id in (1, 2):
        annos = [
            {"bbox": [0, 0, 1, 1], "bbox_mode": 0, "category_id": 0, "iscrowd": 0,
             "multimask": {"amodal": rle(a), "visible": rle(v)}}
            for a, v in zip(AMODAL, VISIBLE)
        ]  # fmt: skip
        dicts.append({"file_name": f"{image_id}.png", "image_id": image_id, "height": H,
                      "width": W, "annotations": annos})  # fmt: skip
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["obj"], mask_names=["amodal", "visible"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _output(preds, scores):
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * len(preds)).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(preds), dtype=torch.long)
    masks = [np.stack([a, v]) for a, v in preds] or np.zeros((0, 2, H, W), bool)
    inst.pred_multimasks = torch.from_numpy(np.asarray(masks, bool).reshape(-1, 2, H, W))
    return {"instances": inst}


def test_hungarian_assignment_is_optimal():
    rng = np.random.default_rng(0)
    for shape in ((3, 5), (5, 3), (4, 4), (1, 3)):
        score = rng.random(shape)
        pairs = hungarian_assignment(score)
        assert len(pairs) == min(shape)
        best = max(
            sum(score[r, c] for r, c in zip(rows, cols))
            for rows in itertools.permutations(range(shape[0]), min(shape))
            for cols in itertools.permutations(range(shape[1]), min(shape))
        )
        assert sum(score[r, c] for r, c in pairs) == pytest.approx(best)


def test_ooacc_on_a_known_order(scene):
    # image 1: perfect predictions in shuffled order, plus a low-scored one (dropped at 0.5);
    # image 2: C predicted as unoccluded (its visible = amodal), B's visible too small to
    # occlude, D missed, an empty prediction (left out)
    perfect = [(AMODAL[k], VISIBLE[k]) for k in (2, 0, 3, 1)]
    second = [(AMODAL[0], VISIBLE[0]), (AMODAL[1], box(20, 14, 22, 16)), (AMODAL[2], AMODAL[2])]
    empty = (np.zeros((H, W), bool), np.zeros((H, W), bool))
    ev = MultiMaskCOCOEvaluator(scene, mask_names=["amodal", "visible"], distributed=False,
                                order_eval=True, occlusion_thresholds=[])  # fmt: skip
    ev.reset()
    ev.process([{"image_id": 1}], [_output(perfect + [(AMODAL[3], VISIBLE[0])], [0.9] * 4 + [0.2])])
    ev.process([{"image_id": 2}], [_output(second + [empty], [0.9, 0.8, 0.7, 0.95])])
    order = ev.evaluate()["order"]
    gt = [(AMODAL, VISIBLE)] * 2
    preds = [perfect, second]
    expected = reference_ooacc(gt, preds)
    assert order["OOACC"] == pytest.approx(expected)
    assert order["pairs"] == 24 and order["instances"] == 8 and order["matched"] == 7
    # by hand: image 1 has its 12 pairs right; image 2 has D's row and column (6 pairs) wrong;
    # of A, B, C: A -> B right (IoU 72 / 344 with B's predicted hidden part, all of B but 2 x 2
    # px), B -> C missed (C predicted unoccluded, no hidden part), C -> B wrongly found (C's
    # predicted visible is all of C: IoU 72 / 438 with B's hidden part), the other 3 right:
    # 4 of its 12 right, 16 of 24 in all
    assert order["correct"] == 16 and order["OOACC"] == pytest.approx(100 * 16 / 24)
    # the ground truth's own order, read from the masks, is the known one
    vis_occ = {
        (i, j)
        for i, j in itertools.permutations(range(4), 2)
        if (VISIBLE[i] & AMODAL[j] & ~VISIBLE[j]).sum()
        / (VISIBLE[i] | (AMODAL[j] & ~VISIBLE[j])).sum()
        > 0.1
    }
    assert vis_occ == ORDER


def test_ooacc_needs_whole_and_visible(scene):
    with pytest.raises(ValueError, match="order_eval needs the masks"):
        MultiMaskCOCOEvaluator(scene, mask_names=["amodal"], distributed=False, order_eval=True)
