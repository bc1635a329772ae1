"""CASS soft-target loss (docs/spec.md 10): a patch-importance head against a soft box mask.

Y [B,1,Hp,Wp] = cass_soft_target(boxes): per patch centre, 1 on a box's core, a decaying band of
width ``expansion_ratio`` x the box around it (anisotropic Gaussian, circular, or linear), merged
over the boxes by max (or a sum clamped at 1); see docs/spec.md 10.2.

L = reduce_patches f(s, Y), P = sigmoid(s), 1 - P = sigmoid(-s):
    focal: f = -Y (1-P)^alpha log(P + eps) - (1 - Y) P^beta log(1 - P + eps)
    mse:   f = (P - Y)^2
    (from the logit without rounding P first: log(P + eps) = log1p(eps - (1 - P)) for P >= 1/2,
    P - Y = (1 - Y) - (1 - P) there, and likewise for 1 - P; docs/spec.md 10.3)
    reduce: "mean" sum f / (B Hp Wp), "sum" sum f
dL/ds = df/ds / D (D = B Hp Wp or 1), df/ds in ``kernels/cass.py``; no gradient into the boxes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .backend import PrecomputedGradient, compute_dtype, needs_grad, resolve_backend
from .distributed import active_group, denominator_sync, finish
from .options import LossModule, LossOptions
from .validation import (
    SIGMA_RANGE,
    check_bool,
    check_choice,
    check_coordinates,
    check_exponent,
    check_floating,
    check_mask_dtype,
    check_number,
    check_positive_int,
    check_range,
    check_real,
    check_same_device,
    check_shape,
    check_sigma,
    check_size,
    check_tensor,
    shape_str,
)

TARGET_CHUNK = 2**22  # torch backend: patches x boxes evaluated at once (memory bound)
STRIDE_RANGE = (1e-6, 1e6)  # pixels per cell: box / stride stays a finite float32
EPS_MAX = 1e30  # inside the logs: finite in float32
OPTION_MAX = 1e30  # expansion_ratio, min_size, small_target_threshold, alpha, beta: float32-finite
# eps below which log(P + eps) is evaluated in log space (kernels/cass.py LOG_TINY): P below the
# normal range (flushed) is then an error of at most 2^-26 of eps
TINY_EPS = {torch.float32: 2.0**-100, torch.float64: 2.0**-1000}


def patch_grid(feat_size: tuple[int, int], patch_size: int) -> tuple[int, int, int, int]:
    """(Ph, Pw, Hp, Wp): ``min(patch_size, h)`` x ``min(patch_size, w)`` cells per patch and
    ``ceil`` patch counts; patch (k, l) is at flat index k Wp + l."""
    h, w = feat_size
    ph, pw = min(patch_size, h), min(patch_size, w)
    return ph, pw, -(-h // ph), -(-w // pw)


def box_dtype(boxes: torch.Tensor) -> torch.dtype:
    """The dtype of the box arithmetic: float64 for float64 boxes, else float32."""
    return torch.float64 if boxes.dtype == torch.float64 else torch.float32


@dataclasses.dataclass(frozen=True)
class CASSTargetOptions(LossOptions):
    """Options of :func:`cass_soft_target` (docs/spec.md 10.1): the patch grid (``stride`` pixels
    per feature cell, ``patch_size`` cells per patch), the band (``expansion_ratio`` of the box,
    boxes under ``min_size`` cells enlarged about their centre), the decay (``"gaussian"`` or
    ``"linear"``, ``anisotropic`` normalisers, ``base_sigma``, times ``small_target_gain`` for
    boxes under ``small_target_threshold`` cells), the ``merge`` (``"max"`` or ``"sum"``)."""

    stride: float = 32.0
    patch_size: int = 4
    expansion_ratio: float = 0.3
    min_size: float = 1.0
    decay: str = "gaussian"
    anisotropic: bool = True
    base_sigma: float = 0.5
    small_target_gain: float = 1.5
    small_target_threshold: float = 4.0
    merge: str = "max"

    def validate(self) -> None:
        stride = check_number("stride", self.stride, positive=True)
        if not STRIDE_RANGE[0] <= stride <= STRIDE_RANGE[1]:  # box / stride finite in float32
            lo, hi = STRIDE_RANGE
            raise ValueError(f"stride: expected a number in [{lo:g}, {hi:g}], got {self.stride!r}")
        self._set("stride", stride)
        check_positive_int("patch_size", self.patch_size)
        for name in ("expansion_ratio", "min_size", "small_target_threshold"):
            self._set(name, check_range(name, getattr(self, name), 0.0, OPTION_MAX))
        check_choice("decay", self.decay, ("gaussian", "linear"))
        check_bool("anisotropic", self.anisotropic)
        self._set("base_sigma", check_sigma("base_sigma", self.base_sigma))
        gain = check_number("small_target_gain", self.small_target_gain, positive=True)
        lo, hi = SIGMA_RANGE
        if not lo <= self.base_sigma * gain <= hi:  # 2 sigma^2 stays a normal float32
            raise ValueError(
                f"small_target_gain: expected base_sigma * small_target_gain in [{lo:g}, {hi:g}], "
                f"got {self.base_sigma!r} * {self.small_target_gain!r}"
            )
        self._set("small_target_gain", gain)
        check_choice("merge", self.merge, ("max", "sum"))


@dataclasses.dataclass(frozen=True)
class SoftFocalOptions(LossOptions):
    """Options of :func:`soft_focal_loss`: the exponents ``alpha`` (positives, on 1 - P) and
    ``beta`` (negatives, on P), ``eps`` inside the logs (0: exact logsigmoid), ``reduction``."""

    alpha: float = 2.0
    beta: float = 4.0
    eps: float = 1e-8
    reduction: str = "mean"

    def validate(self) -> None:
        _validate_loss_fields(self)


def _validate_loss_fields(opts: Any) -> None:
    # alpha, beta <= OPTION_MAX: finite in float32 (an infinite exponent makes 1^inf = NaN)
    opts._set("alpha", check_exponent("alpha", opts.alpha, limit=OPTION_MAX))
    opts._set("beta", check_exponent("beta", opts.beta, limit=OPTION_MAX))
    opts._set("eps", check_range("eps", opts.eps, 0.0, EPS_MAX))  # log(P + eps) finite in float32
    check_choice("reduction", opts.reduction, ("mean", "sum"))


@dataclasses.dataclass(frozen=True)
class CASSOptions(CASSTargetOptions):
    """Options of :func:`cass_loss` / :class:`CASSLoss`: those of :class:`CASSTargetOptions`,
    the ``loss`` (``"focal"`` or the pre-audit ``"mse"``) and those of :class:`SoftFocalOptions`."""

    loss: str = "focal"
    alpha: float = 2.0
    beta: float = 4.0
    eps: float = 1e-8
    reduction: str = "mean"

    def validate(self) -> None:
        super().validate()
        check_choice("loss", self.loss, ("focal", "mse"))
        _validate_loss_fields(self)


def target_fields(opts: CASSTargetOptions) -> dict[str, Any]:
    """The target options of ``opts`` (a CASSOptions or CASSTargetOptions) by name."""
    return {f: getattr(opts, f) for f in CASSTargetOptions.__dataclass_fields__}


# -------------------------------------------------------------------------------- input checks


def check_boxes(
    boxes: object, box_mask: torch.Tensor | None, batch: int | None, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(boxes [B,N,4], box_mask [B,N] or None) from a tensor [B,N,4] (with an optional mask) or
    a list of B tensors [N_b,4] (padded to the longest, with a mask; no ``box_mask`` then)."""
    if isinstance(boxes, (list, tuple)):
        if box_mask is not None:
            raise ValueError(
                "box_mask: expected None with a list of boxes (every listed box exists), got a "
                "tensor"
            )
        if batch is not None and len(boxes) != batch:
            raise ValueError(
                f"boxes: expected a list of {batch} tensors [N_b, 4], got {len(boxes)}"
            )
        for i, bx in enumerate(boxes):
            check_tensor(f"boxes[{i}]", bx)
            check_coordinates(f"boxes[{i}]", bx)
            check_shape(f"boxes[{i}]", bx, [None, 4], "[N_b, 4]")
        dev = boxes[0].device if boxes else (device or torch.device("cpu"))
        if boxes:
            check_same_device({f"boxes[{i}]": bx for i, bx in enumerate(boxes)})
        f64 = any(bx.dtype == torch.float64 for bx in boxes)
        dtype = torch.float64 if f64 else torch.float32
        n = max([0] + [bx.shape[0] for bx in boxes])  # (no default=: torch.compile traces it)
        out = torch.zeros(len(boxes), n, 4, dtype=dtype, device=dev)
        mask = torch.zeros(len(boxes), n, dtype=torch.bool, device=dev)
        for i, bx in enumerate(boxes):
            out[i, : bx.shape[0]] = bx.detach()
            mask[i, : bx.shape[0]] = True
        return out, mask
    check_tensor("boxes", boxes)
    check_coordinates("boxes", boxes)
    b = batch if batch is not None else None
    check_shape("boxes", boxes, [b, None, 4], f"[{'B' if b is None else b}, N, 4]")
    if box_mask is not None:
        check_tensor("box_mask", box_mask)
        check_mask_dtype("box_mask", box_mask)
        bb, n = boxes.shape[:2]
        check_shape("box_mask", box_mask, [bb, n], f"[{bb}, {n}]")
    return boxes, box_mask


