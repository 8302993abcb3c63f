"""Mask R-CNN: He, Gkioxari, Dollár, Girshick (2017), "Mask R-CNN" (ICCV).

A detector that segments: a region proposal network scores anchors on every level of a feature pyramid, the best
proposals are pooled (RoIAlign) into a box head (class score, box refinement) and a small FCN mask head (a 28x28
mask per box), and every object comes out as its own (score, box, mask), whether or not it touches another. For
nuclei that touch (DSB 2018) that is what a per-pixel network has to learn from contours and a watershed.

Built here from torchvision's parts (anchor generator, RPN, RoI heads with its mask branch, FPN), over any smp / timm
encoder, so the packaged ImageNet weights of an encoder work offline, like for every other network of the zoo.
torchvision's own ``maskrcnn_resnet50_fpn_v2`` is one fixed ResNet-50 with weights from the network, and resizes
and normalises its inputs itself; here the data layer has already normalised them and they are seen at their own
size (nuclei are a few pixels across: an 800 px resize would change what every anchor means).

What the rest of the pipeline sees. In training the forward takes the batch's objects (``objects``: per image, the
boxes and masks ``segkit.data.instances.objects`` cut from the augmented label map) and returns
``{"losses": {...}}``, torchvision's five losses. Otherwise it returns the detections *rendered* as the per-pixel
channels a U-Net of an instance competition learns (``data.instances.targets: [mask, contour]``), as logits:

- ``mask``: the highest ``score x mask probability`` of the detections covering the pixel;
- ``contour``: the band within ``contour_width`` px of its own edge of the detection that owns the pixel (the
  strongest there), times its score.

So the detector goes through the same TTA, OOF store, ensemble (a pixel-wise mean with a U-Net: the fusion of the
two), the same decoder tuned for object AP and the same submission. The decoder's mask threshold acts on
``score x mask``, so it chooses the detections' score threshold and their mask threshold in one; two detections of
one object (what NMS removes) render nearly the same pixels and decode as one object; two touching objects keep
their own contours, which the watershed splits along.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.classic._blocks import check_channels, smp_encoder

LOGIT_CLAMP = 1e-4  # rendered probabilities are kept in [1e-4, 1 - 1e-4], so their logits are finite


def use_portable_ops() -> str:
    """Make torchvision's detection ops work where its compiled extension does not load (the CPU torch wheel next
    to a CUDA torchvision build: ``segkit._compat``). There NMS has no fallback at all, and RoIAlign's (a
    torch.compile'd gather over every sampling point of every RoI) asked for 8.6 GB on one 256 px image. So the
    module names the RPN and the RoI heads call them by are pointed at ``greedy_nms`` and ``grid_roi_align``.
    Where the extension loads this changes nothing. Returns 'native' or 'portable'."""
    import torchvision.extension  # here, as in MaskRCNN.__init__: torchvision's detection code costs a second
    import torchvision.models.detection.roi_heads as roi_heads  # here: as above
    import torchvision.ops.boxes as boxes  # here: as above
    import torchvision.ops.poolers as poolers  # here: as above

    if torchvision.extension._has_ops():
        return "native"
    boxes.nms = greedy_nms  # batched_nms's (the RPN's and the box head's)
    poolers.roi_align = grid_roi_align  # MultiScaleRoIAlign's
    roi_heads.roi_align = grid_roi_align  # the mask targets' (project_masks_on_boxes)
    return "portable"


def grid_roi_align(input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                   aligned: bool = False) -> torch.Tensor:
    """torchvision's ``roi_align`` contract through ``F.grid_sample``: each bin the mean of ``sampling_ratio``^2
    bilinear samples (2 where it is adaptive, <= 0). Samples beyond the map take its edge value (torchvision's
    gives 0 past one pixel out: boxes here are clipped to the image, so that never differs by more than the edge)."""
    from torchvision.ops._utils import convert_boxes_to_roi_format  # here: as in use_portable_ops

    rois = boxes if isinstance(boxes, torch.Tensor) else convert_boxes_to_roi_format(boxes)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    sr = sampling_ratio if sampling_ratio > 0 else 2
    out = input.new_zeros(len(rois), input.shape[1], ph, pw)
    if not len(rois):
        return out
    height, width = input.shape[-2:]
    rois = rois.detach().to(input.dtype)
    shift = 0.5 if aligned else 0.0
    x0, y0 = rois[:, 1] * spatial_scale - shift, rois[:, 2] * spatial_scale - shift
    w, h = rois[:, 3] * spatial_scale - shift - x0, rois[:, 4] * spatial_scale - shift - y0
    if not aligned:  # the legacy rule: a RoI is at least one pixel
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    fy = (torch.arange(ph * sr, device=input.device, dtype=input.dtype) + 0.5) / (ph * sr)
    fx = (torch.arange(pw * sr, device=input.device, dtype=input.dtype) + 0.5) / (pw * sr)
    y = y0[:, None] + fy[None] * h[:, None]  # (K, ph * sr) pixel coordinates
    x = x0[:, None] + fx[None] * w[:, None]
    # grid_sample with align_corners=True: -1 and 1 are the centres of the first and last pixels
    gy = (2 * y / max(height - 1, 1) - 1)[:, :, None].expand(-1, -1, pw * sr)
    gx = (2 * x / max(width - 1, 1) - 1)[:, None, :].expand(-1, ph * sr, -1)
    grid = torch.stack([gx, gy], dim=-1)  # (K, ph * sr, pw * sr, 2)
    index = rois[:, 0].long()
    for b in index.unique().tolist():
        picked = (index == b).nonzero()[:, 0]
        g = grid[picked].reshape(1, len(picked) * ph * sr, pw * sr, 2)
        s = F.grid_sample(input[b:b + 1], g, mode="bilinear", padding_mode="border", align_corners=True)
        s = s.view(input.shape[1], len(picked), ph, sr, pw, sr).mean(dim=(3, 5))
        out[picked] = s.transpose(0, 1)
    return out


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes NMS keeps, by decreasing score (torchvision's ``nms`` contract): a box is dropped when
    its IoU with a kept box of higher score is above ``iou_threshold``."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    from segkit.models._nms import greedy  # numba: compiled once per machine (cached), only when a detector runs

    order = torch.argsort(scores, descending=True, stable=True)
    kept = greedy(boxes[order].detach().float().cpu().numpy(), float(iou_threshold))
    return order[torch.from_numpy(kept).to(boxes.device)]


class MaskRCNN(nn.Module):
    """Mask R-CNN over an smp encoder and an FPN.

    ``classes``: the rendered channels, 1 (mask) or 2 (mask, contour). ``encoder_depth``: the pyramid uses every
    encoder feature of stride 4 and deeper (strides 4..32 at depth 5, plus a max-pooled stride-64 level), with one
    anchor size per level, twice its stride (8 px at stride 4: DSB's nuclei are 5 to 60 px across) unless
    ``anchor_sizes`` gives them. ``fpn_channels`` and ``box_channels`` are narrower than torchvision's 256 and 1024,
    for CPUs. ``max_objects`` detections are kept per image (torchvision's 100 is short of DSB's most crowded
    images). ``proposals`` (per pyramid level before NMS, and in all after it) is torchvision's 2000 quartered in
    training and halved in prediction, and ``rois_per_image`` (the RoIs sampled per training image) its 512
    quartered: on 2 CPU cores they took a 128 px training image from 0.37 to 0.23 s.
    """

    INSTANCES = True  # trains on the objects of an instance competition (segkit.models.Arch.instances)
    EXPORTS = False  # its detections are rendered one by one, which a traced graph cannot hold

    def __init__(
        self,
        encoder_name: str,
        encoder_weights: Optional[str] = None,
        in_channels: int = 3,
        classes: int = 2,
        encoder_depth: int = 5,
        fpn_channels: int = 128,
        box_channels: int = 512,
        anchor_sizes: Optional[Sequence[int]] = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        max_objects: int = 400,
        proposals: int = 500,
        rois_per_image: int = 128,
        contour_width: int = 2,
    ):
        super().__init__()
        # Imported here: torchvision's detection package costs a second, and only this network needs it.
        import torchvision.models.detection as det  # here: a second to import, and only this network needs it
        import torchvision.ops as ops  # here: as above

        use_portable_ops()
        check_channels("MaskRCNN", classes, in_channels)
        if classes > 2:
            raise ValueError(f"MaskRCNN: renders 1 (mask) or 2 (mask, contour) channels, not {classes}")
        if contour_width < 1:
            raise ValueError(f"MaskRCNN: contour_width must be at least 1 px, got {contour_width}")
        self.encoder = smp_encoder("MaskRCNN", encoder_name, encoder_weights, in_channels, encoder_depth,
                                   min_depth=2, why="the pyramid starts at stride 4")
        self.levels = encoder_depth - 1  # encoder features of stride 4 .. 2**depth
        widths = list(self.encoder.out_channels[-self.levels:])
        pooled = ops.feature_pyramid_network.LastLevelMaxPool()
        self.fpn = ops.FeaturePyramidNetwork(widths, fpn_channels, extra_blocks=pooled)
        strides = [2 ** (k + 2) for k in range(self.levels + 1)]  # + the pooled level
        sizes = list(anchor_sizes) if anchor_sizes is not None else [2 * s for s in strides]
        if len(sizes) != len(strides):
            raise ValueError(f"MaskRCNN: anchor_sizes needs {len(strides)} sizes (one per pyramid level at "
                             f"encoder_depth {encoder_depth}), got {len(sizes)}")
        anchors = det.anchor_utils.AnchorGenerator(tuple((int(s),) for s in sizes),
                                                   (tuple(aspect_ratios),) * len(sizes))
        self.rpn = det.rpn.RegionProposalNetwork(
            anchors, det.rpn.RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=128, positive_fraction=0.5,
            pre_nms_top_n={"training": proposals, "testing": 2 * proposals},
            post_nms_top_n={"training": proposals, "testing": 2 * proposals}, nms_thresh=0.7)
        names = [str(k) for k in range(self.levels)]
        self.roi_heads = det.roi_heads.RoIHeads(
            ops.MultiScaleRoIAlign(names, 7, 2), det.faster_rcnn.TwoMLPHead(fpn_channels * 7 * 7, box_channels),
            det.faster_rcnn.FastRCNNPredictor(box_channels, 2),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=rois_per_image, positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=0.05, nms_thresh=0.5, detections_per_img=max_objects,
            mask_roi_pool=ops.MultiScaleRoIAlign(names, 14, 2),
            mask_head=det.mask_rcnn.MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
            mask_predictor=det.mask_rcnn.MaskRCNNPredictor(fpn_channels, fpn_channels, 2))
        self.classes, self.contour_width = classes, contour_width

    # --------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, objects: Optional[list[dict]] = None):
        """Training with ``objects``: ``{"losses": {name: tensor}}``. Otherwise: (N, classes, H, W) logits of the
        rendered detections (in training mode without objects too, e.g. for BatchNorm statistics), which carry no
        gradient: the network learns from its losses only."""
        from torchvision.models.detection.image_list import ImageList  # here: see __init__

        features = self._features(x)
        images = ImageList(x, [tuple(x.shape[-2:])] * len(x))
        # The heads run in float32: box coding, anchor matching and RoIAlign are not for half precision.
        with torch.autocast(x.device.type, enabled=False):
            features = OrderedDict((k, v.float()) for k, v in features.items())
            if self.training and objects is not None:
                targets = [{"boxes": o["boxes"].float(), "masks": o["masks"],
                            "labels": torch.ones(len(o["boxes"]), dtype=torch.int64, device=x.device)}
                           for o in objects]
                proposals, rpn_losses = self.rpn(images, features, targets)
                _, roi_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
                return {"losses": {**rpn_losses, **roi_losses}}
            detections = self._detect(images, features)
        with torch.no_grad():  # painted in place, one detection at a time: a picture, not a training signal
            return self._render(detections, tuple(x.shape[-2:]))

    def _features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.encoder(x)[-self.levels:]
        return self.fpn(OrderedDict((str(k), f) for k, f in enumerate(feats)))

    def _detect(self, images, features) -> list[dict]:
        """The detections of every image; the heads in eval mode whatever the network's mode (their training mode
        needs targets), the encoder's mode as set."""
        heads = (self.rpn, self.roi_heads)
        modes = [h.training for h in heads]
        for h in heads:
            h.eval()
        try:
            proposals, _ = self.rpn(images, features)
            detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        finally:
            for h, mode in zip(heads, modes):
                h.train(mode)
        return detections

    def _render(self, detections: list[dict], size: tuple[int, int]) -> torch.Tensor:
        maps = []
        for det in detections:
            canvas = torch.zeros(self.classes, *size, device=det["boxes"].device)
            for box, score, mask in zip(det["boxes"], det["scores"], det["masks"]):
                self._paint(canvas, box, score, mask[0])
            maps.append(canvas)
        p = torch.stack(maps).clamp(LOGIT_CLAMP, 1 - LOGIT_CLAMP)
        return torch.log(p) - torch.log1p(-p)

    def _paint(self, canvas: torch.Tensor, box: torch.Tensor, score: torch.Tensor, mask: torch.Tensor) -> None:
        """One detection into the canvas: its 28x28 mask, times its score, sampled at every pixel its box reaches.
        The mask's bins are where the RoIAlign of training put them (``aligned=False``: pixel i at coordinate i, bin
        j at ``x0 + (j + 0.5) * width / 28``), so pixel i reads the mask at ``2 (i - x0) / width - 1`` in
        ``grid_sample``'s terms, for the pixels of ``[x0, x0 + width]``, the edge bins' values out to the box's
        edges (the first pixel of an object sits on its box's edge, half a bin before bin 0's centre). Resizing the
        mask into the box rounded to whole pixels instead would stretch a 10 px nucleus by up to 20 %."""
        h, w = canvas.shape[-2:]
        bx0, by0, bx1, by1 = (float(v) for v in box)
        bw, bh = max(bx1 - bx0, 1.0), max(by1 - by0, 1.0)  # RoIAlign's legacy rule: a box is at least a pixel
        x0, y0 = max(int(math.ceil(bx0)), 0), max(int(math.ceil(by0)), 0)
        x1, y1 = min(int(math.floor(bx0 + bw)) + 1, w), min(int(math.floor(by0 + bh)) + 1, h)
        if x1 <= x0 or y1 <= y0:
            return
        xs = torch.arange(x0, x1, device=canvas.device, dtype=torch.float32)
        ys = torch.arange(y0, y1, device=canvas.device, dtype=torch.float32)
        gx = (2 * (xs - bx0) / bw - 1)[None, :].expand(len(ys), -1)
        gy = (2 * (ys - by0) / bh - 1)[:, None].expand(-1, len(xs))
        grid = torch.stack([gx, gy], dim=-1)[None]
        m = F.grid_sample(mask[None, None].float(), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)[0, 0]
        region = canvas[:, y0:y1, x0:x1]
        value = score * m
        owns = value > region[0]  # the pixels where this detection is the strongest so far
        region[0] = torch.where(owns, value, region[0])
        if self.classes == 2:
            # the band of the object's own pixels within contour_width of a pixel that is not its own (outside the
            # box counts as not its own), as segkit.data.instances.contour draws it from a label map
            inside = m > 0.5
            r = self.contour_width
            outside = F.pad((~inside).float()[None, None], (r, r, r, r), value=1.0)[0, 0]
            # the frame is no border: a nucleus cut by it keeps its interior up to it
            if y0 == 0:
                outside[:r] = outside[r]
            if y1 == h:
                outside[-r:] = outside[-r - 1]
            if x0 == 0:
                outside[:, :r] = outside[:, r:r + 1]
            if x1 == w:
                outside[:, -r:] = outside[:, -r - 1:-r]
            near = F.max_pool2d(outside[None, None], 2 * r + 1, stride=1)[0, 0] > 0
            # a pixel's contour is its strongest detection's: the edge of a weaker, overlapping one (a duplicate, or
            # a box over half a nucleus) would otherwise cut through the interior of the object that owns it
            region[1] = torch.where(owns, score * (inside & near).float(), region[1])


__all__ = ["MaskRCNN"]
