"""The CenterNet (ctdet) loss family: focal heatmap loss, gathered L1 regressions, GPU targets.

Drop-in for CenterNet's own (github.com/xingyizhou/CenterNet, ``models/losses.py``,
``datasets/sample/ctdet.py``), same arguments and the same numbers (docs/centernet.md):

    centernet_focal_loss(pred, gt)        CenterNet's _neg_loss = masked_focal_loss(alpha=2, beta=4,
                                          pos_threshold=1, normalize="num_pos", eps=0)
    transpose_and_gather_feat(feat, ind)  feat [B,C,H,W], ind [B,M] -> [B,M,C], no NHWC copy
    reg_l1_loss(output, mask, ind, target)           RegL1Loss, mask [B,M] (broadcast over C)
    reg_weighted_l1_loss(output, mask, ind, target)  RegWeightedL1Loss, mask [B,M,C]
    centernet_targets(boxes, labels, box_mask, ...)  ctdet targets hm, wh, reg, ind, reg_mask
    CenterNetLoss                                    hm_w focal + wh_w L1(wh) + off_w L1(reg)

Backends: "torch" computes each loss and its analytic gradient in one forward pass
(``PrecomputedGradient``; the gradient of a gathered regression is scattered into ``output`` with
``scatter_add``, deterministic on the CPU). "triton" runs the kernels of ``kernels/centernet.py``:
one gather-and-reduce kernel per regression loss (per-program partials, a fixed-order final
reduction, no float atomics) and a deterministic scatter for its backward; one kernel for all
targets of a batch. Nothing here synchronises with the device.
"""

from __future__ import annotations

import torch

from .backend import (
    BACKENDS,
    PrecomputedGradient,
    compute_dtype,
    needs_grad,
    refuse_double_backward,
    resolve_backend,
)
from .focal import masked_focal_loss
from .labels import div_exact
from .validation import (
    check_choice,
    check_floating,
    check_number,
    check_positive_int,
    check_real,
    check_same_device,
    check_shape,
    check_tensor,
    shape_str,
)

# CenterNet's _neg_loss as an instance of the masked focal loss (docs/spec.md 4).
CENTERNET_FOCAL = dict(alpha=2.0, beta=4.0, pos_threshold=1.0, normalize="num_pos", eps=0.0)
REG_EPS = 1e-4  # RegL1Loss: loss / (mask.sum() + 1e-4)
MIN_OVERLAP = 0.7  # gaussian_radius(det_size, min_overlap=0.7)
COMPONENTS = ("hm", "wh", "off")
TARGET_KEYS = ("hm", "wh", "reg", "ind", "reg_mask")
# Target generation evaluates the Gaussians of at most this many (box, cell) pairs at once.
_TARGET_CHUNK = 1 << 22


# ----------------------------------------------------------------------------------------------
# Argument checks (metadata only: no device sync), each error naming the argument.


