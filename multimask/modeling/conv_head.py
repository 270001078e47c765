"""
``MultiMaskRCNNConvUpsampleHead``: Mask R-CNN's conv + 2x deconv head for K named masks, with an
optional feature flow between the masks' branches (``MODEL.ROI_MULTI_MASK_HEAD.FLOW``).
"""
from collections import OrderedDict
from collections.abc import Sequence as SequenceABC
from typing import Dict, List, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Instances

from ..config import multi_mask_head_cfg
from .base_head import BaseMultiMaskHead

__all__ = ["MultiMaskRCNNConvUpsampleHead", "parse_fc_fusion", "parse_flow"]

_KEY = "MODEL.ROI_MULTI_MASK_HEAD.FLOW"


def parse_flow(
    flow: Sequence, mask_names: Sequence[str], has_towers: bool
) -> Tuple[List[str], Dict[str, List[str]]]:
    """
    Validate FLOW entries ``[source, target]`` and order the masks so that every source comes first.

    Args:
        flow: entries ``[source name, target name]``.
        mask_names: the K mask names.
        has_towers: whether each mask has its own convs (SHARED_CONVS < NUM_CONV, not -1); without
            them there is no separate branch to feed.

    Returns:
        The mask names in computation order (MASK_NAMES order where the graph allows), and for every
        name the list of its sources (in FLOW order).

    Raises:
        ValueError: naming the entry: not a pair, an unknown or repeated name, no branch to feed, or
            a cycle.
    """
    names = list(mask_names)
    sources: Dict[str, List[str]] = {n: [] for n in names}
    where_of = {}
    for i, entry in enumerate(flow):
        pair = list(entry) if isinstance(entry, SequenceABC) and not isinstance(entry, str) else None
        where = f"{_KEY}[{i}] = {pair if pair is not None else entry!r}"
        if pair is None or len(pair) != 2:
            raise ValueError(f"{where}: each flow must be a pair [source, target], e.g. ['visible', 'amodal'].")
        src, dst = pair
        unknown = [n for n in pair if n not in names]
        if unknown:
            raise ValueError(f"{where}: mask names {unknown} are not in MASK_NAMES {names}.")
        if src == dst:
            raise ValueError(f"{where}: a mask cannot feed itself.")
        if src in sources[dst]:
            raise ValueError(f"{where}: declared twice.")
        if not has_towers:
            raise ValueError(
                f"{where}: every conv and the deconv are shared (SHARED_CONVS = -1 or NUM_CONV), so "
                "no mask has a branch of its own to feed; set SHARED_CONVS to a value in "
                "[0, NUM_CONV - 1]."
            )
        sources[dst].append(src)
        where_of[(src, dst)] = where
    order: List[str] = []
    while len(order) < len(names):
        ready = [n for n in names if n not in order and all(s in order for s in sources[n])]
        if not ready:
            left = [n for n in names if n not in order]
            cycle = [w for (s, d), w in where_of.items() if s in left and d in left]
            raise ValueError(f"{_KEY} has a cycle among {left}: {'; '.join(cycle)}.")
        order.append(ready[0])
    return order, sources


def _conv(in_ch: int, out_ch: int, norm: str) -> Conv2d:
    conv = Conv2d(
        in_ch, out_ch, 3, padding=1, bias=not norm, norm=get_norm(norm, out_ch), activation=nn.ReLU()
    )
    weight_init.c2_msra_fill(conv)
    return conv


def _upsample(in_ch: int, out_ch: int) -> List:
    deconv = ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, padding=0)
    weight_init.c2_msra_fill(deconv)
    return [("deconv", deconv), ("deconv_relu", nn.ReLU())]


def _fc_fusion(ch: int, dim: int, side: int, norm: str) -> nn.Sequential:
    """
    PANet's fully-connected fusion: a conv to `dim` channels (PANet: half of `ch`), then one FC
    layer from the whole S x S map to the 2S x 2S mask: one class-agnostic logit map, added to the
    tower's logits. Every output pixel sees the whole ROI (four 3 x 3 convs see 9 x 9 of 14 x 14
    cells). Measured: +1.7 amodal AP on the synthetic data, none on the occluded subset
    (BENCHMARKS.md section 7b).
    """
    fc = nn.Linear(dim * side * side, 4 * side * side)
    # starts as a small correction of the conv logits, as the 1x1 predictor does
    nn.init.normal_(fc.weight, std=0.001)
    nn.init.constant_(fc.bias, 0)
    return nn.Sequential(
        OrderedDict([("conv", _conv(ch, dim, norm)), ("flatten", nn.Flatten()), ("fc", fc)])
    )


