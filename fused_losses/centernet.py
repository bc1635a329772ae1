"""The CenterNet (ctdet) loss family: focal heatmap loss, gathered L1 regressions, GPU targets.

Drop-in for CenterNet's own (github.com/xingyizhou/CenterNet, ``models/losses.py``,
``datasets/sample/ctdet.py``), same arguments and the same numbers (docs/centernet.md):

    centernet_focal_loss(pred, gt)        CenterNet's _neg_loss = masked_focal_loss(alpha=2, beta=4,
                                          pos_threshold=1, normalize="num_pos", eps=0)
    transpose_and_gather_feat(feat, ind)  feat [B,C,H,W], ind [B,M] -> [B,M,C], no NHWC copy
    reg_l1_loss(output, mask, ind, target)           RegL1Loss, mask [B,M] (broadcast over C)
    reg_weighted_l1_loss(output, mask, ind, target)  RegWeightedL1Loss, mask [B,M,C]
    centernet_targets(boxes, labels, box_mask, ...)  ctdet targets (centernet_targets.py)
    CenterNetLoss                                    hm_w focal + wh_w L1(wh) + off_w L1(reg)

Backends: "torch" computes each loss and its analytic gradient in one forward pass
(``PrecomputedGradient``; the gradient of a gathered regression is scattered into ``output`` with
``scatter_add``, deterministic on the CPU). "triton" runs the kernels of ``kernels/centernet.py``:
one gather-and-reduce kernel per regression loss (per-program partials, a fixed-order final
reduction, no float atomics) and a deterministic scatter for its backward; one kernel for all
targets of a batch (autograd glue in ``triton_centernet.py``). Nothing here synchronises with the
device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .backend import (
    PrecomputedGradient,
    check_backend,
    compute_dtype,
    needs_grad,
    resolve_backend,
)
from .centernet_labels import TARGET_KEYS, build_targets, check_box_inputs
from .distributed import active_group, denominator_sync, finish, global_loss
from .focal import FocalOptions, focal_share, masked_focal_loss
from .options import COMMON_OPTIONS, LossModule, LossOptions
from .smooth_l1 import smooth_l1_terms
from .validation import (
    check_choice,
    check_floating,
    check_integer,
    check_number,
    check_positive_int,
    check_real,
    check_same_device,
    check_shape,
    check_tensor,
    shape_str,
)

# CenterNet's _neg_loss as an instance of the masked focal loss (docs/spec.md 4).
CENTERNET_FOCAL = FocalOptions(alpha=2.0, beta=4.0, pos_threshold=1.0, normalize="num_pos", eps=0.0)
REG_EPS = 1e-4  # RegL1Loss: loss / (mask.sum() + 1e-4)
COMPONENTS = ("hm", "wh", "off")


# ----------------------------------------------------------------------------------------------
# Argument checks (metadata only: no device sync), each error naming the argument.


def check_constant(name: str, x: torch.Tensor) -> None:
    """A target is a constant (docs/spec.md 8): the fused ops differentiate the predictions only
    and would give a target no gradient, so one that requires grad is refused while grad mode is
    on (as CASS's ``soft_focal_loss`` does), before any kernel runs."""
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name}: expected a tensor that does not require grad (a target is a constant: the "
            "loss differentiates the predictions only), got one that requires grad: detach it"
        )


def check_reg_inputs(
    output: torch.Tensor,
    mask: torch.Tensor,
    ind: torch.Tensor,
    target: torch.Tensor,
    *,
    weighted: bool,
    names: tuple[str, str, str, str] = ("output", "mask", "ind", "target"),
) -> None:
    """output [B,C,H,W] floating, ind [B,M] integer, target [B,M,C], mask [B,M] or [B,M,C];
    target and mask constants (:func:`check_constant`)."""
    n_out, n_mask, n_ind, n_target = names
    check_tensor(n_out, output)
    check_floating(n_out, output)
    check_shape(n_out, output, [None, None, None, None], "[B, C, H, W]")
    b, c = output.shape[:2]
    check_tensor(n_ind, ind)
    check_integer(n_ind, ind)
    check_shape(n_ind, ind, [b, None], f"[{b}, M]")
    m = ind.shape[1]
    check_tensor(n_target, target)
    check_real(n_target, target)
    check_shape(n_target, target, [b, m, c], f"[{b}, {m}, {c}]")
    check_tensor(n_mask, mask)
    check_real(n_mask, mask)
    if weighted:
        check_shape(n_mask, mask, [b, m, c], f"[{b}, {m}, {c}]")
    else:
        check_shape(n_mask, mask, [b, m], f"[{b}, {m}]")
    check_constant(n_target, target)
    check_constant(n_mask, mask)
    check_same_device({n_out: output, n_mask: mask, n_ind: ind, n_target: target})