def _check_int_tensor(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {x.dtype}")


def _check_mask(name: str, x: torch.Tensor) -> None:
    check_tensor(name, x)
    check_real(name, x)


def _check_backend(backend: str) -> None:
    check_choice("backend", backend, BACKENDS)


def check_reg_inputs(
    output: torch.Tensor,
    mask: torch.Tensor,
    ind: torch.Tensor,
    target: torch.Tensor,
    *,
    weighted: bool,
    names: tuple[str, str, str, str] = ("output", "mask", "ind", "target"),
) -> None:
    """output [B,C,H,W] floating, ind [B,M] integer, target [B,M,C], mask [B,M] or [B,M,C]."""
    n_out, n_mask, n_ind, n_target = names
    check_tensor(n_out, output)
    check_floating(n_out, output)
    check_shape(n_out, output, [None, None, None, None], "[B, C, H, W]")
    b, c = output.shape[:2]
    check_tensor(n_ind, ind)
    _check_int_tensor(n_ind, ind)
    check_shape(n_ind, ind, [b, None], f"[{b}, M]")
    m = ind.shape[1]
    check_tensor(n_target, target)
    check_real(n_target, target)
    check_shape(n_target, target, [b, m, c], f"[{b}, {m}, {c}]")
    _check_mask(n_mask, mask)
    if weighted:
        check_shape(n_mask, mask, [b, m, c], f"[{b}, {m}, {c}]")
    else:
        check_shape(n_mask, mask, [b, m], f"[{b}, {m}]")
    check_same_device({n_out: output, n_mask: mask, n_ind: ind, n_target: target})


def check_box_inputs(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    num_classes: int,
    output_size: tuple[int, int],
    down_ratio: int,
) -> tuple[int, int]:
    """boxes [B,N,4] real, labels [B,N] integer, box_mask [B,N] or None; returns (H, W)."""
    check_positive_int("num_classes", num_classes)
    if (
        not isinstance(output_size, (tuple, list, torch.Size))
        or len(output_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in output_size)
    ):
        raise ValueError(f"output_size: expected (H, W) of two positive ints, got {output_size!r}")
    check_positive_int("down_ratio", down_ratio)
    check_tensor("boxes", boxes)
    check_real("boxes", boxes)
    check_shape("boxes", boxes, [None, None, 4], "[B, N, 4] (x1, y1, x2, y2)")
    b, n = boxes.shape[:2]
    check_tensor("labels", labels)
    _check_int_tensor("labels", labels)
    check_shape("labels", labels, [b, n], f"[{b}, {n}]")
    if box_mask is not None:
        _check_mask("box_mask", box_mask)
        check_shape("box_mask", box_mask, [b, n], f"[{b}, {n}]")
    check_same_device({"boxes": boxes, "labels": labels, "box_mask": box_mask})
    return int(output_size[0]), int(output_size[1])


# ----------------------------------------------------------------------------------------------
# Focal heatmap loss.


def clamped_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """CenterNet's ``_sigmoid``: ``clamp(sigmoid(x), eps, 1 - eps)`` (out of place)."""
    return torch.clamp(x.sigmoid(), min=eps, max=1 - eps)


def centernet_focal_loss(
    pred: torch.Tensor, gt: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """CenterNet's ``_neg_loss``: pred (clamped-sigmoid probabilities) and gt [B,K,H,W].

    ``-(sum_pos log(p) (1-p)^2 + sum_neg log(1-p) p^2 (1-gt)^4) / num_pos`` over the batch,
    positives ``gt == 1``, negatives ``gt < 1``; ``-sum_neg ...`` alone when there is no positive.
    No epsilon inside the logs. The masked focal loss with alpha=2, beta=4, pos_threshold=1,
    normalize="num_pos", eps=0 (identical for gt <= 1, the only values CenterNet produces).
    """
    check_tensor("pred", pred)
    check_floating("pred", pred)
    check_tensor("gt", gt)
    check_real("gt", gt)
    if gt.shape != pred.shape:
        raise ValueError(f"gt: expected shape {shape_str(pred)} (as pred), got {shape_str(gt)}")
    _check_backend(backend)
    return masked_focal_loss(pred, gt, **CENTERNET_FOCAL, backend=backend)


class CenterNetFocalLoss(torch.nn.Module):
    """CenterNet's ``FocalLoss`` module: ``forward(out, target)`` = :func:`centernet_focal_loss`."""

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        _check_backend(backend)
        self.backend = backend

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return centernet_focal_loss(out, target, backend=self.backend)


# ----------------------------------------------------------------------------------------------
# Gather and gathered L1 regression.


def transpose_and_gather_feat(
    feat: torch.Tensor, ind: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """``feat.permute(0, 2, 3, 1).view(B, H*W, C).gather(1, ind)``, without the NHWC copy.

    feat [B,C,H,W], ind [B,M] (flat indices ``y * W + x`` in [0, H*W)) -> [B,M,C] in feat's dtype,
    differentiable in ``feat`` (duplicate indices accumulate, deterministically).
    """
    check_tensor("feat", feat)
    check_shape("feat", feat, [None, None, None, None], "[B, C, H, W]")
    b = feat.shape[0]
    check_tensor("ind", ind)
    _check_int_tensor("ind", ind)
    check_shape("ind", ind, [b, None], f"[{b}, M]")
    check_same_device({"feat": feat, "ind": ind})
    if resolve_backend(backend, feat.device) == "triton":
        return _GatherTriton.apply(feat, ind)
    c = feat.shape[1]
    flat = feat.reshape(b, c, -1)
    idx = ind.long()[:, None, :].expand(b, c, ind.shape[1])
    return flat.gather(2, idx).transpose(1, 2)


def _reg_torch(need: bool, weighted: bool):
    """value_and_grad of a gathered L1 loss for PrecomputedGradient (torch backend)."""

    def value_and_grad(output, mask, ind, target):
        cdt = compute_dtype(output.dtype)
        b, c, h, w = output.shape
        m = ind.shape[1]
        idx = ind.long()[:, None, :].expand(b, c, m)
        pred = output.reshape(b, c, h * w).gather(2, idx).to(cdt)  # [B, C, M]
        t = target.to(cdt).transpose(1, 2)
        if weighted:
            mk = mask.to(cdt).transpose(1, 2)  # [B, C, M]
            msum = mk.sum()
        else:
            mk = mask.to(cdt)[:, None, :]  # [B, 1, M], broadcast over channels
            msum = mk.sum() * c
        d = pred * mk - t * mk
        denom = msum + REG_EPS
        loss = d.abs().sum() / denom
        grad = None
        if need:
            g = torch.sign(d) * mk / denom
            grad = torch.zeros(b, c, h * w, dtype=cdt, device=output.device)
            grad = grad.scatter_add_(2, idx, g.expand(b, c, m)).view(b, c, h, w)
        return loss, loss.new_zeros(0), (grad, None, None, None)

    return value_and_grad


def _reg_loss(output, mask, ind, target, weighted: bool, backend: str) -> torch.Tensor:
    (need,) = needs_grad(output)
    if resolve_backend(backend, output.device) == "triton":
        return _RegL1Triton.apply(output, mask, ind, target, weighted, need)
    loss, _ = PrecomputedGradient.apply(_reg_torch(need, weighted), output, mask, ind, target)
    return loss


def reg_l1_loss(
    output: torch.Tensor,
    mask: torch.Tensor,
    ind: torch.Tensor,
    target: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """CenterNet's ``RegL1Loss``: ``sum |pred*m - target*m| / (sum m + 1e-4)``.

    output [B,C,H,W], mask [B,M] (broadcast over the C channels, so the denominator is
    ``C * sum(mask) + 1e-4``), ind [B,M], target [B,M,C], pred = transpose_and_gather_feat(output,
    ind). Gradient flows into ``output`` only (duplicate indices accumulate). 0-dim float32 result
    (float64 for float64 output).
    """
    check_reg_inputs(output, mask, ind, target, weighted=False)
    _check_backend(backend)
    return _reg_loss(output, mask, ind, target, False, backend)


def reg_weighted_l1_loss(
    output: torch.Tensor,
    mask: torch.Tensor,
    ind: torch.Tensor,
    target: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """CenterNet's ``RegWeightedL1Loss``: as :func:`reg_l1_loss` with a mask [B,M,C]."""
    check_reg_inputs(output, mask, ind, target, weighted=True)
    _check_backend(backend)
    return _reg_loss(output, mask, ind, target, True, backend)


class RegL1Loss(torch.nn.Module):
    """CenterNet's ``RegL1Loss``: ``forward(output, mask, ind, target)``."""

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        _check_backend(backend)
        self.backend = backend

    def forward(self, output, mask, ind, target) -> torch.Tensor:
        return reg_l1_loss(output, mask, ind, target, backend=self.backend)


class RegWeightedL1Loss(torch.nn.Module):
    """CenterNet's ``RegWeightedL1Loss``: ``forward(output, mask, ind, target)``, mask [B,M,C]."""

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        _check_backend(backend)
        self.backend = backend

    def forward(self, output, mask, ind, target) -> torch.Tensor:
        return reg_weighted_l1_loss(output, mask, ind, target, backend=self.backend)


# ----------------------------------------------------------------------------------------------
# Targets.


def _sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float64 sqrt. torch's CPU kernel may be off by an ulp (vectorised SLEEF),
    which matters here: r3 = (b3 + sqrt(.)) / 2 cancels, and int(r3) can change. numpy's sqrt
    (the hardware instruction) is exact, and so is CUDA's; a CPU tensor shares memory with numpy.
    """
    if x.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.sqrt(x.contiguous().numpy()))
    return torch.sqrt(x)


def gaussian_radius_tensor(height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """CenterNet's ``gaussian_radius((height, width), 0.7)`` elementwise, float64 in and out.

    The same operations in the same order as the published Python, and correctly rounded square
    roots like ``math.sqrt``, so the same float64 result.
    """
    ov = MIN_OVERLAP
    b1 = height + width
    c1 = width * height * (1 - ov) / (1 + ov)
    r1 = (b1 + _sqrt_rn(b1 * b1 - (4 * 1) * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - ov) * width * height
    r2 = (b2 + _sqrt_rn(b2 * b2 - (4 * 4) * c2)) / 2
    a3 = 4 * ov
    b3 = -2 * ov * (height + width)
    c3 = (ov - 1) * width * height
    r3 = (b3 + _sqrt_rn(b3 * b3 - (4 * a3) * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def box_geometry(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    num_classes: int,
    size: tuple[int, int],
    down_ratio: int,
    cdt: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Per-box quantities of ctdet.py, vectorised over [B, N] (torch backend)."""
    h_map, w_map = size
    bx = div_exact(boxes.to(cdt), down_ratio)
    x1 = bx[..., 0].clamp(0, w_map - 1)
    y1 = bx[..., 1].clamp(0, h_map - 1)
    x2 = bx[..., 2].clamp(0, w_map - 1)
    y2 = bx[..., 3].clamp(0, h_map - 1)
    h, w = y2 - y1, x2 - x1
    valid = (h > 0) & (w > 0) & (labels >= 0) & (labels < num_classes)
    if box_mask is not None:
        valid = valid & (box_mask != 0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    cxi, cyi = cx.to(torch.int32).long(), cy.to(torch.int32).long()
    one = torch.ones((), dtype=torch.float64, device=boxes.device)
    hc = torch.where(valid, torch.ceil(h).double(), one)
    wc = torch.where(valid, torch.ceil(w).double(), one)
    radius = gaussian_radius_tensor(hc, wc).trunc().clamp_min(0).long()
    return dict(valid=valid, cx=cx, cy=cy, cxi=cxi, cyi=cyi, w=w, h=h, radius=radius)


def _targets_torch(boxes, labels, box_mask, num_classes, size, down_ratio):
    cdt = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    dev = boxes.device
    h_map, w_map = size
    bsz, n = boxes.shape[:2]
    geo = box_geometry(boxes, labels, box_mask, num_classes, size, down_ratio, cdt)
    valid, radius = geo["valid"], geo["radius"]
    zero = torch.zeros((), dtype=cdt, device=dev)
    wh = torch.where(valid[..., None], torch.stack([geo["w"], geo["h"]], -1), zero)
    reg = torch.stack([geo["cx"] - geo["cxi"].to(cdt), geo["cy"] - geo["cyi"].to(cdt)], -1)
    reg = torch.where(valid[..., None], reg, zero)
    ind = torch.where(valid, geo["cyi"] * w_map + geo["cxi"], 0)
    reg_mask = valid.to(torch.uint8)

    # hm: max over boxes of the (separable) Gaussian windows, merged per class with amax. The
    # Gaussian of a box is exp(-(dx^2 + dy^2) / (2 sigma^2)), sigma = (2r + 1) / 6, on the cells
    # with |dx|, |dy| <= r (float64, rounded into hm as ctdet.py does). CenterNet's "values under
    # eps * max set to 0" never fires: the exponent is at most 36 r^2 / (2r + 1)^2 < 9.
    sig = (2 * radius + 1).double() / 6
    two_ss = 2 * sig * sig
    rows = torch.arange(h_map, device=dev)
    cols = torch.arange(w_map, device=dev)
    dy = rows - geo["cyi"][..., None]  # [B, N, H]
    dx = cols - geo["cxi"][..., None]  # [B, N, W]
    r = torch.where(valid, radius, -1)[..., None]  # invalid boxes: an empty window
    gy = torch.where(dy.abs() <= r, torch.exp(-(dy * dy).double() / two_ss[..., None]), 0.0)
    gx = torch.where(dx.abs() <= r, torch.exp(-(dx * dx).double() / two_ss[..., None]), 0.0)
    cls = torch.where(valid, labels, 0).long()
    hm = torch.zeros(bsz, num_classes, h_map * w_map, dtype=cdt, device=dev)
    chunk = max(1, _TARGET_CHUNK // max(1, bsz * h_map * w_map))
    for s in range(0, n, chunk):  # one chunk unless B * N * H * W is large
        g = (gy[:, s : s + chunk, :, None] * gx[:, s : s + chunk, None, :]).to(cdt)
        k = g.shape[1]
        g = g.view(bsz, k, h_map * w_map)
        idx = cls[:, s : s + chunk, None].expand(bsz, k, h_map * w_map)
        hm.scatter_reduce_(1, idx, g, reduce="amax", include_self=True)
    hm = hm.view(bsz, num_classes, h_map, w_map)
    return {"hm": hm, "wh": wh, "reg": reg, "ind": ind, "reg_mask": reg_mask}


@torch.no_grad()
def centernet_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None = None,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    down_ratio: int = 4,
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """CenterNet's ctdet training targets for a whole batch, on the boxes' device.

    boxes [B,N,4] (x1, y1, x2, y2) input pixels, labels [B,N] class ids, box_mask [B,N] (None: all
    boxes exist). Each box is divided by ``down_ratio``, clipped to [0, W-1] x [0, H-1] and kept
    when its height and width are > 0 (and its label lies in [0, num_classes)); its Gaussian
    (radius ``max(0, int(gaussian_radius((ceil h, ceil w), 0.7)))``, sigma = (2r+1)/6) is
    max-merged into ``hm`` at the integer centre. Returns ``hm`` [B,num_classes,H,W], ``wh`` [B,N,2]
    = (w, h), ``reg`` [B,N,2] = centre - integer centre, ``ind`` [B,N] int64 = cy * W + cx and
    ``reg_mask`` [B,N] uint8; zeros for dropped boxes. Float outputs are float32 (float64 for
    float64 boxes). No gradient, no host sync.
    """
    size = check_box_inputs(boxes, labels, box_mask, num_classes, output_size, down_ratio)
    _check_backend(backend)
    if resolve_backend(backend, boxes.device) == "triton":
        from .kernels.centernet import centernet_targets_launch

        return centernet_targets_launch(boxes, labels, box_mask, num_classes, size, down_ratio)
    return _targets_torch(boxes, labels, box_mask, num_classes, size, down_ratio)


# ----------------------------------------------------------------------------------------------
# The ctdet total.


def _check_targets(targets: object, hm: torch.Tensor) -> dict[str, torch.Tensor]:
    if not isinstance(targets, dict):
        raise TypeError(f"targets: expected a dict, got {type(targets).__name__}")
    missing = [k for k in TARGET_KEYS if k not in targets]
    if missing:
        raise ValueError(f"targets: expected keys {list(TARGET_KEYS)}, missing {missing}")
    t = targets["hm"]
    check_tensor("targets['hm']", t)
    check_real("targets['hm']", t)
    if t.shape != hm.shape:
        raise ValueError(
            f"targets['hm']: expected shape {shape_str(hm)} (as hm), got {shape_str(t)}"
        )
    return {k: targets[k] for k in TARGET_KEYS}


def check_centernet_inputs(hm, wh, reg, targets, boxes, labels, box_mask, down_ratio):
    """Everything the total needs, checked before any kernel runs."""
    check_tensor("hm", hm)
    check_floating("hm", hm)
    check_shape("hm", hm, [None, None, None, None], "[B, K, H, W]")
    b, k, h, w = hm.shape
    for name, x in (("wh", wh), ("reg", reg)):
        check_tensor(name, x)
        check_floating(name, x)
        check_shape(name, x, [b, 2, h, w], f"[{b}, 2, {h}, {w}]")
    if (targets is None) == (boxes is None):
        raise ValueError("targets, boxes: give exactly one of them (a target dict or raw boxes)")
    if targets is not None:
        if labels is not None or box_mask is not None:
            raise ValueError("labels, box_mask: only with boxes, not with targets")
        targets = _check_targets(targets, hm)
        for key in ("wh", "reg"):
            check_reg_inputs(
                wh if key == "wh" else reg,
                targets["reg_mask"],
                targets["ind"],
                targets[key],
                weighted=False,
                names=(key, "targets['reg_mask']", "targets['ind']", f"targets['{key}']"),
            )
        check_same_device(
            {"hm": hm, "wh": wh, "reg": reg, **{f"targets['{k}']": v for k, v in targets.items()}}
        )
    else:
        if labels is None:
            raise ValueError("labels: required with boxes")
        check_box_inputs(boxes, labels, box_mask, k, (h, w), down_ratio)
        if boxes.shape[0] != b:
            raise ValueError(f"boxes: expected shape [{b}, N, 4], got {shape_str(boxes)}")
        check_same_device({"hm": hm, "wh": wh, "reg": reg, "boxes": boxes})
    return targets


def centernet_loss(
    hm: torch.Tensor,
    wh: torch.Tensor,
    reg: torch.Tensor,
    targets: dict[str, torch.Tensor] | None = None,
    *,
    boxes: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    hm_weight: float = 1.0,
    wh_weight: float = 0.1,
    off_weight: float = 1.0,
    down_ratio: int = 4,
    return_components: bool = False,
    backend: str = "auto",
):
    """Functional form of :class:`CenterNetLoss` (same arguments)."""
    weights = (
        check_number("hm_weight", hm_weight),
        check_number("wh_weight", wh_weight),
        check_number("off_weight", off_weight),
    )
    check_positive_int("down_ratio", down_ratio)
    _check_backend(backend)
    targets = check_centernet_inputs(hm, wh, reg, targets, boxes, labels, box_mask, down_ratio)
    l_hm = None
    if targets is None and hm.numel() > 0 and resolve_backend(backend, hm.device) == "triton":
        # Bandwidth first: the focal term rebuilds the target heatmap in registers.
        l_hm, *small = _HeatmapFromBoxesTriton.apply(
            hm, boxes, labels, box_mask, down_ratio, needs_grad(hm)[0]
        )
        targets = dict(zip(("wh", "reg", "ind", "reg_mask"), small))
    elif targets is None:
        targets = centernet_targets(
            boxes,
            labels,
            box_mask,
            num_classes=hm.shape[1],
            output_size=tuple(hm.shape[-2:]),
            down_ratio=down_ratio,
            backend=backend,
        )
    if l_hm is None:
        l_hm = masked_focal_loss(hm, targets["hm"], **CENTERNET_FOCAL, backend=backend)
    l_wh = _reg_loss(wh, targets["reg_mask"], targets["ind"], targets["wh"], False, backend)
    l_off = _reg_loss(reg, targets["reg_mask"], targets["ind"], targets["reg"], False, backend)
    total = weights[0] * l_hm + weights[1] * l_wh + weights[2] * l_off
    if not return_components:
        return total
    return total, {"hm": l_hm.detach(), "wh": l_wh.detach(), "off": l_off.detach()}


class CenterNetLoss(torch.nn.Module):
    """CenterNet's ctdet loss (``CtdetLoss`` with one stack and L1 regressions), fused.

    ``CenterNetLoss(hm_weight=1.0, wh_weight=0.1, off_weight=1.0, down_ratio=4, backend="auto")``
    called as ``criterion(hm, wh, reg, targets=None, *, boxes=None, labels=None, box_mask=None,
    return_components=False)``: ``hm`` [B,K,H,W] clamped-sigmoid probabilities
    (:func:`clamped_sigmoid` of the head), ``wh`` and ``reg`` [B,2,H,W] head outputs; either
    ``targets``, a dict with ``hm``, ``wh``, ``reg``, ``ind``, ``reg_mask`` (CenterNet's batch, or
    :func:`centernet_targets`; extra keys are ignored), or raw ``boxes`` [B,N,4], ``labels`` [B,N]
    and ``box_mask`` [B,N], from which the targets are generated on the device without a host
    sync. Returns ``hm_weight * focal + wh_weight * L1(wh) + off_weight * L1(reg)``, and with
    ``return_components=True`` ``(total, {"hm", "wh", "off"})`` with detached 0-dim terms.
    """

    def __init__(
        self,
        hm_weight: float = 1.0,
        wh_weight: float = 0.1,
        off_weight: float = 1.0,
        down_ratio: int = 4,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_number("hm_weight", hm_weight)
        check_number("wh_weight", wh_weight)
        check_number("off_weight", off_weight)
        check_positive_int("down_ratio", down_ratio)
        _check_backend(backend)
        self.opts = dict(
            hm_weight=hm_weight,
            wh_weight=wh_weight,
            off_weight=off_weight,
            down_ratio=down_ratio,
            backend=backend,
        )

    def forward(
        self,
        hm: torch.Tensor,
        wh: torch.Tensor,
        reg: torch.Tensor,
        targets: dict[str, torch.Tensor] | None = None,
        *,
        boxes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        return_components: bool = False,
    ):
        return centernet_loss(
            hm,
            wh,
            reg,
            targets,
            boxes=boxes,
            labels=labels,
            box_mask=box_mask,
            return_components=return_components,
            **self.opts,
        )


# ----------------------------------------------------------------------------------------------
# Triton backend glue (kernels in kernels/centernet.py).


class _GatherTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat, ind):  # type: ignore[override]
        from .kernels.centernet import gather_feat_launch

        ctx.save_for_backward(ind)
        ctx.feat_meta = (feat.shape, feat.dtype)
        return gather_feat_launch(feat, ind)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        from .kernels.centernet import scatter_rows_launch

        refuse_double_backward("transpose_and_gather_feat (triton backend)")
        (ind,) = ctx.saved_tensors
        shape, dtype = ctx.feat_meta
        if not ctx.needs_input_grad[0]:
            return None, None
        return scatter_rows_launch(grad_out, ind, shape, dtype), None


class _RegL1Triton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output, mask, ind, target, weighted, need):  # type: ignore[override]
        from .kernels.centernet import reg_l1_launch

        loss, denom, gm = reg_l1_launch(output, mask, ind, target, weighted, need)
        ctx.meta = (output.shape, output.dtype)
        ctx.save_for_backward(gm, ind, denom)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        from .kernels.centernet import scatter_rows_launch

        refuse_double_backward("reg_l1_loss (triton backend)")
        gm, ind, denom = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        shape, dtype = ctx.meta
        grad = scatter_rows_launch(gm, ind, shape, dtype, scale=grad_loss, denom=denom)
        return grad, None, None, None, None, None


class _HeatmapFromBoxesTriton(torch.autograd.Function):
    """CenterNet's focal term of ``hm`` against the targets of raw boxes, the targets never
    materialised (kernels/centernet.py, ``centernet_hm_loss_launch``). For float32/float64 ``hm``
    the forward also writes the final gradient; the first backward scales it in place by the
    upstream gradient (nothing moves when that is 1), any later one (retained graph) and every
    float16/bfloat16 one recompute it. Returns (loss, wh, reg, ind, reg_mask)."""

    @staticmethod
    def forward(ctx, hm, boxes, labels, box_mask, down_ratio, need):  # type: ignore[override]
        from .kernels.centernet import centernet_hm_loss_launch
        from .kernels.reduce import stores_gradients

        grad = None
        if need and stores_gradients(hm):
            grad = torch.empty(hm.shape, dtype=hm.dtype, device=hm.device)
        loss, aux, small = centernet_hm_loss_launch(
            hm, boxes, labels, box_mask, down_ratio, CENTERNET_FOCAL, grad
        )
        ctx.save_for_backward(hm, boxes, labels, box_mask, aux)
        ctx.down_ratio = down_ratio
        ctx.grad = grad
        outs = (small["wh"], small["reg"], small["ind"], small["reg_mask"])
        ctx.mark_non_differentiable(*outs)
        return (loss, *outs)

    @staticmethod
    def backward(ctx, grad_loss, *_unused):  # type: ignore[override]
        from .kernels.centernet import centernet_hm_grad_launch
        from .kernels.reduce import scale_gradients_

        none = (None,) * 5
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return (None, *none)
        refuse_double_backward("centernet_loss (triton backend)")
        if ctx.grad is not None:
            grad, ctx.grad = ctx.grad, None
            scale_gradients_(grad_loss, grad)
            return (grad, *none)
        hm, boxes, labels, box_mask, aux = ctx.saved_tensors
        grad = centernet_hm_grad_launch(
            grad_loss, aux, hm, boxes, labels, box_mask, ctx.down_ratio, CENTERNET_FOCAL
        )
        return (grad, *none)