def parse_fc_fusion(
    names: Sequence[str], mask_names: Sequence[str], has_tower_convs: bool
) -> List[str]:
    """
    Validate ``FC_FUSION``: known, distinct mask names whose towers have a conv of their own.

    Raises:
        ValueError: naming the entry and what is wrong.
    """
    key = "MODEL.ROI_MULTI_MASK_HEAD.FC_FUSION"
    if isinstance(names, str):
        raise ValueError(f"{key} must be a list of mask names, e.g. ['amodal'], got {names!r}.")
    out: List[str] = []
    for i, name in enumerate(names):
        where = f"{key}[{i}] = {name!r}"
        if name not in mask_names:
            raise ValueError(f"{where}: not in MASK_NAMES {list(mask_names)}.")
        if name in out:
            raise ValueError(f"{where}: declared twice.")
        if not has_tower_convs:
            raise ValueError(
                f"{where}: the fusion reads the last conv of the mask's own tower, and every conv is "
                "shared (SHARED_CONVS = -1 or NUM_CONV); set SHARED_CONVS to a value in "
                "[0, NUM_CONV - 1]."
            )
        out.append(name)
    return out


@ROI_MASK_HEAD_REGISTRY.register()
class MultiMaskRCNNConvUpsampleHead(BaseMultiMaskHead):
    """
    Mask R-CNN's conv + 2x deconv mask head, predicting K named masks per ROI.

    Layout (``SHARED_CONVS`` = S of ``NUM_CONV`` = N convs):
      * ``trunk``: the S shared convs ``mask_fcn1..S`` (and, when all N are shared, the shared ``deconv``);
      * ``towers.<name>``: per mask, the convs ``mask_fcn{S+1}..N`` and ``deconv`` that are not shared, then
        a 1x1 ``predictor`` with one channel per class (1 if class-agnostic).
    Layer names follow detectron2's MaskRCNNConvUpsampleHead, so a Mask R-CNN checkpoint
    (``roi_heads.mask_head.{mask_fcnI, deconv, predictor}``) initialises every branch.

    Feature flow (``FLOW`` entries [source, target]): the output of the source tower's last conv
    (``mask_fcnN``, S x S, after its ReLU) is concatenated to the target tower's input (the trunk's
    output), so the target's first conv takes more channels; the source is computed first (as in
    UOAIS's hierarchical occlusion modelling and ShapeFormer's visible -> amodal path). Parameter names
    do not change; a single-mask checkpoint initialises the flow channels of that conv to zero.
    """

    # Read by scripted layers(): each mask's FLOW sources.
    flow_sources: Dict[str, List[str]]

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: Sequence[int],
        conv_norm: str = "",
        shared_convs: int = -1,
        flow: Sequence = (),
        fc_fusion: Sequence[str] = (),
        fc_fusion_dim: int = 0,
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the pooled ROI features.
            conv_dims: output channels of each conv; the last is also the deconv's. Length NUM_CONV + 1.
            conv_norm: normalization of the convs ("" for none).
            shared_convs: convs shared by all masks; -1 = all (shared deconv too).
            flow: [source, target] mask-name pairs: the source branch's features feed the target's.
            fc_fusion: mask names whose logits get a global fully-connected term (PANet's fusion).
            fc_fusion_dim: channels of the fusion's conv (its FC reads dim x S x S values); 0 = half
                of the last conv's, as in PANet.
            kwargs: those of ``BaseMultiMaskHead`` (num_classes, mask_names, loss_weights, primary,
                relations, constraints, maskiou_*) and ``vis_period``.
        """
        super().__init__(input_shape, **kwargs)
        if len(conv_dims) < 1:
            raise ValueError("conv_dims must have at least one entry (the deconv's channels)")
        num_conv = len(conv_dims) - 1
        if not -1 <= shared_convs <= num_conv:
            raise ValueError(
                f"shared_convs (SHARED_CONVS) must be -1 (all shared) or in [0, {num_conv}] (the "
                f"number of convs, len(conv_dims) - 1), got {shared_convs}."
            )
        shared = num_conv if shared_convs < 0 else shared_convs
        share_upsample = shared == num_conv
        order, self.flow_sources = parse_flow(flow, self.mask_names, not share_upsample)
        # index in a tower of its last conv (-1: the tower has none)
        self.last_conv_index = num_conv - shared - 1

        trunk, ch = [], input_shape.channels
        for i in range(shared):
            trunk.append((f"mask_fcn{i + 1}", _conv(ch, conv_dims[i], conv_norm)))
            ch = conv_dims[i]
        if share_upsample:
            trunk += _upsample(ch, conv_dims[-1])
            ch = conv_dims[-1]
        self.trunk = nn.Sequential(OrderedDict(trunk))

        towers = OrderedDict()
        for name in order:
            layers, tch = [], ch + len(self.flow_sources[name]) * conv_dims[num_conv - 1]
            for i in range(shared, num_conv):
                layers.append((f"mask_fcn{i + 1}", _conv(tch, conv_dims[i], conv_norm)))
                tch = conv_dims[i]
            if not share_upsample:
                layers += _upsample(tch, conv_dims[-1])
                tch = conv_dims[-1]
            predictor = Conv2d(tch, self.num_mask_channels, kernel_size=1)
            nn.init.normal_(predictor.weight, std=0.001)
            nn.init.constant_(predictor.bias, 0)
            layers.append(("predictor", predictor))
            towers[name] = nn.Sequential(OrderedDict(layers))
        self.towers = nn.ModuleDict(towers)
        self.fc_fusion = nn.ModuleDict(
            {
                name: _fc_fusion(
                    conv_dims[num_conv - 1],
                    fc_fusion_dim or max(conv_dims[num_conv - 1] // 2, 1),
                    input_shape.height,
                    conv_norm,
                )
                for name in parse_fc_fusion(fc_fusion, self.mask_names, self.last_conv_index >= 0)
            }
        )
        # forward() computes only each ROI's class (see _class_logits), unless a subclass redefines
        # layers(): then its full output is what the loss and inference must see.
        self.class_selective = type(self).layers is MultiMaskRCNNConvUpsampleHead.layers

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        head = multi_mask_head_cfg(cfg)  # with the keys it inherits from ROI_MASK_HEAD
        ret.update(
            conv_dims=[head.CONV_DIM] * (head.NUM_CONV + 1),
            conv_norm=head.NORM,
            shared_convs=head.SHARED_CONVS,
            flow=[f if isinstance(f, str) else list(f) for f in head.FLOW],
            fc_fusion=list(head.FC_FUSION),
            fc_fusion_dim=head.FC_FUSION_DIM,
        )
        return ret

    def _tower_input(
        self, x: torch.Tensor, name: str, feats: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        sources = self.flow_sources[name]
        if len(sources) == 0:
            return x
        return torch.cat([x] + [feats[s] for s in sources], dim=1)

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: pooled ROI features, shape (R, C_in, S, S).

        Returns:
            Tensor of shape (R, K, C, 2S, 2S), mask logits (C = num classes, or 1 if class-agnostic).
        """
        x = self.trunk(x)
        feats: Dict[str, torch.Tensor] = {}
        outs: Dict[str, torch.Tensor] = {}
        for name, tower in self.towers.items():
            y = self._tower_input(x, name, feats)
            for i, layer in enumerate(tower):
                y = layer(y)
                if i == self.last_conv_index:
                    feats[name] = y
            outs[name] = y
        for name, fc in self.fc_fusion.items():
            y = outs[name]
            outs[name] = y + fc(feats[name]).view(y.shape[0], 1, y.shape[2], y.shape[3])
        return torch.stack([outs[n] for n in self.mask_names], dim=1)

    @torch.jit.unused
    def _class_logits(self, x: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
        """
        What ``_select_class(self.layers(x), classes)`` returns, without computing the other classes.

        Each 1x1 predictor would compute C channels of M x M logits per ROI, of which the loss and
        inference read one: applying only the weight row of each ROI's class skips (C - 1) / C of
        every predictor's work and the (R, K, C, M, M) tensor, most of what K masks cost over one
        with a shared trunk (benchmarks/BENCHMARKS.md). Scripted models use ``layers()``.

        Args:
            x: pooled ROI features, shape (R, C_in, S, S).
            instances: as in ``forward``; the ROI classes are their `gt_classes` (training) or
                `pred_classes` (inference).

        Returns:
            Tensor of shape (R, K, 1, 2S, 2S), mask logits of each ROI's class.
        """
        field = "gt_classes" if self.training else "pred_classes"
        per_image = [i.get(field) for i in instances if len(i) > 0]
        classes = cat(per_image, dim=0) if per_image else x.new_zeros((0,), dtype=torch.int64)
        x = self.trunk(x)
        feats, out = {}, {}
        for name, tower in self.towers.items():
            y = self._tower_input(x, name, feats)
            for i, layer in enumerate(list(tower.children())[:-1]):  # own convs and deconv, if any
                y = layer(y)
                if i == self.last_conv_index:
                    feats[name] = y
            pred = tower.predictor
            idx = classes if pred.out_channels > 1 else torch.zeros_like(classes)
            logits = torch.bmm(pred.weight.flatten(1)[idx][:, None], y.flatten(2))  # (R, 1, M*M)
            out[name] = (logits + pred.bias[idx][:, None, None]).view(y.shape[0], 1, *y.shape[2:])
        for name, fc in self.fc_fusion.items():
            out[name] = out[name] + fc(feats[name]).view_as(out[name])
        return torch.stack([out[n] for n in self.mask_names], dim=1)