# ----------------------------------------------------------------------------------------------
# Focal heatmap loss.


def clamped_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """CenterNet's ``_sigmoid``: ``clamp(sigmoid(x), eps, 1 - eps)`` (out of place)."""
    return torch.clamp(x.sigmoid(), min=eps, max=1 - eps)


def centernet_focal_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    *,
    backend: str = "auto",
    reduce_across_ranks: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """CenterNet's ``_neg_loss``: pred (clamped-sigmoid probabilities) and gt [B,K,H,W].

    ``-(sum_pos log(p) (1-p)^2 + sum_neg log(1-p) p^2 (1-gt)^4) / num_pos`` over the batch,
    positives ``gt == 1``, negatives ``gt < 1``; ``-sum_neg ...`` alone when there is no positive.
    No epsilon inside the logs. The masked focal loss with alpha=2, beta=4, pos_threshold=1,
    normalize="num_pos", eps=0 (identical for gt <= 1, the only values CenterNet produces).
    The gradient flows into ``pred``; a ``gt`` that requires grad is refused (ValueError: detach
    it), as every CenterNet target is (docs/spec.md 8). ``reduce_across_ranks`` /
    ``process_group``: num_pos over every data-parallel rank (``fused_losses.LossOptions``).
    """
    check_tensor("pred", pred)
    check_floating("pred", pred)
    check_tensor("gt", gt)
    check_real("gt", gt)
    if gt.shape != pred.shape:
        raise ValueError(f"gt: expected shape {shape_str(pred)} (as pred), got {shape_str(gt)}")
    check_constant("gt", gt)
    opts = CENTERNET_FOCAL.replace(
        backend=backend, reduce_across_ranks=reduce_across_ranks, process_group=process_group
    )
    return masked_focal_loss(pred, gt, options=opts)


class CenterNetFocalLoss(LossModule):
    """CenterNet's ``FocalLoss`` module: ``forward(out, target)`` = :func:`centernet_focal_loss`;
    options: ``backend``, ``reduce_across_ranks``, ``process_group`` (docs/spec.md 9)."""

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return centernet_focal_loss(out, target, **_common(self.options))


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
    check_integer("ind", ind)
    check_shape("ind", ind, [b, None], f"[{b}, M]")
    check_same_device({"feat": feat, "ind": ind})
    if resolve_backend(check_backend(backend), feat.device) == "triton":
        from .triton_centernet import transpose_and_gather_feat_triton

        return transpose_and_gather_feat_triton(feat, ind)
    c = feat.shape[1]
    flat = feat.reshape(b, c, feat.shape[2] * feat.shape[3])  # (not -1: B may be 0)
    idx = ind.long()[:, None, :].expand(b, c, ind.shape[1])
    return flat.gather(2, idx).transpose(1, 2)


def _common(options: LossOptions) -> dict[str, Any]:
    """The options every loss has (backend, data-parallel ones), as keywords."""
    return {name: getattr(options, name) for name in COMMON_OPTIONS}


def _reg_torch(need: bool, weighted: bool, sync=None, smooth: bool = False):
    """value_and_grad of a gathered L1 loss for PrecomputedGradient (torch backend); ``sync``
    (data parallel) sums the mask over the ranks; ``smooth``: RegLoss, smooth-L1 (beta 1) over
    the number of objects (the [B,M] mask summed before it is broadcast over C)."""

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
            msum = mk.sum() * (1 if smooth else c)
        d = pred * mk - t * mk
        denom = (sync(msum) if sync is not None else msum) + REG_EPS
        if smooth:
            s, ds = smooth_l1_terms(d, 1.0, need)
        else:
            s, ds = d.abs(), (torch.sign(d) if need else None)
        loss = s.sum() / denom
        grad = None
        if need:
            g = ds * mk / denom
            grad = torch.zeros(b, c, h * w, dtype=cdt, device=output.device)
            grad = grad.scatter_add_(2, idx, g.expand(b, c, m)).view(b, c, h, w)
        return loss, loss.new_zeros(0), (grad, None, None, None)

    return value_and_grad


