"""The gap-detection loss of a slider-captcha solver as one fused op (docs/spec.md 3).

Inputs at 1/4 resolution (stride 4), B images, Hf x Wf maps:

    heatmap_gap, heatmap_piece [B,1,Hf,Wf]   probabilities (logits with from_logits=True)
    offset [B,4,Hf,Wf]                       (du_gap, dv_gap, du_piece, dv_piece)
    angle  [B,2,Hf,Wf]                       (sin, cos) of the gap rotation, any scale
    gap_center, piece_center [B,2]           (x, y) input pixels
    gap_angle [B]                            radians
    confusers [B,K,2], confuser_mask [B,K]   fake gaps (hard negatives)
    padding_mask [B,1,H,W] | valid_box [B,4] letterbox padding, H = Hf * stride

Total = w_heatmap (L_heat_gap + L_heat_piece) + w_offset L_offset + w_angle L_angle
        + w_hard_negative L_hard_negative, each term as in the component ops (focal.py,
smooth_l1.py, cosine.py, hard_negative.py), with labels (Gaussian heatmaps, offset targets, the
padding weight W) generated from the coordinates inside the op.

The torch backend computes every term and its analytic gradient in one forward pass and keeps only
the four prediction gradients for backward, which scales them by the upstream gradient. The triton
backend runs the same math as Triton kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .backend import (
    PrecomputedGradient,
    compute_dtype,
    needs_grad,
    resolve_backend,
)
from .cosine import cosine_terms
from .distributed import active_group, denominator_sync, global_loss
from .focal import focal_neg_terms, focal_pos_terms
from .hard_negative import hard_negative_terms, negative_validity
from .labels import (
    CENTERS,
    gaussian_factors,
    object_windows,
    offset_target,
    weight_from_padding,
    window_radius,
)
from .options import LossModule, LossOptions
from .smooth_l1 import smooth_l1_terms
from .validation import (
    check_bool,
    check_choice,
    check_exponent,
    check_floating,
    check_label_smoothing,
    check_mask_dtype,
    check_number,
    check_padding,
    check_positive_int,
    check_real,
    check_same_device,
    check_shape,
    check_sigma,
    check_tensor,
)

COMPONENTS = ("heatmap_gap", "heatmap_piece", "offset", "angle", "hard_negative")


@dataclasses.dataclass(frozen=True)
class GapLossOptions(LossOptions):
    """Options of the gap-detection loss (docs/spec.md 3.1): label generation (``stride``,
    ``sigma`` in grid units, ``center`` "cell" or "exact"), the focal term (``alpha``, ``beta``,
    ``pos_threshold``, ``from_logits``, ``eps``, ``label_smoothing``: the focal target is
    Y (1 - 2 e) + e, positives and the regression masks stay on Y), the regression mask
    (``reg_threshold``), the hard-negative ``margin``, the term weights ``w_*`` and the
    ``backend``."""

    stride: int = 4
    sigma: float = 1.5
    center: str = "cell"
    alpha: float = 1.5
    beta: float = 4.0
    pos_threshold: float = 0.9
    reg_threshold: float = 0.7
    margin: float = 0.25
    w_heatmap: float = 1.0
    w_offset: float = 1.0
    w_angle: float = 0.2
    w_hard_negative: float = 1.0
    from_logits: bool = False
    eps: float = 1e-7
    label_smoothing: float = 0.0

    def validate(self) -> None:
        check_choice("center", self.center, CENTERS)
        check_bool("from_logits", self.from_logits)
        self._set("stride", check_positive_int("stride", self.stride))
        self._set("sigma", check_sigma("sigma", self.sigma))
        for name in ("alpha", "beta"):
            self._set(name, check_exponent(name, getattr(self, name)))
        self._set("eps", check_number("eps", self.eps, nonneg=True))
        self._set("label_smoothing", check_label_smoothing("label_smoothing", self.label_smoothing))
        for name in ("pos_threshold", "reg_threshold", "margin", *WEIGHTS):
            self._set(name, check_number(name, getattr(self, name)))


WEIGHTS = ("w_heatmap", "w_offset", "w_angle", "w_hard_negative")


class GapInputs(NamedTuple):
    """The tensors of one call (shapes in the module docstring)."""

    heatmap_gap: torch.Tensor
    heatmap_piece: torch.Tensor
    offset: torch.Tensor
    angle: torch.Tensor
    gap_center: torch.Tensor
    piece_center: torch.Tensor
    gap_angle: torch.Tensor
    confusers: torch.Tensor | None = None
    confuser_mask: torch.Tensor | None = None
    padding_mask: torch.Tensor | None = None
    valid_box: torch.Tensor | None = None


def check_inputs(inputs: GapInputs, stride: int) -> None:
    """Spec 3.5: shapes, dtypes and devices, from metadata only (no device sync)."""
    heatmap_gap, heatmap_piece, offset, angle, gap_center, piece_center, gap_angle = inputs[:7]
    confusers, confuser_mask, padding_mask, valid_box = inputs[7:]
    for name, x in (
        ("heatmap_gap", heatmap_gap),
        ("heatmap_piece", heatmap_piece),
        ("offset", offset),
        ("angle", angle),
    ):
        check_tensor(name, x)
        check_floating(name, x)
    check_shape("heatmap_gap", heatmap_gap, [None, 1, None, None], "[B, 1, Hf, Wf]")
    b, _, hf, wf = heatmap_gap.shape
    if hf < 2 or wf < 2:
        raise ValueError(f"heatmap_gap: expected Hf, Wf >= 2, got [{b}, 1, {hf}, {wf}]")
    check_shape("heatmap_piece", heatmap_piece, [b, 1, hf, wf], f"[{b}, 1, {hf}, {wf}]")
    check_shape("offset", offset, [b, 4, hf, wf], f"[{b}, 4, {hf}, {wf}]")
    check_shape("angle", angle, [b, 2, hf, wf], f"[{b}, 2, {hf}, {wf}]")
    for name, x, shape, pretty in (
        ("gap_center", gap_center, [b, 2], f"[{b}, 2]"),
        ("piece_center", piece_center, [b, 2], f"[{b}, 2]"),
        ("gap_angle", gap_angle, [b], f"[{b}]"),
    ):
        check_tensor(name, x)
        check_real(name, x)
        check_shape(name, x, shape, pretty)
    if confusers is not None:
        check_tensor("confusers", confusers)
        check_real("confusers", confusers)
        check_shape("confusers", confusers, [b, None, 2], f"[{b}, K, 2]")
    if confuser_mask is not None:
        if confusers is None:
            raise ValueError("confuser_mask: given without confusers")
        check_tensor("confuser_mask", confuser_mask)
        check_mask_dtype("confuser_mask", confuser_mask)
        k = confusers.shape[1]
        check_shape("confuser_mask", confuser_mask, [b, k], f"[{b}, {k}]")
    check_padding(padding_mask, valid_box, b, (hf, wf), stride)
    check_same_device(inputs._asdict())


def torch_value_and_grad(
    opts: GapLossOptions,
    need: tuple[bool, ...],
    per_image: bool = False,
    sync: Callable[[torch.Tensor], torch.Tensor] | None = None,
):
    """The torch backend's fused forward: (total, components [5] (followed by the B per-image
    totals with ``per_image``), (grads of the 11 inputs)). ``sync`` (data parallel) sums the
    denominators (sum W, sum m_gap, sum m_piece, valid confusers) over the ranks.

    A cell of W = 0 (focal) or m = 0 (offsets, angle) is not evaluated (spec 3.3.1-3.3.3): the
    terms read a harmless value instead of its prediction and its gradients are selected to 0.

    Dense work is limited to what every cell needs: the labels, W and the negative focal branch.
    Positive focal cells, offsets and the angle only matter where Y >= pos_threshold or
    Y > reg_threshold, a few cells around each centre, so they are evaluated on a small window per
    object (``object_windows``) and scattered into the gradients.
    """

    def value_and_grad(hg, hp, off, ang, gc, pc, ga, conf, cmask, pmask, vbox):
        cdt = compute_dtype(torch.promote_types(torch.promote_types(hg.dtype, hp.dtype), off.dtype))
        cdt = compute_dtype(torch.promote_types(cdt, ang.dtype))
        b, _, hf, wf = hg.shape
        n = hf * wf
        stride, eps, alpha = opts.stride, opts.eps, opts.alpha
        from_logits = opts.from_logits
        # Coordinates keep float64 (labels.grid_coords): their cells and offsets are exact.
        ldt = torch.float64 if torch.float64 in (gc.dtype, pc.dtype) else cdt
        centers = torch.stack([gc.to(ldt), pc.to(ldt)], dim=1)  # [B, 2 (gap, piece), 2]
        gy, gx = gaussian_factors(centers, (hf, wf), opts.sigma, stride, opts.center, cdt)
        w = weight_from_padding(pmask, vbox, (hf, wf), stride, cdt)  # [B,1,Hf,Wf] or None
        sum_w = w.sum() if w is not None else torch.full((), b * n, dtype=cdt, device=hg.device)

        # Dense: the negative focal branch on both heatmaps (channel 0 gap, channel 1 piece).
        x = torch.cat([hg, hp], dim=1).to(cdt)
        # A cell of W = 0 is not evaluated (spec 3.3.1): the focal term reads 0.5 there, not the
        # prediction (the hard negatives below read x itself), and its gradient is selected to 0.
        xf = torch.where(w != 0, x, 0.5) if w is not None else x
        need_heat = need[0] or need[1]
        y = gy[..., :, None] * gx[..., None, :]  # [B, 2, Hf, Wf]
        common = dict(alpha=alpha, from_logits=from_logits, eps=eps, need_grad=need_heat)
        e = opts.label_smoothing  # the focal target Y (1 - 2e) + e; positives stay on Y
        f, df = focal_neg_terms(xf, y * (1 - 2 * e) + e if e else y, beta=opts.beta, **common)
        f, df = f.view(b, 2, n), None if df is None else df.view(b, 2, n)

        # Windows: a few cells around each centre, the same label values as the dense y.
        radius = window_radius(opts.sigma, min(opts.pos_threshold, opts.reg_threshold), (hf, wf))
        idx = object_windows(centers, (hf, wf), radius, stride, cdt)  # [B, 2, k]
        k = idx.shape[-1]
        yw = torch.gather(y.view(b, 2, n), 2, idx)
        ww = torch.gather(w.view(b, 1, n).expand(b, 2, n), 2, idx) if w is not None else None
        pos = yw >= opts.pos_threshold
        xw = torch.gather(xf.reshape(b, 2, n), 2, idx)
        f_pos, d_pos = focal_pos_terms(xw, **common)
        f.scatter_(2, idx, torch.where(pos, f_pos, torch.gather(f, 2, idx)))
        if df is not None:
            df.scatter_(2, idx, torch.where(pos, d_pos, torch.gather(df, 2, idx)))
        # Offsets and angle where Y > reg_threshold, weighted by W: window cells only.
        m = (yw > opts.reg_threshold).to(cdt)
        if ww is not None:
            m = m * ww
        m_sum = m.sum(dim=(0, 2))  # [2]
        if conf is None:
            conf = gc.new_zeros(b, 0, 2)
        valid = negative_validity(conf, cmask, w, (hf, wf), stride, cdt)
        count = None
        if sync is not None:  # data parallel: every rank's denominators, in one all-reduce
            raw = sync(torch.stack([sum_w, m_sum[0], m_sum[1], valid.to(cdt).sum()]))
            sum_w, m_sum, count = raw[0], raw[1:3], raw[3]
        heat_scale = 1 / (sum_w + eps)  # B = 0 and eps = 0: 0 / 0 = NaN, as the other sums
        fw = f * w.view(b, 1, n) if w is not None else f
        l_heat = fw.sum(dim=(0, 2)) * heat_scale  # [2]
        reg_scale = 1 / (m_sum + eps)  # [2]
        # A cell of m = 0 is not evaluated (spec 3.3.2-3.3.3): its offsets read the target (d = 0)
        # and its angle (0, 1) instead of the prediction; its gradients are selected to 0. A
        # non-finite target (a non-finite centre or angle, spec 8) still gives NaN times m = 0.
        live = m != 0  # [B, 2, k]
        t = offset_target(centers, stride, cdt)[..., None]  # [B, 2, 2 (du, dv), 1]
        idx_off = idx[:, :, None, :].expand(b, 2, 2, k)
        offw = torch.gather(off.reshape(b, 2, 2, n).to(cdt), 3, idx_off)
        offw = torch.where(live[:, :, None], offw, t)
        s, ds = smooth_l1_terms(offw - t, 1.0, need[2])
        l_off = ((s.sum(2) * m).sum(dim=(0, 2)) * reg_scale).sum()
        tc = ga.to(cdt).view(b, 1, 1)
        idx_ang = idx[:, 0:1].expand(b, 2, k)
        angw = torch.gather(ang.reshape(b, 2, n).to(cdt), 2, idx_ang)
        unit = torch.arange(2, dtype=cdt, device=angw.device).view(1, 2, 1)  # (0, 1)
        angw = torch.where(live[:, 0:1], angw, unit)
        one_minus_c, dcos = cosine_terms(angw, torch.sin(tc), torch.cos(tc), need[3])
        m_gap = m[:, 0:1]
        l_ang = (one_minus_c * m_gap).sum() * reg_scale[0]

        # Hard negatives on bilinear samples of the gap probabilities.
        probs = torch.sigmoid(x[:, 0]) if from_logits else x[:, 0]
        hard = hard_negative_terms(probs, gc, conf, valid, opts.margin, stride, need[0], count)
        l_hard, g_hard, hard_per_image = hard

        wh, wo, wa, wn = (getattr(opts, k) for k in WEIGHTS)
        total = wh * l_heat.sum() + wo * l_off + wa * l_ang + wn * l_hard
        comps = torch.stack([l_heat[0], l_heat[1], l_off, l_ang, l_hard]).detach()
        if per_image:
            # Every term normalised within its image: the loss of each image on its own.
            sw = w.view(b, n).sum(1) if w is not None else fw.new_full((b,), n)
            heat_b = fw.sum(2) / (sw[:, None] + eps)  # [B, 2]
            msum = m.sum(2) + eps  # [B, 2]
            off_b = ((s.sum(2) * m).sum(2) / msum).sum(1)
            ang_b = (one_minus_c * m_gap).sum(dim=(1, 2)) / msum[:, 0]
            per = wh * heat_b.sum(1) + wo * off_b + wa * ang_b + wn * hard_per_image
            comps = torch.cat([comps, per.detach()])

        g_hg = g_hp = g_off = g_ang = None
        if df is not None:
            g_heat = df * (wh * heat_scale)
            if w is not None:
                wv = w.view(b, 1, n)
                g_heat = torch.where(wv != 0, g_heat * wv, 0.0)
            g_heat = g_heat.view(b, 2, hf, wf)
            if need[0]:
                g_hg = g_heat[:, 0:1]
                if g_hard is not None:
                    g_n = g_hard.view(b, 1, hf, wf) * wn
                    if from_logits:  # only where a sample reads the cell: no 0 * sigmoid'(NaN)
                        g_n = torch.where(g_n != 0, g_n * (probs * (1 - probs))[:, None], 0.0)
                    g_hg = g_hg + g_n
            g_hp = g_heat[:, 1:2] if need[1] else None
        if ds is not None:
            g_off = x.new_zeros(b, 2, 2, n)
            g_o = ds * (m * (wo * reg_scale).view(1, 2, 1))[:, :, None]
            g_off.scatter_(3, idx_off, torch.where(live[:, :, None], g_o, 0.0))
            g_off = g_off.view(b, 4, hf, wf)
        if dcos is not None:
            g_ang = x.new_zeros(b, 2, n)
            g_a = dcos * (m_gap * (wa * reg_scale[0]))
            g_ang.scatter_(2, idx_ang, torch.where(live[:, 0:1], g_a, 0.0))
            g_ang = g_ang.view(b, 2, hf, wf)
        return total, comps, (g_hg, g_hp, g_off, g_ang) + (None,) * 7

    return value_and_grad


def gap_detection_loss(
    heatmap_gap: torch.Tensor,
    heatmap_piece: torch.Tensor,
    offset: torch.Tensor,
    angle: torch.Tensor,
    gap_center: torch.Tensor,
    piece_center: torch.Tensor,
    gap_angle: torch.Tensor,
    confusers: torch.Tensor | None = None,
    confuser_mask: torch.Tensor | None = None,
    padding_mask: torch.Tensor | None = None,
    valid_box: torch.Tensor | None = None,
    return_components: bool = False,
    *,
    return_per_image: bool = False,
    options: GapLossOptions | None = None,
    **overrides: Any,
) -> torch.Tensor | tuple:
    """Functional form of :class:`GapDetectionLoss`: the same inputs; the options as keywords
    (the fields of :class:`GapLossOptions`: ``stride=4, sigma=1.5, center="cell", alpha=1.5,
    beta=4.0, pos_threshold=0.9, reg_threshold=0.7, margin=0.25, w_heatmap=1.0, w_offset=1.0,
    w_angle=0.2, w_hard_negative=1.0, from_logits=False, eps=1e-7, label_smoothing=0.0,
    backend="auto", reduce_across_ranks=False, process_group=None``) or as a built ``options``
    object. ``return_per_image``: also return each image's loss (see :class:`GapDetectionLoss`);
    per-image losses stay local to the rank under ``reduce_across_ranks``."""
    check_bool("return_components", return_components)
    check_bool("return_per_image", return_per_image)
    opts = GapLossOptions.build(options, overrides)
    inputs = GapInputs(
        heatmap_gap,
        heatmap_piece,
        offset,
        angle,
        gap_center,
        piece_center,
        gap_angle,
        confusers,
        confuser_mask,
        padding_mask,
        valid_box,
    )
    check_inputs(inputs, stride=opts.stride)
    group = active_group(opts)
    sync = denominator_sync(group)
    if resolve_backend(opts.backend, heatmap_gap.device) == "triton":
        from .triton_gap import gap_detection_loss_triton

        total, comps = gap_detection_loss_triton(opts, inputs, return_per_image, sync)
    else:
        need = needs_grad(*inputs[:4])
        fn = torch_value_and_grad(opts, need, return_per_image, sync)
        total, comps = PrecomputedGradient.apply("gap_detection_loss", fn, *inputs)
    if group is not None:  # the global total and components; each image's own loss stays local
        total, head = global_loss(total, group, comps[:5])
        comps = torch.cat([head, comps[5:]])
    out: tuple = (total,)
    if return_components:
        out += (dict(zip(COMPONENTS, comps[:5].unbind(0))),)
    if return_per_image:
        out += (comps[5:],)
    return out if len(out) > 1 else total


class GapDetectionLoss(LossModule):
    """Drop-in criterion for a slider-captcha gap detector (docs/spec.md 3).

    ``GapDetectionLoss(**options)`` with the fields of :class:`GapLossOptions` (``stride=4,
    sigma=1.5, center="cell", alpha=1.5, beta=4.0, pos_threshold=0.9, reg_threshold=0.7,
    margin=0.25, w_heatmap=1.0, w_offset=1.0, w_angle=0.2, w_hard_negative=1.0, from_logits=False,
    eps=1e-7, label_smoothing=0.0, backend="auto", reduce_across_ranks=False, process_group=None``;
    the last two: docs/spec.md 9), called as ``criterion(heatmap_gap, heatmap_piece, offset, angle,
    gap_center, piece_center, gap_angle, confusers=None, confuser_mask=None, padding_mask=None,
    valid_box=None, return_components=False, return_per_image=False)``. Returns the 0-dim total
    (float32; float64 for float64 inputs); with ``return_components``, then a dict of detached
    0-dim terms ``heatmap_gap``, ``heatmap_piece``, ``offset``, ``angle``, ``hard_negative``; with
    ``return_per_image``, then a detached [B] tensor: each image's total with every term
    normalised within that image (its own sum W, regression masks and valid confusers: the loss
    of that image alone), for ranking images in hard-sample mining. Gradients flow into the four
    predictions.
    """

    Options = GapLossOptions

    def forward(
        self,
        heatmap_gap: torch.Tensor,
        heatmap_piece: torch.Tensor,
        offset: torch.Tensor,
        angle: torch.Tensor,
        gap_center: torch.Tensor,
        piece_center: torch.Tensor,
        gap_angle: torch.Tensor,
        confusers: torch.Tensor | None = None,
        confuser_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        valid_box: torch.Tensor | None = None,
        return_components: bool = False,
        return_per_image: bool = False,
    ) -> torch.Tensor | tuple:
        return gap_detection_loss(
            heatmap_gap,
            heatmap_piece,
            offset,
            angle,
            gap_center,
            piece_center,
            gap_angle,
            confusers,
            confuser_mask,
            padding_mask,
            valid_box,
            return_components,
            return_per_image=return_per_image,
            options=self.options,
        )
