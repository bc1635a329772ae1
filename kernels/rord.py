"""RoRD losses (docs/spec.md 11): the warped detection target and the descriptor triplets, fused.

Geometry. G [B,3,3] maps an original grid point (u, v) to a rotated one: (X, Y, W) = G (u, v, 1),
q = (X / W, Y / W), defined where W > 0. S(F, q) is the bilinear sample with corners at integer
grid points (``F.grid_sample(align_corners=False, padding_mode="zeros")`` in these coordinates);
q is *inside* iff W > 0, 0 <= u' <= Wf-1, 0 <= v' <= Hf-1. A point beyond one cell of the map (or
not finite, or W <= 0) samples 0 and has no corner.

Detection (``_det_kernel``), per original cell c = (i, j) and T_c = S(P_r, G c), counted cells m_c
(all, or the inside ones with ``IGNORE``), P = sigmoid(x) with ``FROM_LOGITS``:

    bce_c = -(T log P_o + (1-T) log(1-P_o)), logs clamped at -100 (exact logsigmoids from logits)
    sl1_c = smoothL1(P_o - T);   L = (w_bce sum m bce + w_sl1 sum m sl1) / max(n, 1), n = sum m
    dL/dP_o = m (w_bce (P_o - T) / max(P_o (1-P_o), 1e-12) + w_sl1 clamp(P_o - T, -1, 1)) / n
              (from logits: dL/dx_o = m (w_bce (P_o - T) + w_sl1 clamp(.) P_o (1-P_o)) / n)
    dL/dT_c = m (w_bce (clamp(log(1-P_o)) - clamp(log P_o)) - w_sl1 clamp(P_o - T, -1, 1)) / n
              (from logits: w_bce (-x_o) - ...)
    dL/dP_r[r] = sum_c dL/dT_c tent(u'_c - j_r) tent(v'_c - i_r)

PASS 0 writes per-program partial sums (sum m bce, sum m sl1, n); PASS 1 the gradient into P_o;
PASS 2 the gradient into P_r, gathered per rotated cell r (owner computes; no atomics): the
original cells c whose sample has r as a corner lie in the preimage under G of the square
[j_r - 1, j_r + 1] x [i_r - 1, i_r + 1], which ``Ginv`` (G's adjugate, signed so that its third
output is positive where W is) maps to a quadrilateral when all four corners have a positive
third coordinate; its bounding box, widened by half a cell, is scanned and each candidate c is
tested with the forward's arithmetic. Otherwise (the square reaches W <= 0, or G is singular or
ill-conditioned: Ginv = 0) the whole map is scanned.

Descriptor. ``_sample_kernel`` samples C channels at a point set (anchors on D_o; positives G p_k
and candidates on D_r) into [B,C,M] buffers and records each point (u, v, inside, reach).
``_mine_kernel`` streams over the candidates per block of anchors: squared plain L2 distances
over the channels, eligible candidates only (inside with ``IGNORE``; no NaN coordinate; with
``USE_RADIUS``, the Chebyshev distance in pixels ||c_j - q_k||_inf >= safe_radius of the pixel
positions the glue computes in float64 (``fused_losses.rord.radius_points``: the given pixels as
they are, q_k = H(anchor pixels) where H acts, NaN when q_k has w <= 0 or is not finite, which
makes every candidate eligible)), a running argmin (ties: smallest j); then the triplet
d(x, y) = ||x - y + 1e-6|| (or its square), h = d(a,pos) - d(a,neg) + margin, writes j*, the
gradient coefficients (active / d, or 2 active) and partial sums (sum relu(h), valid count).
Backward: ``_keys_kernel`` gives every (point, corner) gradient contribution a key (the map cell it
lands on), one stable device sort groups equal keys, and ``_scatter_kernel`` sums each group in
sorted order into its cell (deterministic, no atomics): anchors into D_o, positives (and negatives
without ``detach_negative``) into D_r. Never built: the [B,N,K] distances, the [B,N,K,C]
differences, a warped map or a sampling grid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, f64_bits, launch, next_pow2
from .primitives import div_exact, log1p, logsigmoid, option, sigmoid, tent
from .reduce import DEN_POS, NUM_PARTIALS, partial_sums, ratio_finalize

DET_BLOCK = 128  # cells per program (detection)
POINT_BLOCK = 16  # points per program (sampling)
MINE_BLOCK_N = 16  # anchors per program (mining)
MINE_BLOCK_K = 32  # candidates per step (mining; 64 needs > 128 registers on triton 3.6)


@triton.jit
def warp_point(g_ptr, b, u, v, Hf, Wf):
    """(u', v', ok, reach, inside) of grid points (u, v) under G[b]: ok = W > 0, reach = within
    one cell of the map (finite), inside as the module docstring."""
    base = g_ptr + b.to(tl.int64) * 9
    cdt: tl.constexpr = g_ptr.dtype.element_ty
    x = tl.load(base + 0) * u + tl.load(base + 1) * v + tl.load(base + 2)
    y = tl.load(base + 3) * u + tl.load(base + 4) * v + tl.load(base + 5)
    w = tl.load(base + 6) * u + tl.load(base + 7) * v + tl.load(base + 8)
    ok = w > 0
    w = tl.where(ok, w, 1.0).to(cdt)
    uq = div_exact(x.to(cdt), w)
    vq = div_exact(y.to(cdt), w)
    reach = ok & (uq > -1.0) & (uq < Wf) & (vq > -1.0) & (vq < Hf)
    ins = ok & (uq >= 0.0) & (uq <= Wf - 1) & (vq >= 0.0) & (vq <= Hf - 1)
    return uq, vq, ok, reach, ins


@triton.jit
def sample_map(f_ptr, b, u, v, s_b, s_h, s_w, Hf, Wf, on, SIGMOID: tl.constexpr, cdt: tl.constexpr):
    """S(F[b], (u, v)): the sum over the 4 corners on the map with a positive bilinear weight of
    weight * F[corner] (sigmoid(F) with SIGMOID). A corner of weight 0 (the point on a grid line)
    adds exactly 0, also when its cell is not finite (0 * inf would be NaN)."""
    x0 = tl.floor(u)
    y0 = tl.floor(v)
    acc = tl.zeros(u.shape, cdt)
    base = f_ptr + b.to(tl.int64) * s_b
    for dy in tl.static_range(2):
        for dx in tl.static_range(2):
            xc = x0 + dx
            yc = y0 + dy
            wgt = tent(u - xc) * tent(v - yc)
            hit = on & (xc >= 0) & (xc <= Wf - 1) & (yc >= 0) & (yc <= Hf - 1) & (wgt > 0)
            xi = tl.where(hit, xc, 0.0).to(tl.int64)
            yi = tl.where(hit, yc, 0.0).to(tl.int64)
            val = tl.load(base + yi * s_h + xi * s_w, mask=hit, other=0).to(cdt)
            if SIGMOID:
                val = sigmoid(val)
            acc += tl.where(hit, wgt * val, 0.0)
    return acc


@triton.jit
def clamp_nan(x, lo, hi):
    """min(max(x, lo), hi), NaN kept (as torch.clamp; ``tl.maximum`` would drop it)."""
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit
def det_terms(
    po_ptr, pr_ptr, g_ptr, b, ci, cj, on, Hf, Wf, o_b, o_h, o_w, r_b, r_h, r_w,
    FROM_LOGITS: tl.constexpr, IGNORE: tl.constexpr, cdt: tl.constexpr,
):  # fmt: skip
    """Per original cell (ci, cj): (m, bce, sl1, dbce/dP_o (dx_o from logits), dbce/dT,
    clamp(P_o - T, -1, 1), dP_o/dx_o (from logits; 1 otherwise))."""
    u = cj.to(cdt)
    v = ci.to(cdt)
    uq, vq, _ok, reach, ins = warp_point(g_ptr, b, u, v, Hf, Wf)
    t = sample_map(pr_ptr, b, uq, vq, r_b, r_h, r_w, Hf, Wf, on & reach, FROM_LOGITS, cdt)
    off = b.to(tl.int64) * o_b + ci.to(tl.int64) * o_h + cj.to(tl.int64) * o_w
    x = tl.load(po_ptr + off, mask=on, other=0.5).to(cdt)
    if FROM_LOGITS:
        p = sigmoid(x)
        ls_p = logsigmoid(x)
        ls_q = logsigmoid(-x)
        bce = -(t * ls_p + (1.0 - t) * ls_q)
        d_bce = p - t
        d_bce_t = -x
    else:
        # clamps that keep a NaN (P outside [0, 1] or NaN), as torch's
        p = x
        log_p = clamp_nan(tl.log(p), -100.0, float("inf"))
        log_q = clamp_nan(log1p(-p), -100.0, float("inf"))
        bce = -(t * log_p + (1.0 - t) * log_q)
        d_bce = (p - t) / clamp_nan((1.0 - p) * p, 1e-12, float("inf"))
        d_bce_t = log_q - log_p
    d = p - t
    ad = tl.abs(d)
    sl1 = tl.where(ad < 1.0, 0.5 * d * d, ad - 0.5)
    if IGNORE:
        m = on & ins
    else:
        m = on
    if FROM_LOGITS:
        dp = p * sigmoid(-x)  # dP/dx without the cancellation of p (1 - p)
    else:
        dp = tl.full(p.shape, 1.0, cdt)
    return m, bce, sl1, d_bce, d_bce_t, clamp_nan(d, -1.0, 1.0), dp


@triton.jit(do_not_specialize=["w_bce", "w_sl1"])
def _det_kernel(
    po_ptr, o_b, o_h, o_w,
    pr_ptr, r_b, r_h, r_w,
    g_ptr, ginv_ptr, out_ptr, scale_ptr,
    Hf, Wf, w_bce, w_sl1,
    FROM_LOGITS: tl.constexpr, IGNORE: tl.constexpr, PASS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """PASS 0: partials [P, 4] (sum m bce, sum m sl1, n, 0); PASS 1: dL/dP_o into out [B,Hf,Wf];
    PASS 2: dL/dP_r into out (module docstring). Gradients times scale = upstream / n."""
    cdt: tl.constexpr = g_ptr.dtype.element_ty
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    hw = Hf * Wf
    on = offs < hw
    ci = offs // Wf
    cj = offs % Wf
    wb = option(w_bce, cdt)
    ws = option(w_sl1, cdt)
    if PASS == 0:
        m, bce, sl1, _d1, _d2, _d3, _p = det_terms(
            po_ptr, pr_ptr, g_ptr, b, ci, cj, on, Hf, Wf, o_b, o_h, o_w, r_b, r_h, r_w,
            FROM_LOGITS, IGNORE, cdt,
        )  # fmt: skip
        row = (b * tl.num_programs(0) + tl.program_id(0)).to(tl.int64) * 4
        tl.store(out_ptr + row + 0, tl.sum(tl.where(m, bce, 0.0), axis=0))
        tl.store(out_ptr + row + 1, tl.sum(tl.where(m, sl1, 0.0), axis=0))
        tl.store(out_ptr + row + 2, tl.sum(m.to(cdt), axis=0))
        tl.store(out_ptr + row + 3, tl.zeros([], cdt))
    elif PASS == 1:
        scale = tl.load(scale_ptr).to(cdt)
        m, _b, _s, d_bce, _dt, dcl, dp = det_terms(
            po_ptr, pr_ptr, g_ptr, b, ci, cj, on, Hf, Wf, o_b, o_h, o_w, r_b, r_h, r_w,
            FROM_LOGITS, IGNORE, cdt,
        )  # fmt: skip
        if FROM_LOGITS:
            dcl = dcl * dp
        g = tl.where(m, wb * d_bce + ws * dcl, 0.0) * scale
        tl.store(out_ptr + b.to(tl.int64) * hw + offs, g.to(out_ptr.dtype.element_ty), mask=on)
    else:
        scale = tl.load(scale_ptr).to(cdt)
        # the preimage of [cj - 1, cj + 1] x [ci - 1, ci + 1] under G: bounding box in cells
        base = ginv_ptr + b.to(tl.int64) * 9
        lo_u = tl.full([BLOCK], float("inf"), cdt)
        hi_u = tl.full([BLOCK], float("-inf"), cdt)
        lo_v = tl.full([BLOCK], float("inf"), cdt)
        hi_v = tl.full([BLOCK], float("-inf"), cdt)
        bounded = on
        for k in tl.static_range(4):
            qu = cj.to(cdt) + (2.0 * (k % 2) - 1.0)
            qv = ci.to(cdt) + (2.0 * (k // 2) - 1.0)
            pa = tl.load(base + 0) * qu + tl.load(base + 1) * qv + tl.load(base + 2)
            pb = tl.load(base + 3) * qu + tl.load(base + 4) * qv + tl.load(base + 5)
            pc = tl.load(base + 6) * qu + tl.load(base + 7) * qv + tl.load(base + 8)
            bounded = bounded & (pc > 0)
            pc = tl.where(pc > 0, pc, 1.0)
            lo_u = tl.minimum(lo_u, pa / pc)
            hi_u = tl.maximum(hi_u, pa / pc)
            lo_v = tl.minimum(lo_v, pb / pc)
            hi_v = tl.maximum(hi_v, pb / pc)
        lo_u = tl.where(bounded, tl.maximum(lo_u - 0.5, -1.0), -1.0)
        hi_u = tl.where(bounded, tl.minimum(hi_u + 0.5, Wf + 0.0), Wf + 0.0)
        lo_v = tl.where(bounded, tl.maximum(lo_v - 0.5, -1.0), -1.0)
        hi_v = tl.where(bounded, tl.minimum(hi_v + 0.5, Hf + 0.0), Hf + 0.0)
        j0 = tl.maximum(tl.ceil(lo_u), 0.0).to(tl.int32)
        j1 = tl.minimum(tl.floor(hi_u), Wf - 1.0).to(tl.int32)
        i0 = tl.maximum(tl.ceil(lo_v), 0.0).to(tl.int32)
        i1 = tl.minimum(tl.floor(hi_v), Hf - 1.0).to(tl.int32)
        nx = tl.where(on & (j1 >= j0) & (i1 >= i0), j1 - j0 + 1, 0)
        ny = tl.where(nx > 0, i1 - i0 + 1, 0)
        count = nx * ny
        nx = tl.maximum(nx, 1)
        acc = tl.zeros([BLOCK], cdt)
        for t in range(0, tl.max(count, axis=0)):
            act = t < count
            oi = i0 + t // nx
            oj = j0 + t % nx
            uq, vq, _ok, reach, ins = warp_point(g_ptr, b, oj.to(cdt), oi.to(cdt), Hf, Wf)
            wgt = tent(uq - cj.to(cdt)) * tent(vq - ci.to(cdt))
            hit = act & reach & (wgt > 0)
            if IGNORE:
                hit = hit & ins
            m, _b, _s, _d, d_bce_t, dcl, _p = det_terms(
                po_ptr, pr_ptr, g_ptr, b, oi, oj, hit, Hf, Wf, o_b, o_h, o_w, r_b, r_h, r_w,
                FROM_LOGITS, IGNORE, cdt,
            )  # fmt: skip
            acc += tl.where(m, wgt * (wb * d_bce_t - ws * dcl), 0.0)
        g = acc * scale
        if FROM_LOGITS:
            xr_off = b.to(tl.int64) * r_b + ci.to(tl.int64) * r_h + cj.to(tl.int64) * r_w
            xr = tl.load(pr_ptr + xr_off, mask=on, other=0).to(cdt)
            g = g * sigmoid(xr) * sigmoid(-xr)
        tl.store(out_ptr + b.to(tl.int64) * hw + offs, g.to(out_ptr.dtype.element_ty), mask=on)


@triton.jit(do_not_specialize=["w_bce", "w_sl1"])
def _det_finalize_kernel(part_ptr, P, den_ptr, loss_ptr, aux_ptr, w_bce, w_sl1,
                         HAS_DEN: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """loss = (w_bce sum bce + w_sl1 sum sl1) / max(n, 1); aux = (det_bce, det_sl1, loss, 1/n)
    with the partials reduced in a fixed order (n: ``den`` when given, the ranks' sum)."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    sums, cols = partial_sums(part_ptr, P, BLOCK_P)
    s_bce = tl.sum(tl.where(cols == 0, sums, 0.0), axis=0)
    s_sl1 = tl.sum(tl.where(cols == 1, sums, 0.0), axis=0)
    if HAS_DEN:
        n = tl.load(den_ptr).to(cdt)
    else:
        n = tl.sum(tl.where(cols == 2, sums, 0.0), axis=0)
    n = tl.maximum(n, 1.0)
    det_bce = s_bce / n
    det_sl1 = s_sl1 / n
    loss = option(w_bce, cdt) * det_bce + option(w_sl1, cdt) * det_sl1
    tl.store(loss_ptr, loss)
    tl.store(aux_ptr + 0, det_bce)
    tl.store(aux_ptr + 1, det_sl1)
    tl.store(aux_ptr + 2, loss)
    tl.store(aux_ptr + 3, 1.0 / n)


def _det_launch(PASS, out, det_o, det_r, G, ginv, scale, *, w_bce, w_smooth_l1, from_logits,
                outside, **_unused):  # fmt: skip
    b, _, hf, wf = det_o.shape
    grid = (triton.cdiv(hf * wf, DET_BLOCK), b)
    launch(
        _det_kernel, grid,
        det_o, det_o.stride(0), det_o.stride(2), det_o.stride(3),
        det_r, det_r.stride(0), det_r.stride(2), det_r.stride(3),
        G, ginv, out, scale, hf, wf, f64_bits(w_bce), f64_bits(w_smooth_l1),
        FROM_LOGITS=from_logits, IGNORE=outside == "ignore", PASS=PASS, BLOCK=DET_BLOCK,
        num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip


def detection_forward(det_o, det_r, G, sync=None, **opts):
    """(loss, aux [4] = (det_bce, det_smooth_l1, det, 1/n)) in 2 launches (G [B,9], compute
    dtype)."""
    cdt = compute_dtype(det_o, det_r)
    b, _, hf, wf = det_o.shape
    partials = torch.zeros(max(triton.cdiv(hf * wf, DET_BLOCK) * b, 1), 4, dtype=cdt,
                           device=det_o.device)  # fmt: skip
    if b > 0:
        _det_launch(0, partials, det_o, det_r, G, G, partials, **opts)
    den = partials
    if sync is not None:
        den = sync(partials[:, 2].sum().reshape(1))
    loss = torch.empty((), dtype=cdt, device=det_o.device)
    aux = torch.empty(4, dtype=cdt, device=det_o.device)
    launch(
        _det_finalize_kernel, (1,), partials, partials.shape[0], den, loss, aux,
        f64_bits(opts["w_bce"]), f64_bits(opts["w_smooth_l1"]),
        HAS_DEN=sync is not None, BLOCK_P=128, num_warps=4,
    )  # fmt: skip
    return loss, aux


def signed_adjugate(G: torch.Tensor) -> torch.Tensor:
    """[B,9] in G's dtype: adj(G) sign(det G), from the cofactors in float64 (elementwise: no
    solver, no sync). It maps rotated grid points to original ones with a positive third
    coordinate where G's W > 0; 0 for a G whose determinant is below 1e-10 of its scale (the
    kernel then scans the whole map)."""
    g = G.reshape(-1, 3, 3).to(torch.float64)

    def e(i, j):
        return g[:, i, j]

    def cof(i, j):  # cofactor C_ij
        r = [k for k in range(3) if k != i]
        c = [k for k in range(3) if k != j]
        minor = e(r[0], c[0]) * e(r[1], c[1]) - e(r[0], c[1]) * e(r[1], c[0])
        return minor if (i + j) % 2 == 0 else -minor

    adj = torch.stack([torch.stack([cof(j, i) for j in range(3)], -1) for i in range(3)], -2)
    det = e(0, 0) * adj[:, 0, 0] + e(0, 1) * adj[:, 1, 0] + e(0, 2) * adj[:, 2, 0]
    scale = g.abs().amax(dim=(1, 2)) ** 3
    good = (det.abs() > 1e-10 * scale) & torch.isfinite(adj).all(dim=(1, 2))
    out = torch.where(good[:, None, None], adj * torch.sign(det)[:, None, None], 0)
    return out.reshape(-1, 9).to(G.dtype).contiguous()


def detection_backward(grad, aux, det_o, det_r, G, *, need_grad, **opts):
    """(dL/d det_o or None, dL/d det_r or None), 1 launch each."""
    scale = (grad.to(aux.dtype) * aux[3]).reshape(1)
    grads = []
    for k, x in enumerate((det_o, det_r)):
        if not need_grad[k]:
            grads.append(None)
            continue
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if x.numel():
            ginv = signed_adjugate(G) if k == 1 else G
            _det_launch(1 + k, out, det_o, det_r, G, ginv, scale, **opts)
        grads.append(out)
    return tuple(grads)


# --------------------------------------------------------------------------------- descriptor


@triton.jit
def point_corner(u, v, reach, K: tl.constexpr, Hf, Wf):
    """(flat cell, weight) of corner K (dy = K // 2, dx = K % 2) of grid points (u, v); the
    weight is 0 for a corner off the map (its cell clamped onto the map). No select on a mask:
    triton 3.6 mis-lays-out one whose mask is also broadcast to 2-D."""
    xc = tl.floor(u) + (K % 2)
    yc = tl.floor(v) + (K // 2)
    on = reach & (xc >= 0.0) & (xc <= Wf - 1) & (yc >= 0.0) & (yc <= Hf - 1)
    xi = tl.minimum(tl.maximum(xc, 0.0), Wf - 1.0).to(tl.int64)
    yi = tl.minimum(tl.maximum(yc, 0.0), Hf - 1.0).to(tl.int64)
    return yi * Wf + xi, tent(u - xc) * tent(v - yc) * on.to(u.dtype)


@triton.jit
def _sample_kernel(
    f_ptr, s_b, s_c, s_h, s_w,
    pts_ptr, pts_b, M, g_ptr, out_ptr, rec_ptr, C, Hf, Wf,
    WARP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out[b, :, m] = S(F[b], point m) (warped by G[b] with WARP); rec[b, m] = (u, v, inside,
    W > 0 and finite)."""
    cdt: tl.constexpr = out_ptr.dtype.element_ty
    b = tl.program_id(1)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    on = m < M
    p = pts_ptr + b.to(tl.int64) * pts_b + m.to(tl.int64) * 2
    u = tl.load(p, mask=on, other=0).to(cdt)
    v = tl.load(p + 1, mask=on, other=0).to(cdt)
    if WARP:
        u, v, ok, reach, ins = warp_point(g_ptr, b, u, v, Hf, Wf)
        far = ok & (tl.abs(u) < float("inf")) & (tl.abs(v) < float("inf"))
    else:
        reach = (u > -1.0) & (u < Wf) & (v > -1.0) & (v < Hf)
        ins = (u >= 0.0) & (u <= Wf - 1) & (v >= 0.0) & (v <= Hf - 1)
        far = reach | ~reach
    reach = reach & on
    rec = rec_ptr + (b.to(tl.int64) * M + m) * 4
    tl.store(rec, u, mask=on)
    tl.store(rec + 1, v, mask=on)
    tl.store(rec + 2, ins.to(cdt), mask=on)
    tl.store(rec + 3, far.to(cdt), mask=on)
    c = tl.arange(0, BLOCK_C)
    fb = f_ptr + b.to(tl.int64) * s_b
    # the 4 corners once, outside the channel loop (triton 3.6 mis-lays-out a 1-D select
    # computed inside it)
    cell0, w0 = point_corner(u, v, reach, 0, Hf, Wf)
    cell1, w1 = point_corner(u, v, reach, 1, Hf, Wf)
    cell2, w2 = point_corner(u, v, reach, 2, Hf, Wf)
    cell3, w3 = point_corner(u, v, reach, 3, Hf, Wf)
    on0 = w0 != 0
    on1 = w1 != 0
    on2 = w2 != 0
    on3 = w3 != 0
    off0 = (cell0 // Wf) * s_h + (cell0 % Wf) * s_w
    off1 = (cell1 // Wf) * s_h + (cell1 % Wf) * s_w
    off2 = (cell2 // Wf) * s_h + (cell2 % Wf) * s_w
    off3 = (cell3 // Wf) * s_h + (cell3 % Wf) * s_w
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + c
        con = c < C - c0
        coff = cc[None, :].to(tl.int64) * s_c
        acc = w0[:, None] * tl.load(fb + off0[:, None] + coff, mask=on0[:, None] & con[None, :],
                                    other=0).to(cdt)  # fmt: skip
        acc += w1[:, None] * tl.load(fb + off1[:, None] + coff, mask=on1[:, None] & con[None, :],
                                     other=0).to(cdt)  # fmt: skip
        acc += w2[:, None] * tl.load(fb + off2[:, None] + coff, mask=on2[:, None] & con[None, :],
                                     other=0).to(cdt)  # fmt: skip
        acc += w3[:, None] * tl.load(fb + off3[:, None] + coff, mask=on3[:, None] & con[None, :],
                                     other=0).to(cdt)  # fmt: skip
        dst = out_ptr + (b.to(tl.int64) * C + cc[None, :]) * M + m[:, None]
        tl.store(dst, acc, mask=on[:, None] & con[None, :])


@triton.jit(do_not_specialize=["margin", "radius"])
def _mine_kernel(
    a_ptr, pos_ptr, cand_ptr, arec_ptr, prec_ptr, crec_ptr, qpx_ptr, cpx_ptr, jstar_ptr, coef_ptr,
    part_ptr, N, K, C, margin, radius,
    IGNORE: tl.constexpr, SQUARED: tl.constexpr, USE_RADIUS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Per block of anchors: j* (streaming argmin of the plain L2 distance over the eligible
    candidates), the triplet term and its gradient coefficients; partials (sum relu(h), 0,
    valid count, 0). With USE_RADIUS, ``qpx`` [B,N,2] and ``cpx`` [B,K,2] are the pixel
    positions of the safe_radius test (qpx NaN: every candidate is eligible)."""
    cdt: tl.constexpr = a_ptr.dtype.element_ty
    BIG: tl.constexpr = 1.7976931348623157e308 if cdt == tl.float64 else 3.4028234663852886e38
    b = tl.program_id(1)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    on = n < N
    bl = b.to(tl.int64)
    prec = prec_ptr + (bl * N + n) * 4
    if USE_RADIUS:
        qx = tl.load(qpx_ptr + (bl * N + n) * 2, mask=on, other=0)
        qy = tl.load(qpx_ptr + (bl * N + n) * 2 + 1, mask=on, other=0)
        q_far = qx == qx  # NaN: w <= 0 or not finite
    counts = on
    if IGNORE:
        arec = arec_ptr + (bl * N + n) * 4
        counts = counts & (tl.load(arec + 2, mask=on, other=0) != 0)
        counts = counts & (tl.load(prec + 2, mask=on, other=0) != 0)
    rad = option(radius, cdt)
    best = tl.full([BLOCK_N], float("inf"), cdt)
    arg = tl.zeros([BLOCK_N], tl.int32)
    kk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        kon = k < K
        crec = crec_ptr + (bl * K + k) * 4
        elig = on[:, None] & kon[None, :]
        if IGNORE:
            elig = elig & (tl.load(crec + 2, mask=kon, other=0) != 0)[None, :]
        cu = tl.load(crec, mask=kon, other=0)
        cv = tl.load(crec + 1, mask=kon, other=0)
        # a candidate with a NaN coordinate is at no distance (NaN >= r is false); tl.maximum
        # below would drop the NaN
        elig = elig & ((cu == cu) & (cv == cv))[None, :]
        if USE_RADIUS:  # Chebyshev distance in pixels (a NaN q_k: every candidate)
            cx = tl.load(cpx_ptr + (bl * K + k) * 2, mask=kon, other=0)
            cy = tl.load(cpx_ptr + (bl * K + k) * 2 + 1, mask=kon, other=0)
            cheb = tl.maximum(tl.abs(cx[None, :] - qx[:, None]), tl.abs(cy[None, :] - qy[:, None]))
            elig = elig & ((cheb >= rad) | ~q_far[:, None])
        d2 = tl.zeros([BLOCK_N, BLOCK_K], cdt)
        for c in range(0, C):
            av = tl.load(a_ptr + (bl * C + c) * N + n, mask=on, other=0)
            cv_ = tl.load(cand_ptr + (bl * C + c) * K + k, mask=kon, other=0)
            diff = av[:, None] - cv_[None, :]
            d2 += diff * diff
        # a NaN distance wins (torch.argmin's NaN) and an overflowed one stays a candidate (the
        # largest finite number), so that a broken or out-of-range input gives a NaN or inf loss
        # instead of "no candidate" and 0
        d2 = tl.where(d2 == float("inf"), tl.full([], BIG, cdt), d2)
        d2 = tl.where(d2 != d2, float("-inf"), d2)
        d2 = tl.where(elig, d2, float("inf"))
        m, j = tl.min(d2, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = m < best
        best = tl.where(better, m, best)
        arg = tl.where(better, j.to(tl.int32) + k0, arg)
    found = best < float("inf")
    valid = counts & found
    eps = tl.full([], 1e-6, cdt)
    dp2 = tl.zeros([BLOCK_N], cdt)
    dn2 = tl.zeros([BLOCK_N], cdt)
    for c in range(0, C):
        av = tl.load(a_ptr + (bl * C + c) * N + n, mask=on, other=0)
        pv = tl.load(pos_ptr + (bl * C + c) * N + n, mask=on, other=0)
        nv = tl.load(cand_ptr + (bl * C + c) * K + arg, mask=valid, other=0)
        dp = av - pv + eps
        dn = av - nv + eps
        dp2 += dp * dp
        dn2 += dn * dn
    if SQUARED:
        h = dp2 - dn2 + option(margin, cdt)
        cp = tl.full([BLOCK_N], 2.0, cdt)
        cn = tl.full([BLOCK_N], 2.0, cdt)
    else:
        dp = tl.sqrt(dp2)
        dn = tl.sqrt(dn2)
        h = dp - dn + option(margin, cdt)
        cp = tl.where(dp > 0, 1.0 / tl.where(dp > 0, dp, 1.0), 0.0)
        cn = tl.where(dn > 0, 1.0 / tl.where(dn > 0, dn, 1.0), 0.0)
    active = valid & (h > 0)
    tl.store(jstar_ptr + bl * N + n, tl.where(valid, arg, -1), mask=on)
    tl.store(coef_ptr + (bl * N + n) * 2, tl.where(active, cp, 0.0), mask=on)
    tl.store(coef_ptr + (bl * N + n) * 2 + 1, tl.where(active, cn, 0.0), mask=on)
    row = (b * tl.num_programs(0) + tl.program_id(0)).to(tl.int64) * 4
    # relu(h) of the valid triplets, a NaN h kept (as torch.relu; no gradient, as autograd's)
    tl.store(part_ptr + row + 0, tl.sum(tl.where(valid & ~(h <= 0.0), h, 0.0), axis=0))
    tl.store(part_ptr + row + 1, tl.zeros([], cdt))
    tl.store(part_ptr + row + 2, tl.sum(valid.to(cdt), axis=0))
    tl.store(part_ptr + row + 3, tl.zeros([], cdt))


@triton.jit
def entry_point(e, arec_ptr, prec_ptr, crec_ptr, jstar_ptr, coef_ptr, live, B, N, K, Hf, Wf,
                NEED_O: tl.constexpr, NEED_R: tl.constexpr, NEG: tl.constexpr):  # fmt: skip
    """Entry e = ((role B + b) N + k) 4 + corner of the backward (role 0: anchor into D_o, 1:
    positive into D_r, 2: negative into D_r): (key, weight, role, b, k, j*, cp, cn) with key =
    b Hf Wf + cell (+ B Hf Wf for D_r), or 2 B Hf Wf when the entry adds nothing."""
    corner = e % 4
    k = (e // 4) % N
    b = (e // (4 * N)) % B
    role = e // (4 * N * B)
    bl = b.to(tl.int64)
    j = tl.load(jstar_ptr + bl * N + k, mask=live, other=-1)
    cp = tl.load(coef_ptr + (bl * N + k) * 2, mask=live, other=0)
    cn = tl.load(coef_ptr + (bl * N + k) * 2 + 1, mask=live, other=0)
    jj = tl.maximum(j, 0).to(tl.int64)
    r0 = live & (role == 0) & NEED_O & ((cp != 0) | (cn != 0))
    r1 = live & (role == 1) & NEED_R & (cp != 0)
    r2 = live & (role == 2) & NEED_R & NEG & (cn != 0) & (j >= 0)
    a_rec = arec_ptr + (bl * N + k) * 4
    p_rec = prec_ptr + (bl * N + k) * 4
    c_rec = crec_ptr + (bl * K + jj) * 4
    u = tl.load(a_rec, mask=r0, other=0) + tl.load(p_rec, mask=r1, other=0)
    u += tl.load(c_rec, mask=r2, other=0)
    v = tl.load(a_rec + 1, mask=r0, other=0) + tl.load(p_rec + 1, mask=r1, other=0)
    v += tl.load(c_rec + 1, mask=r2, other=0)
    far = tl.load(p_rec + 3, mask=r1, other=1) != 0
    reach = (r0 | r1 | r2) & far & (u > -1.0) & (u < Wf) & (v > -1.0) & (v < Hf)
    u = tl.where(reach, u, -2.0)
    v = tl.where(reach, v, -2.0)
    xc = tl.floor(u) + (corner % 2)
    yc = tl.floor(v) + (corner // 2)
    on = reach & (xc >= 0.0) & (xc <= Wf - 1) & (yc >= 0.0) & (yc <= Hf - 1)
    wgt = tl.where(on, tent(u - xc) * tent(v - yc), 0.0)
    on = on & (wgt != 0)
    hw = Hf * Wf
    xi = tl.where(on, xc, 0.0).to(tl.int64)
    yi = tl.where(on, yc, 0.0).to(tl.int64)
    cell = yi * Wf + xi  # int64: exact beyond 2^24 cells
    key = tl.where(on, bl * hw + cell + tl.where(role == 0, 0, B * hw), 2 * B * hw)
    return key, wgt, role, bl, k, jj, cp, cn


@triton.jit
def _keys_kernel(arec_ptr, prec_ptr, crec_ptr, jstar_ptr, coef_ptr, key_ptr, E, B, N, K, Hf, Wf,
                 NEED_O: tl.constexpr, NEED_R: tl.constexpr, NEG: tl.constexpr,
                 BLOCK: tl.constexpr):  # fmt: skip
    """key[e] of every backward entry (``entry_point``)."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    on = e < E
    key, _w, _r, _b, _k, _j, _cp, _cn = entry_point(
        e, arec_ptr, prec_ptr, crec_ptr, jstar_ptr, coef_ptr, on, B, N, K, Hf, Wf,
        NEED_O, NEED_R, NEG,
    )  # fmt: skip
    tl.store(key_ptr + e, key, mask=on)


@triton.jit
def _scatter_kernel(
    key_ptr, perm_ptr, a_ptr, pos_ptr, cand_ptr, arec_ptr, prec_ptr, crec_ptr, jstar_ptr,
    coef_ptr, scale_ptr, go_ptr, gr_ptr, E, B, N, K, C, Hf, Wf,
    NEED_O: tl.constexpr, NEED_R: tl.constexpr, NEG: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """A block of sorted positions; each one that starts a run of equal keys sums the run's
    contributions in order into the key's cell (all C channels). Contributions (times scale =
    upstream / valid count, t = 1e-6, each times its corner's bilinear weight): anchor
    cp (a - pos + t) - cn (a - neg + t); positive -cp (a - pos + t); negative cn (a - neg + t)."""
    cdt: tl.constexpr = a_ptr.dtype.element_ty
    e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    on = e < E
    key = tl.load(key_ptr + e, mask=on, other=-1)
    prev = tl.load(key_ptr + e - 1, mask=on & (e > 0), other=-1)
    hw = Hf * Wf
    head = on & (key != prev) & (key >= 0) & (key < 2 * B * hw)
    scale = tl.load(scale_ptr).to(cdt)
    eps = tl.full([], 1e-6, cdt)
    cc = tl.arange(0, BLOCK_C)
    bb = tl.where(head, key // hw, 0)
    cell = tl.where(head, key % hw, 0)
    to_o = head & (bb < B)
    to_r = head & (bb >= B)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cc
        con = c < C
        acc = tl.zeros([BLOCK_E, BLOCK_C], cdt)
        run = head
        t = 0
        while tl.max(run.to(tl.int32), axis=0) > 0:
            at = e + t
            k2 = tl.load(key_ptr + at, mask=run & (at < E), other=-1)
            run = run & (k2 == key)
            ent = tl.load(perm_ptr + at, mask=run, other=0)
            _key, wgt, role, bl, k, jj, cp, cn = entry_point(
                ent, arec_ptr, prec_ptr, crec_ptr, jstar_ptr, coef_ptr, run, B, N, K, Hf, Wf,
                NEED_O, NEED_R, NEG,
            )  # fmt: skip
            m2 = run[:, None] & con[None, :]
            col = c[None, :].to(tl.int64)
            av = tl.load(a_ptr + (bl[:, None] * C + col) * N + k[:, None], mask=m2, other=0)
            pv = tl.load(pos_ptr + (bl[:, None] * C + col) * N + k[:, None], mask=m2, other=0)
            nm = m2 & (cn != 0)[:, None]
            nv = tl.load(cand_ptr + (bl[:, None] * C + col) * K + jj[:, None], mask=nm, other=0)
            coef_p = tl.where(role == 0, cp, tl.where(role == 1, -cp, 0.0))
            coef_n = tl.where(role == 0, -cn, tl.where(role == 2, cn, 0.0))
            term = coef_p[:, None] * (av - pv + eps) + coef_n[:, None] * (av - nv + eps)
            acc += tl.where(m2, wgt[:, None] * term, 0.0)
            t += 1
        g = acc * scale
        col = c[None, :].to(tl.int64)
        dst_o = go_ptr + (bb[:, None] * C + col) * hw + cell[:, None]
        tl.store(dst_o, g.to(go_ptr.dtype.element_ty), mask=to_o[:, None] & con[None, :])
        dst_r = gr_ptr + ((bb[:, None] - B) * C + col) * hw + cell[:, None]
        tl.store(dst_r, g.to(gr_ptr.dtype.element_ty), mask=to_r[:, None] & con[None, :])


def _points(pts: torch.Tensor, b: int) -> tuple[torch.Tensor, int]:
    """(points [1 or B, M, 2] contiguous, batch stride: 0 when shared)."""
    pts = pts.contiguous()
    return pts, (pts.stride(0) if pts.shape[0] == b and b > 1 else 0)


def _sample(f, pts, G, warp: bool, cdt):
    """(samples [B,C,M], records [B,M,4]) of map f at the points (1 launch)."""
    b, c, hf, wf = f.shape
    pts, pts_b = _points(pts.to(cdt), b)
    m = pts.shape[1]
    out = torch.empty(b, c, m, dtype=cdt, device=f.device)
    rec = torch.empty(b, m, 4, dtype=cdt, device=f.device)
    if b * m:
        block_c = min(next_pow2(c), 16)  # 128 registers at C = 128
        launch(
            _sample_kernel, (triton.cdiv(m, POINT_BLOCK), b),
            f, f.stride(0), f.stride(1), f.stride(2), f.stride(3),
            pts, pts_b, m, G, out, rec, c, hf, wf,
            WARP=warp, BLOCK_M=POINT_BLOCK, BLOCK_C=block_c, num_warps=4, num_stages=1,
            enable_fp_fusion=False,
        )  # fmt: skip
    return out, rec


def descriptor_forward(desc_o, desc_r, G, anchors, cands, q_px=None, c_px=None, sync=None, *,
                       outside, margin, distance, safe_radius, **_unused):  # fmt: skip
    """(loss, aux [1] = 1 / max(valid, 1), samples a, pos, cand, records, j*, coefficients):
    5 launches (3 samplings, the mining, the fixed-order finalize). ``q_px`` [B,N,2], ``c_px``
    [B,K,2] (compute dtype, contiguous): the pixel positions of the safe_radius test, needed when
    ``safe_radius > 0``."""
    b, c = desc_o.shape[:2]
    cdt = compute_dtype(desc_o, desc_r)
    a, arec = _sample(desc_o, anchors, G, False, cdt)
    anchors_b = anchors.to(cdt).expand(b, -1, -1)
    pos, prec = _sample(desc_r, anchors_b, G, True, cdt)
    cand, crec = _sample(desc_r, cands.to(cdt).expand(b, -1, -1), G, False, cdt)
    n, k = a.shape[2], cand.shape[2]
    jstar = torch.empty(b, n, dtype=torch.int32, device=desc_o.device)
    coef = torch.empty(b, n, 2, dtype=cdt, device=desc_o.device)
    programs = triton.cdiv(n, MINE_BLOCK_N) * b
    partials = torch.zeros(max(programs, 1), NUM_PARTIALS, dtype=cdt, device=desc_o.device)
    use_radius = safe_radius > 0
    if use_radius and (q_px is None or c_px is None):
        raise ValueError("q_px, c_px: the safe_radius test needs the pixel positions")
    if programs:
        launch(
            _mine_kernel, (triton.cdiv(n, MINE_BLOCK_N), b),
            a, pos, cand, arec, prec, crec, q_px if use_radius else prec,
            c_px if use_radius else crec, jstar, coef, partials, n, k, c,
            f64_bits(margin), f64_bits(safe_radius),
            IGNORE=outside == "ignore", SQUARED=distance == "squared_l2",
            USE_RADIUS=use_radius, BLOCK_N=MINE_BLOCK_N, BLOCK_K=MINE_BLOCK_K, num_warps=4,
            num_stages=1, enable_fp_fusion=False,
        )  # fmt: skip
    loss, aux = ratio_finalize(partials, DEN_POS, 0.0, b * n, sync)
    return loss, aux, a, pos, cand, arec, prec, crec, jstar, coef


SORT_BLOCK = 256
SCATTER_BLOCK_E = 32  # sorted positions per program


def descriptor_backward(grad, extras, desc_o, desc_r, *, need_grad, detach_negative, **_unused):
    """(dL/d desc_o or None, dL/d desc_r or None): keys, one stable sort, the scatter (2
    launches and the sort)."""
    aux, a, pos, cand, arec, prec, crec, jstar, coef = extras
    b, c, hf, wf = desc_o.shape
    n, k = a.shape[2], cand.shape[2]
    need_o, need_r = need_grad
    go = torch.zeros(desc_o.shape, dtype=desc_o.dtype, device=desc_o.device) if need_o else None
    gr = torch.zeros(desc_r.shape, dtype=desc_r.dtype, device=desc_r.device) if need_r else None
    e_total = 3 * b * n * 4
    if e_total == 0 or not (need_o or need_r):
        return go, gr
    scale = (grad.to(aux.dtype) * aux[0]).reshape(1)
    flags = dict(NEED_O=bool(need_o), NEED_R=bool(need_r), NEG=not detach_negative)
    keys = torch.empty(e_total, dtype=torch.int64, device=desc_o.device)
    launch(
        _keys_kernel, (triton.cdiv(e_total, SORT_BLOCK),),
        arec, prec, crec, jstar, coef, keys, e_total, b, n, k, hf, wf,
        **flags, BLOCK=SORT_BLOCK, num_warps=4,
    )  # fmt: skip
    keys, perm = torch.sort(keys, stable=True)
    dummy = go if go is not None else gr
    launch(
        _scatter_kernel, (triton.cdiv(e_total, SCATTER_BLOCK_E),),
        keys, perm, a, pos, cand, arec, prec, crec, jstar, coef, scale,
        go if go is not None else dummy, gr if gr is not None else dummy,
        e_total, b, n, k, c, hf, wf, **flags,
        BLOCK_E=SCATTER_BLOCK_E, BLOCK_C=min(next_pow2(c), 16), num_warps=4,
    )  # fmt: skip
    return go, gr