def _reg_loss(
    output, mask, ind, target, weighted: bool, backend: str, group: Any = None, smooth=False
) -> torch.Tensor:
    """This rank's share of a gathered L1 (``smooth``: RegLoss's smooth-L1) loss (the whole loss
    when ``group`` is None)."""
    (need,) = needs_grad(output)
    sync = denominator_sync(group)
    if resolve_backend(backend, output.device) == "triton":
        from .triton_centernet import reg_l1_loss_triton

        return reg_l1_loss_triton(output, mask, ind, target, weighted, need, sync, smooth)
    fn = _reg_torch(need, weighted, sync, smooth)
    op = "reg_smooth_l1_loss" if smooth else "reg_weighted_l1_loss" if weighted else "reg_l1_loss"
    loss, _ = PrecomputedGradient.apply(op, fn, output, mask, ind, target)
    return loss


def _reg_public(
    output, mask, ind, target, weighted: bool, smooth: bool, common: dict[str, Any]
) -> torch.Tensor:
    """A public gathered-regression loss: its checks, its options (``common``: backend and the
    data-parallel ones), this rank's share and the global value."""
    check_reg_inputs(output, mask, ind, target, weighted=weighted)
    opts = LossOptions(**common)
    group = active_group(opts)
    share = _reg_loss(output, mask, ind, target, weighted, opts.backend, group, smooth)
    return finish(share, group)