def check_feat_size(feat_size: object) -> tuple[int, int]:
    return check_size("feat_size", feat_size)


def check_scores(scores: object, feat_size: tuple[int, int], patch_size: int) -> int:
    """The batch size of scores [B, Hp*Wp] or [B,1,Hp,Wp] (floating)."""
    check_tensor("scores", scores)
    check_floating("scores", scores)
    _, _, hp, wp = patch_grid(feat_size, patch_size)
    ok = (scores.dim() == 2 and scores.shape[1] == hp * wp) or (
        scores.dim() == 4 and tuple(scores.shape[1:]) == (1, hp, wp)
    )
    if not ok:
        raise ValueError(
            f"scores: expected [B, {hp * wp}] or [B, 1, {hp}, {wp}] (feat_size {tuple(feat_size)} "
            f"and patch_size {patch_size}: a {hp} x {wp} patch grid), got {shape_str(scores)}"
        )
    return scores.shape[0]


# ------------------------------------------------------------------------------- torch backend


def soft_target_torch(
    boxes: torch.Tensor, box_mask: torch.Tensor | None, feat_size: tuple[int, int], opts: Any
) -> torch.Tensor:
    """Y [B,Hp,Wp] in the box dtype (docs/spec.md 10.2), every factor split by axis and the boxes
    evaluated a chunk at a time (at most ``TARGET_CHUNK`` box-patch pairs in memory)."""
    bdt = box_dtype(boxes)
    h, w = feat_size
    ph, pw, hp, wp = patch_grid(feat_size, opts.patch_size)
    b, n = boxes.shape[:2]
    dev = boxes.device
    py = (torch.arange(hp, dtype=bdt, device=dev) + 0.5) * ph
    px = (torch.arange(wp, dtype=bdt, device=dev) + 0.5) * pw
    y = torch.zeros(b, hp, wp, dtype=bdt, device=dev)
    chunk = max(1, TARGET_CHUNK // max(b * hp * wp, 1))
    for n0 in range(0, n, chunk):
        bx = boxes[:, n0 : n0 + chunk].detach().to(bdt) / opts.stride
        m = _box_masks(bx, px, py, h, w, opts)  # [B, c, Hp, Wp]
        if box_mask is not None:
            m = torch.where(box_mask[:, n0 : n0 + chunk, None, None].bool(), m, 0)
        if opts.merge == "max":
            y = torch.maximum(y, m.amax(dim=1))
        else:
            y = y + m.sum(dim=1)
    return y.clamp(max=1) if opts.merge == "sum" else y


def _box_masks(bx, px, py, h, w, opts) -> torch.Tensor:
    """M_n [B,c,Hp,Wp] of the boxes bx [B,c,4] in feature cells."""
    x1, y1, x2, y2 = bx.unbind(-1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    thin = x2 - x1 < opts.min_size
    x1, x2 = (
        torch.where(thin, cx - opts.min_size / 2, x1),
        torch.where(thin, cx + opts.min_size / 2, x2),
    )
    thin = y2 - y1 < opts.min_size
    y1, y2 = (
        torch.where(thin, cy - opts.min_size / 2, y1),
        torch.where(thin, cy + opts.min_size / 2, y2),
    )
    bw, bh = x2 - x1, y2 - y1
    ew, eh = opts.expansion_ratio * bw, opts.expansion_ratio * bh
    # a box whose arithmetic is not finite (a NaN or infinite coordinate, an overflow) is in no
    # region (docs/spec.md 10.4)
    visible = torch.stack([x1, y1, x2, y2, cx, cy, ew, eh]).isfinite().all(0)  # [B, c]
    core_x, dil_x, dx = _axis(px, x1, x2, cx, bw, ew, w)  # [B, c, Wp]
    core_y, dil_y, dy = _axis(py, y1, y2, cy, bh, eh, h)  # [B, c, Hp]
    small = torch.sqrt(bw * bh) < opts.small_target_threshold
    sig = opts.base_sigma * opts.small_target_gain, opts.base_sigma
    two_sig2 = torch.where(
        small,
        torch.tensor(2 * sig[0] ** 2, dtype=bx.dtype),
        torch.tensor(2 * sig[1] ** 2, dtype=bx.dtype),
    )[..., None]
    if opts.anisotropic:
        nx = dx / torch.clamp(ew, min=1)[..., None]
        ny = dy / torch.clamp(eh, min=1)[..., None]
        rho = torch.maximum(ny[..., :, None], nx[..., None, :])
        g = (
            torch.exp(-(ny**2) / two_sig2)[..., :, None]
            * torch.exp(-(nx**2) / two_sig2)[..., None, :]
        )
    else:
        # everything divided by a power of two sc >= 1 (exact, the unscaled bits wherever those
        # do not overflow): a band wider than 2^64 cells gives no inf / inf
        sc = _pow2_floor(torch.clamp(torch.maximum(ew, eh), min=1).nan_to_num(1.0))
        ews, ehs = ew / sc, eh / sc
        dxs, dys = dx / sc[..., None], dy / sc[..., None]
        norm = torch.maximum(torch.sqrt(ews**2 + ehs**2), 1 / sc)[..., None, None]
        rho = torch.sqrt(dys[..., :, None] ** 2 + dxs[..., None, :] ** 2) / norm
        g = torch.exp(-(rho**2) / two_sig2[..., None])
    if opts.decay == "gaussian":
        dec = torch.where(rho < 1, g, 0)
    else:
        dec = torch.clamp(1 - rho, min=0)
    core = core_y[..., :, None] & core_x[..., None, :]
    dil = dil_y[..., :, None] & dil_x[..., None, :]
    m = torch.where(core, 1.0, torch.where(dil, dec, 0)).to(bx.dtype)
    return torch.where(visible[..., None, None], m, 0)


def _pow2_floor(x: torch.Tensor) -> torch.Tensor:
    """2^floor(log2 x) of a finite x > 0, exactly (frexp: x = m 2^e, m in [1/2, 1))."""
    _, e = torch.frexp(x)
    return torch.ldexp(torch.ones_like(x), e - 1)


def _axis(pc, lo, hi, c, size, e, extent):
    """(core, dil, distance) [B, c, P] of the patch centres pc [P] along one axis."""
    zero = torch.zeros((), dtype=lo.dtype, device=lo.device)
    ext = zero + extent
    lo, hi, c, size, e = (t[..., None] for t in (lo, hi, c, size, e))
    core = (torch.maximum(lo, zero) <= pc) & (pc <= torch.minimum(hi, ext))
    dil = (torch.maximum(lo - e, zero) <= pc) & (pc <= torch.minimum(hi + e, ext))
    dist = torch.clamp((pc - c).abs() - size / 2, min=0)
    return core, dil, dist


def soft_focal_terms(
    s: torch.Tensor, y: torch.Tensor, opts: Any, mse: bool, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(f, df/ds or None) elementwise (module docstring; the formulas of kernels/cass.py)."""
    p, q = torch.sigmoid(s), torch.sigmoid(-s)
    if mse:
        # P - Y as (1 - Y) - Q where P >= 1/2: no P rounded near 1 (the kernels' form)
        d = torch.where(p >= 0.5, (1 - y) - q, p - y)
        return d * d, (2 * d * p * q if need_grad else None)
    a, b, eps = opts.alpha, opts.beta, opts.eps
    ls_p, ls_q = F.logsigmoid(s), F.logsigmoid(-s)
    if eps == 0:
        log_p, log_q = ls_p, ls_q
        p_ratio = q_ratio = 1.0
    elif eps < TINY_EPS[s.dtype]:
        # eps may round (or flush) to 0, and a P flushed below the normal range is not negligible
        # against it: log(P + eps) = logaddexp(log P, log eps), exact in log space
        log_eps = torch.tensor(math.log(eps), dtype=s.dtype, device=s.device)
        log_p, log_q = torch.logaddexp(ls_p, log_eps), torch.logaddexp(ls_q, log_eps)
        p_ratio, q_ratio = torch.exp(ls_p - log_p), torch.exp(ls_q - log_q)
    else:
        log_p, log_q = _log_prob(p, q, eps), _log_prob(q, p, eps)
        p_ratio, q_ratio = p / (p + eps), q / (q + eps)
    # Q^a = exp(a log Q) from logsigmoid: exact also where Q (or P) rounds to 1 (x^0 = 1)
    q_a = torch.exp(a * ls_q) if a != 0 else torch.ones_like(s)
    p_b = torch.exp(b * ls_p) if b != 0 else torch.ones_like(s)
    f = -y * q_a * log_p - (1 - y) * p_b * log_q
    if not need_grad:
        return f, None
    df = y * (a * q_a * p * log_p - q_a * q * p_ratio) + (1 - y) * (
        p_b * p * q_ratio - b * p_b * q * log_q
    )
    return f, df


def _log_prob(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """log(p + eps) of a probability p given with its complement q = 1 - p (sigmoid(s) and
    sigmoid(-s), each accurate): log1p(eps - q) for p >= 1/2, so that a p rounded near 1 loses
    nothing (kernels/primitives.py ``log_prob_pair``), else log(p + eps)."""
    return torch.where(p >= 0.5, torch.log1p(eps - q), torch.log(p + eps))


def _reduced(total: torch.Tensor, count: int, reduction: str, sync) -> tuple[torch.Tensor, Any]:
    """(loss, 1 / D) of the summed f: D = max(count over the ranks, 1) for "mean", 1 for "sum"."""
    if reduction == "sum":
        return total, 1.0
    n = torch.full((), float(count), dtype=total.dtype, device=total.device)  # (no H2D copy)
    d = (sync(n) if sync is not None else n).clamp_min(1)
    return total / d, 1 / d


def _loss_share(
    op: str, scores: torch.Tensor, y: torch.Tensor, opts: Any, mse: bool, sync
) -> torch.Tensor:
    """Torch backend of the reduced loss of scores against y (y's shape: scores' elements); ``op``
    names the public op (in the double-backward error)."""
    (need,) = needs_grad(scores)

    def value_and_grad(s: torch.Tensor):
        cdt = compute_dtype(s.dtype)
        f, df = soft_focal_terms(s.to(cdt), y.to(cdt).reshape(s.shape), opts, mse, need)
        loss, inv_d = _reduced(f.sum(), f.numel(), opts.reduction, sync)
        return loss, loss.new_zeros(0), ((df * inv_d) if df is not None else None,)

    loss, _ = PrecomputedGradient.apply(op, value_and_grad, scores)
    return loss


# ---------------------------------------------------------------------------------- public ops


def cass_soft_target(
    boxes: torch.Tensor | Sequence[torch.Tensor],
    feat_size: tuple[int, int],
    *,
    box_mask: torch.Tensor | None = None,
    options: CASSTargetOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """The CASS soft box mask Y [B,1,Hp,Wp] (docs/spec.md 10.2): float32, float64 for float64
    boxes; no gradient.

    boxes [B,N,4] (x1, y1, x2, y2) input pixels, or a list of B tensors [N_b,4]; box_mask [B,N]
    (bool/int, which boxes exist); feat_size (h, w) feature cells. Options
    (:class:`CASSTargetOptions`): ``stride=32, patch_size=4, expansion_ratio=0.3, min_size=1.0,
    decay="gaussian", anisotropic=True, base_sigma=0.5, small_target_gain=1.5,
    small_target_threshold=4.0, merge="max", backend="auto"``; ``reduce_across_ranks=True`` is
    a ValueError (nothing to reduce).
    """
    feat_size = check_feat_size(feat_size)
    boxes, box_mask = check_boxes(boxes, box_mask, None, None)
    check_same_device({"boxes": boxes, "box_mask": box_mask})
    opts = CASSTargetOptions.build(options, overrides)
    if opts.reduce_across_ranks:  # (inherited from LossOptions; an option is never a no-op)
        raise ValueError(
            "reduce_across_ranks: cass_soft_target builds each image's target and has no "
            "normaliser to reduce across ranks; expected False, got True"
        )
    if resolve_backend(opts.backend, boxes.device) == "triton":
        from .triton_cass import cass_soft_target_triton

        return cass_soft_target_triton(boxes, box_mask, feat_size, opts)
    return soft_target_torch(boxes, box_mask, feat_size, opts).unsqueeze(1)


def soft_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    options: SoftFocalOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """Soft focal loss (docs/spec.md 10.3.1) of logits against a soft target Y in [0, 1] of the
    same shape: f = -Y (1-P)^alpha log(P + eps) - (1 - Y) P^beta log(1 - P + eps), P =
    sigmoid(logits), mean over every element (an empty input: 0) or sum.

    Options (:class:`SoftFocalOptions`): ``alpha=2.0, beta=4.0, eps=1e-8, reduction="mean",
    backend="auto", reduce_across_ranks=False, process_group=None``. The gradient flows into
    ``logits`` (a target that requires grad is refused: detach it). Returns a 0-dim float32
    tensor (float64 for float64 logits).
    """
    check_tensor("logits", logits)
    check_floating("logits", logits)
    check_tensor("target", target)
    check_real("target", target)
    check_shape("target", target, list(logits.shape), shape_str(logits))
    if target.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "target: expected a tensor without grad (the soft focal loss differentiates the "
            "logits only), got one that requires grad; pass target.detach()"
        )
    check_same_device({"logits": logits, "target": target})
    opts = SoftFocalOptions.build(options, overrides)
    group = active_group(opts)
    return finish(soft_focal_share(logits, target, opts, group), group)


def soft_focal_share(logits, target, opts: SoftFocalOptions, group: Any) -> torch.Tensor:
    """This rank's share of :func:`soft_focal_loss` (inputs checked)."""
    sync = denominator_sync(group)
    if resolve_backend(opts.backend, logits.device) == "triton":
        from .triton_cass import soft_focal_loss_triton

        return soft_focal_loss_triton(logits, target, opts, sync)
    return _loss_share("soft_focal_loss", logits, target, opts, False, sync)


def cass_loss(
    scores: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    box_mask: torch.Tensor | None = None,
    *,
    feat_size: tuple[int, int],
    options: CASSOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """Functional form of :class:`CASSLoss`: the same inputs; the options as keywords (the fields
    of :class:`CASSOptions`) or as a built ``options`` object."""
    opts = CASSOptions.build(options, overrides)
    feat_size = check_feat_size(feat_size)
    batch = check_scores(scores, feat_size, opts.patch_size)
    boxes, box_mask = check_boxes(boxes, box_mask, batch, scores.device)
    check_same_device({"scores": scores, "boxes": boxes, "box_mask": box_mask})
    group = active_group(opts)
    return finish(cass_share(scores, boxes, box_mask, feat_size, opts, group), group)


def cass_share(scores, boxes, box_mask, feat_size, opts: CASSOptions, group: Any) -> torch.Tensor:
    """This rank's share of :func:`cass_loss` (inputs checked)."""
    sync = denominator_sync(group)
    if resolve_backend(opts.backend, scores.device) == "triton":
        from .triton_cass import cass_loss_triton

        return cass_loss_triton(scores, boxes, box_mask, feat_size, opts, sync)
    y = soft_target_torch(boxes, box_mask, feat_size, opts)
    return _loss_share("cass_loss", scores, y, opts, opts.loss == "mse", sync)


class SoftFocalLoss(LossModule):
    """Module form of :func:`soft_focal_loss`: ``SoftFocalLoss(**options)`` (the fields of
    :class:`SoftFocalOptions`), ``forward(logits, target)``."""

    Options = SoftFocalOptions

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_focal_loss(logits, target, options=self.options)


class CASSLoss(LossModule):
    """CASS soft-target loss of a patch-importance head (docs/spec.md 10), fused from the boxes.

    ``CASSLoss(**options)`` with the fields of :class:`CASSOptions` (``stride=32, patch_size=4,
    expansion_ratio=0.3, min_size=1.0, decay="gaussian", anisotropic=True, base_sigma=0.5,
    small_target_gain=1.5, small_target_threshold=4.0, merge="max", loss="focal", alpha=2.0,
    beta=4.0, eps=1e-8, reduction="mean", backend="auto", reduce_across_ranks=False,
    process_group=None``), called as ``criterion(scores, boxes, box_mask=None, *, feat_size)``:
    scores [B, Hp*Wp] or [B,1,Hp,Wp] logits (patch (k, l) at k Wp + l), boxes [B,N,4] (x1, y1,
    x2, y2) input pixels or a list of B [N_b,4], box_mask [B,N], feat_size (h, w) of the feature
    map the patches tile. Returns the 0-dim loss (float32; float64 for float64 scores); the
    gradient flows into ``scores`` only.
    """

    Options = CASSOptions

    def forward(
        self,
        scores: torch.Tensor,
        boxes: torch.Tensor | Sequence[torch.Tensor],
        box_mask: torch.Tensor | None = None,
        *,
        feat_size: tuple[int, int],
    ) -> torch.Tensor:
        return cass_loss(scores, boxes, box_mask, feat_size=feat_size, options=self.options)