def reg_l1_loss(
    output: torch.Tensor,
    mask: torch.Tensor,
    ind: torch.Tensor,
    target: torch.Tensor,
    *,
    backend: str = "auto",
    reduce_across_ranks: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """CenterNet's ``RegL1Loss``: ``sum |pred*m - target*m| / (sum m + 1e-4)``.

    output [B,C,H,W], mask [B,M] (broadcast over the C channels, so the denominator is
    ``C * sum(mask) + 1e-4``), ind [B,M], target [B,M,C], pred = transpose_and_gather_feat(output,
    ind). Gradient flows into ``output`` only (duplicate indices accumulate). 0-dim float32 result
    (float64 for float64 output). ``reduce_across_ranks`` / ``process_group``: the mask sum over
    every data-parallel rank (``fused_losses.LossOptions``).
    """
    common = dict(
        backend=backend, reduce_across_ranks=reduce_across_ranks, process_group=process_group
    )
    return _reg_public(output, mask, ind, target, False, False, common)


def reg_weighted_l1_loss(
    output: torch.Tensor,
    mask: torch.Tensor,
    ind: torch.Tensor,
    target: torch.Tensor,
    *,
    backend: str = "auto",
    reduce_across_ranks: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """CenterNet's ``RegWeightedL1Loss``: as :func:`reg_l1_loss` with a mask [B,M,C]."""
    common = dict(
        backend=backend, reduce_across_ranks=reduce_across_ranks, process_group=process_group
    )
    return _reg_public(output, mask, ind, target, True, False, common)


def reg_smooth_l1_loss(
    output: torch.Tensor,
    mask: torch.Tensor,
    ind: torch.Tensor,
    target: torch.Tensor,
    *,
    backend: str = "auto",
    reduce_across_ranks: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    """CenterNet's ``RegLoss`` (``_reg_loss``): ``sum smoothL1(pred*m - target*m) / (sum m +
    1e-4)``, smooth-L1 with beta 1, mask [B,M] summed before it is broadcast over the C channels
    (the denominator counts objects, unlike :func:`reg_l1_loss`). Shapes, gradient, duplicate
    indices and options as :func:`reg_l1_loss`."""
    common = dict(
        backend=backend, reduce_across_ranks=reduce_across_ranks, process_group=process_group
    )
    return _reg_public(output, mask, ind, target, False, True, common)


class RegLoss(LossModule):
    """CenterNet's ``RegLoss``: ``forward(output, mask, ind, target)`` =
    :func:`reg_smooth_l1_loss`; options: ``backend``, ``reduce_across_ranks``,
    ``process_group`` (docs/spec.md 9)."""

    def forward(self, output, mask, ind, target) -> torch.Tensor:
        return reg_smooth_l1_loss(output, mask, ind, target, **_common(self.options))


class RegL1Loss(LossModule):
    """CenterNet's ``RegL1Loss``: ``forward(output, mask, ind, target)``; options:
    ``backend``, ``reduce_across_ranks``, ``process_group`` (docs/spec.md 9)."""

    def forward(self, output, mask, ind, target) -> torch.Tensor:
        return reg_l1_loss(output, mask, ind, target, **_common(self.options))


class RegWeightedL1Loss(LossModule):
    """CenterNet's ``RegWeightedL1Loss``: ``forward(output, mask, ind, target)``, mask [B,M,C];
    options: ``backend``, ``reduce_across_ranks``, ``process_group`` (docs/spec.md 9)."""

    def forward(self, output, mask, ind, target) -> torch.Tensor:
        return reg_weighted_l1_loss(output, mask, ind, target, **_common(self.options))


# ----------------------------------------------------------------------------------------------
# Targets.


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
    check_constant("targets['hm']", t)
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


@dataclasses.dataclass(frozen=True)
class CenterNetOptions(LossOptions):
    """Options of :class:`CenterNetLoss`: the term weights (CenterNet's ``hm_weight``,
    ``wh_weight``, ``off_weight``), the regression loss (``reg_loss``: ``"l1"`` RegL1Loss, or
    ``"sl1"`` RegLoss's smooth-L1), the ``down_ratio`` from input pixels to the output map (for
    raw boxes) and the ``backend``."""

    hm_weight: float = 1.0
    wh_weight: float = 0.1
    off_weight: float = 1.0
    reg_loss: str = "l1"
    down_ratio: int = 4

    def validate(self) -> None:
        for name in ("hm_weight", "wh_weight", "off_weight"):
            self._set(name, check_number(name, getattr(self, name)))
        check_choice("reg_loss", self.reg_loss, ("l1", "sl1"))
        self._set("down_ratio", check_positive_int("down_ratio", self.down_ratio))


def stacks(name: str, x: Any) -> list:
    """A head given per stack (a list or tuple of S >= 1 tensors) or once (one tensor)."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"{name}: expected a tensor or a non-empty list of tensors (stacks)")
        return list(x)
    return [x]


def centernet_loss(
    hm: torch.Tensor | list[torch.Tensor],
    wh: torch.Tensor | list[torch.Tensor],
    reg: torch.Tensor | list[torch.Tensor],
    targets: dict[str, torch.Tensor] | None = None,
    *,
    boxes: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    return_components: bool = False,
    options: CenterNetOptions | None = None,
    **overrides: Any,
):
    """Functional form of :class:`CenterNetLoss`: the same inputs; the options as keywords (the
    fields of :class:`CenterNetOptions`: ``hm_weight=1.0, wh_weight=0.1, off_weight=1.0,
    reg_loss="l1", down_ratio=4, backend="auto", reduce_across_ranks=False,
    process_group=None``) or as a built ``options`` object."""
    opts = CenterNetOptions.build(options, overrides)
    backend, down_ratio = opts.backend, opts.down_ratio
    hms, whs, regs = stacks("hm", hm), stacks("wh", wh), stacks("reg", reg)
    if not len(hms) == len(whs) == len(regs):
        raise ValueError(
            f"hm, wh, reg: expected the same number of stacks, got {len(hms)}, {len(whs)}, "
            f"{len(regs)}"
        )
    for s, (h_s, w_s, r_s) in enumerate(zip(hms, whs, regs)):
        if s > 0:  # before the targets are checked against it: a wrong hm[s] is named
            check_tensor(f"hm[{s}]", h_s)
            if h_s.shape != hms[0].shape:
                raise ValueError(
                    f"hm[{s}]: expected shape {shape_str(hms[0])} (as hm[0]), got {shape_str(h_s)}"
                )
        t_s = check_centernet_inputs(h_s, w_s, r_s, targets, boxes, labels, box_mask, down_ratio)
    targets = t_s
    group = active_group(opts)  # data parallel: each term's share, one global sum at the end
    smooth = opts.reg_loss == "sl1"
    hm0 = hms[0]
    l_hm = None
    from_boxes = targets is None and hm0.numel() > 0 and len(hms) == 1
    if from_boxes and resolve_backend(backend, hm0.device) == "triton":
        from .triton_centernet import centernet_hm_loss_triton

        # Bandwidth first: the focal term rebuilds the target heatmap in registers.
        need = needs_grad(hm0)[0]
        sync = denominator_sync(group)
        l_hm, *small = centernet_hm_loss_triton(
            hm0, boxes, labels, box_mask, down_ratio, need, sync
        )
        targets = dict(zip(("wh", "reg", "ind", "reg_mask"), small))
    elif targets is None:
        size = tuple(hm0.shape[-2:])
        targets = build_targets(boxes, labels, box_mask, hm0.shape[1], size, down_ratio, backend)
    focal = CENTERNET_FOCAL.replace(backend=backend)
    ind, reg_mask = targets["ind"], targets["reg_mask"]
    terms = []
    for h_s, w_s, r_s in zip(hms, whs, regs):
        if l_hm is None:
            l_hm_s = focal_share(h_s, targets["hm"], None, focal, group)
        else:
            l_hm_s = l_hm
        l_wh = _reg_loss(w_s, reg_mask, ind, targets["wh"], False, backend, group, smooth)
        l_off = _reg_loss(r_s, reg_mask, ind, targets["reg"], False, backend, group, smooth)
        terms.append((l_hm_s, l_wh, l_off))
    n = len(terms)
    l_hm, l_wh, l_off = (sum(t[i] for t in terms) / n if n > 1 else terms[0][i] for i in range(3))
    total = opts.hm_weight * l_hm + opts.wh_weight * l_wh + opts.off_weight * l_off
    comps = torch.stack([l_hm.detach(), l_wh.detach(), l_off.detach()])
    total, comps = global_loss(total, group, comps)
    if not return_components:
        return total
    return total, dict(zip(("hm", "wh", "off"), comps.unbind(0)))


class CenterNetLoss(LossModule):
    """CenterNet's ctdet loss (``CtdetLoss`` with one stack and L1 regressions), fused.

    ``CenterNetLoss(**options)`` with the fields of :class:`CenterNetOptions` (``hm_weight=1.0,
    wh_weight=0.1, off_weight=1.0, reg_loss="l1", down_ratio=4, backend="auto",
    reduce_across_ranks=False, process_group=None``), called as ``criterion(hm, wh,
    reg, targets=None, *, boxes=None, labels=None, box_mask=None, return_components=False)``:
    ``hm`` [B,K,H,W] clamped-sigmoid probabilities (:func:`clamped_sigmoid` of the head), ``wh``
    and ``reg`` [B,2,H,W] head outputs, or each a list of S such tensors, one per stack of an
    hourglass network (every term is then averaged over the stacks, as CtdetLoss does); either ``targets``, a dict with ``hm``, ``wh``, ``reg``,
    ``ind``, ``reg_mask`` (CenterNet's batch, or :func:`centernet_targets`; extra keys are
    ignored), or raw ``boxes`` [B,N,4], ``labels`` [B,N] and ``box_mask`` [B,N], from which the
    targets are generated on the device without a host sync; the targets are constants (one that
    requires grad is refused: docs/spec.md 8). Returns ``hm_weight * focal +
    wh_weight * L1(wh) + off_weight * L1(reg)``, and with ``return_components=True`` ``(total,
    {"hm", "wh", "off"})`` with detached 0-dim terms.
    """

    Options = CenterNetOptions

    def forward(
        self,
        hm: torch.Tensor | list[torch.Tensor],
        wh: torch.Tensor | list[torch.Tensor],
        reg: torch.Tensor | list[torch.Tensor],
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
            options=self.options,
        )
