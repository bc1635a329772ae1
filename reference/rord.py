"""Reference RoRD losses (docs/spec.md 11): the detection loss of an image's detection map against
its rotated copy's map warped back through H, and the descriptor triplet loss with the nearest
candidate of the rotated map as the negative.

Literal: every point goes through the grid-point convention of 11.2 ((u, v) = (x/s - 1/2, y/s - 1/2),
``align_corners=False``), H is applied as written (never inverted), the samples are
``F.grid_sample``'s bilinear formula (written out, see below), the warped target T is built
explicitly, the [B,N,K] distance matrix of the
negative mining is built explicitly, gradients by autograd. Geometry runs in the maps' dtype (the
default anchors and R2 candidates in float64, the generator's draw in float32, then cast). H,
anchors and negatives are used detached; the oracle validates nothing except that ``negatives``
and ``generator`` are exclusive.

A point with ``w <= 0`` or a non-finite (u, v) samples exactly 0 (all channels) and is not inside.
The bilinear sample is ``F.grid_sample``'s, written out so that a corner of weight 0 (a point on a
grid line) adds exactly 0 also when its cell is NaN or infinite (``F.grid_sample`` computes
0 * inf there or not depending on its vectorisation); on finite maps the two agree
(:func:`grid_sample_points`, checked by the tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

R2_A1 = 0.7548776662466927  # 1/phi, phi the plastic number
R2_A2 = 0.5698402909980532  # 1/phi^2


def grid_points(points_px: torch.Tensor, stride: float) -> torch.Tensor:
    """Grid points (u, v) = (x/s - 1/2, y/s - 1/2) [..., 2] of pixels (x, y) [..., 2]."""
    return points_px / stride - 0.5


def transform(
    H: torch.Tensor,
    uv: torch.Tensor,
    *,
    stride: float,
    h_coords: str,
    Hf: int,
    Wf: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uv' [B,M,2], w [B,M]): grid points uv [B,M,2] of the original map sent through H [B,2,3] or
    [B,3,3] (or unbatched [2,3], [3,3]) into grid points of the rotated map.

    "pixel": p = s (uv + 1/2); p' = (h00 x + h01 y + h02, h10 x + h11 y + h12) / w,
    w = h20 x + h21 y + h22 (1 for [2,3]); uv' = p'/s - 1/2.
    "normalized": n = (2(u+1/2)/Wf - 1, 2(v+1/2)/Hf - 1) (F.affine_grid's base grid); n' = H(n) with
    the same division; uv' = (((n'_x + 1) Wf - 1)/2, ((n'_y + 1) Hf - 1)/2).
    uv' is returned as divided (inf or NaN where w = 0); see :func:`inside`.
    """
    H = H.detach().to(uv.dtype)
    u, v = uv[..., 0], uv[..., 1]
    if h_coords == "pixel":
        x = stride * (u + 0.5)
        y = stride * (v + 0.5)
    elif h_coords == "normalized":
        x = 2 * (u + 0.5) / Wf - 1
        y = 2 * (v + 0.5) / Hf - 1
    else:
        raise ValueError(f"h_coords must be pixel or normalized, got {h_coords!r}")
    x_r, y_r, w = _apply_h(H, x, y)
    if h_coords == "pixel":
        u_r = x_r / stride - 0.5
        v_r = y_r / stride - 0.5
    else:
        u_r = ((x_r + 1) * Wf - 1) / 2
        v_r = ((y_r + 1) * Hf - 1) / 2
    w = w.expand_as(u_r)
    return torch.stack([u_r, v_r], dim=-1), w


def _apply_h(
    H: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x', y', w) = ((h00 x + h01 y + h02) / w, (h10 x + h11 y + h12) / w, h20 x + h21 y + h22)
    (w = 1 for a [2,3] H); H [B,3,3] / [B,2,3] or unbatched, x, y [B,M] or [M]."""
    h = [[H[..., i, j][..., None] for j in range(3)] for i in range(H.shape[-2])]
    if H.shape[-2] == 3:
        w = h[2][0] * x + h[2][1] * y + h[2][2]
    else:
        w = torch.ones_like(x)
    return (h[0][0] * x + h[0][1] * y + h[0][2]) / w, (h[1][0] * x + h[1][1] * y + h[1][2]) / w, w


def radius_positions(
    H: torch.Tensor,
    points_px: torch.Tensor,
    *,
    stride: float,
    h_coords: str,
    Hf: int,
    Wf: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [B,M,2] pixels, w [B,M]): pixels (x, y) [B,M,2] of the original image sent through H
    where H acts, in pixels (the ``safe_radius`` test of :func:`rord_descriptor_loss`).

    "pixel": (h00 x + h01 y + h02, h10 x + h11 y + h12) / w, w = h20 x + h21 y + h22 (1 for
    [2,3]). "normalized": n = (2 (x/s) / Wf - 1, 2 (y/s) / Hf - 1), n' = H(n) with the same
    division, q = (s ((n'_x + 1) Wf / 2), s ((n'_y + 1) Hf / 2)). An H of 0, +-1 and
    binary-fraction shifts (an identity, a shift, a quarter turn) gives the exact pixels."""
    H = H.detach().to(points_px.dtype)
    x, y = points_px[..., 0], points_px[..., 1]
    if h_coords == "normalized":
        x = 2 * (x / stride) / Wf - 1
        y = 2 * (y / stride) / Hf - 1
    elif h_coords != "pixel":
        raise ValueError(f"h_coords must be pixel or normalized, got {h_coords!r}")
    x_r, y_r, w = _apply_h(H, x, y)
    if h_coords == "normalized":
        x_r = stride * ((x_r + 1) * Wf / 2)
        y_r = stride * ((y_r + 1) * Hf / 2)
    q = torch.stack([x_r, y_r], dim=-1)
    return q, w.expand_as(x_r)


def grid_sample_points(F_map: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False) of F [B,C,Hf,Wf]
    at grid points uv [B,M,2] (gx = (2u+1)/Wf - 1, gy = (2v+1)/Hf - 1), as [B,M,C]: what
    :func:`sample` writes out (they agree on finite maps and points)."""
    hf, wf = F_map.shape[-2:]
    gx = (2 * uv[..., 0] + 1) / wf - 1
    gy = (2 * uv[..., 1] + 1) / hf - 1
    grid = torch.stack([gx, gy], dim=-1)[:, :, None, :]  # [B, M, 1, 2]
    out = F.grid_sample(F_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :, :, 0].transpose(1, 2)


def sample(F_map: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """S(F, uv) [B,M,C]: F [B,C,Hf,Wf] at grid points uv [B,M,2].

    The bilinear sample of F.grid_sample(mode="bilinear", padding_mode="zeros",
    align_corners=False), written out: the sum over the corners (floor(u) + dx, floor(v) + dy),
    dx, dy in {0, 1}, that lie on the map and have a positive weight (1 - |u - x|)(1 - |v - y|)
    of weight * F[corner]. A corner of weight 0 (u or v on a grid line) is not part of the sample:
    it adds exactly 0 to the value and receives no gradient, also when its cell is NaN or
    infinite (F.grid_sample's own 0 * NaN there depends on its vectorisation). 0 where u or v is
    not finite. On finite maps this is F.grid_sample (:func:`grid_sample_points`).
    """
    b, c, hf, wf = F_map.shape
    m = uv.shape[1]
    uv = uv.to(F_map.dtype)
    zero = torch.zeros((), dtype=F_map.dtype, device=F_map.device)
    finite = torch.isfinite(uv).all(dim=-1)  # [B, M]
    uv = torch.where(finite[..., None], uv, zero)
    u, v = uv[..., 0], uv[..., 1]
    x0, y0 = torch.floor(u), torch.floor(v)
    flat = F_map.reshape(b, c, hf * wf)
    out = torch.zeros(b, m, c, dtype=F_map.dtype, device=F_map.device)
    for dy in (0, 1):
        for dx in (0, 1):
            x, y = x0 + dx, y0 + dy
            w = (1 - (u - x).abs()) * (1 - (v - y).abs())  # [B, M]
            on = finite & (x >= 0) & (x <= wf - 1) & (y >= 0) & (y <= hf - 1) & (w > 0)
            idx = (torch.where(on, y, zero) * wf + torch.where(on, x, zero)).long()
            vals = flat.gather(2, idx[:, None, :].expand(b, c, m)).transpose(1, 2)  # [B, M, C]
            out = out + torch.where(on[..., None], w[..., None] * vals, zero)
    return out


def warped_sample(F_map: torch.Tensor, uv: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """S(F, uv) [B,M,C] of transformed points (uv, w from :func:`transform`): 0 where w <= 0."""
    out = sample(F_map, uv)
    return torch.where((w > 0)[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def inside(uv: torch.Tensor, w: torch.Tensor, Hf: int, Wf: int) -> torch.Tensor:
    """bool [B,M]: w > 0, u and v finite, 0 <= u <= Wf-1 and 0 <= v <= Hf-1."""
    u, v = uv[..., 0], uv[..., 1]
    finite = torch.isfinite(u) & torch.isfinite(v)
    return (w > 0) & finite & (u >= 0) & (u <= Wf - 1) & (v >= 0) & (v <= Hf - 1)


def default_anchors(num_samples: int, Hf: int, Wf: int, dtype: torch.dtype) -> torch.Tensor:
    """[n*n, 2] grid points (a (Wf-1)/(n-1), b (Hf-1)/(n-1)), a, b < n = floor(sqrt(num_samples)),
    row-major (index b n + a); the map centre ((Wf-1)/2, (Hf-1)/2) if n = 1. Float64, then cast."""
    n = math.isqrt(num_samples)
    if n == 1:
        return torch.tensor([[(Wf - 1) / 2, (Hf - 1) / 2]], dtype=torch.float64).to(dtype)
    idx = torch.arange(n, dtype=torch.float64)
    u = idx * (Wf - 1) / (n - 1)  # a (Wf-1) is an exact integer: one rounding
    v = idx * (Hf - 1) / (n - 1)
    vv, uu = torch.meshgrid(v, u, indexing="ij")  # [n (b), n (a)]
    return torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=-1).to(dtype)


def r2_candidates(K: int, Hf: int, Wf: int, dtype: torch.dtype) -> torch.Tensor:
    """[K,2] grid points (frac(1/2 + (j+1) a1) (Wf-1), frac(1/2 + (j+1) a2) (Hf-1)), j < K (the R2
    sequence, a1 = 1/phi, a2 = 1/phi^2 with phi the plastic number). Float64, then cast."""
    j = torch.arange(K, dtype=torch.float64)
    t1 = 0.5 + (j + 1) * R2_A1
    t2 = 0.5 + (j + 1) * R2_A2
    u = (t1 - torch.floor(t1)) * (Wf - 1)
    v = (t2 - torch.floor(t2)) * (Hf - 1)
    return torch.stack([u, v], dim=-1).to(dtype)


def random_candidates(
    B: int,
    K: int,
    Hf: int,
    Wf: int,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """[B,K,2] grid points (r0 (Wf-1), r1 (Hf-1)), r = torch.rand((B,K,2), float32) drawn from
    ``generator`` on ``device``; the product in float32, then cast."""
    r = torch.rand((B, K, 2), generator=generator, device=device, dtype=torch.float32)
    u = r[..., 0] * (Wf - 1)
    v = r[..., 1] * (Hf - 1)
    return torch.stack([u, v], dim=-1).to(dtype)


def cell_centres(Hf: int, Wf: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """[Hf*Wf, 2] grid points (j, i) of the cell centres, row-major (index i Wf + j)."""
    i = torch.arange(Hf, dtype=dtype, device=device)
    j = torch.arange(Wf, dtype=dtype, device=device)
    ii, jj = torch.meshgrid(i, j, indexing="ij")
    return torch.stack([jj.reshape(-1), ii.reshape(-1)], dim=-1)


def _warp_grid(
    x: torch.Tensor, H: torch.Tensor, *, stride: float, h_coords: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T [B,C,Hf,Wf], counted [B,Hf,Wf] bool: the sample point is inside) of homography_warp."""
    b, c, hf, wf = x.shape
    uv = cell_centres(hf, wf, x.dtype, x.device)[None].expand(b, hf * wf, 2)
    uv_r, w = transform(H, uv, stride=stride, h_coords=h_coords, Hf=hf, Wf=wf)
    t = warped_sample(x, uv_r, w)  # [B, Hf*Wf, C]
    t = t.transpose(1, 2).reshape(b, c, hf, wf)
    return t, inside(uv_r, w, hf, wf).reshape(b, hf, wf)


def homography_warp(
    x: torch.Tensor, H: torch.Tensor, *, stride: float = 8, h_coords: str = "pixel"
) -> torch.Tensor:
    """T [B,C,Hf,Wf]: T[:, :, i, j] = S(x, H(centre of cell (i, j))), the map x [B,C,Hf,Wf] of the
    rotated image read at the points where the original's cell centres land (0 where w <= 0)."""
    return _warp_grid(x, H, stride=stride, h_coords=h_coords)[0]


def rord_detection_loss(
    det_original: torch.Tensor,
    det_rotated: torch.Tensor,
    H: torch.Tensor,
    *,
    stride: float = 8,
    h_coords: str = "pixel",
    outside: str = "zeros",
    from_logits: bool = False,
    w_bce: float = 1.0,
    w_smooth_l1: float = 0.1,
    detach_target: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(L_det, {"det_bce", "det_smooth_l1", "det"}) of det maps [B,1,Hf,Wf] (logits with
    ``from_logits``: P = sigmoid(x), the warp acts on P).

    T = homography_warp(P_r, H) (of det_rotated.detach() with ``detach_target``);
    bce_c = F.binary_cross_entropy(P_o, T) = -(T clamp(log P_o, -100) + (1-T) clamp(log(1-P_o), -100))
    (from logits: -(T logsigmoid(x_o) + (1-T) logsigmoid(-x_o))); sl1_c = smoothL1(P_o - T), beta 1.
    Counted cells: all B Hf Wf ("zeros") or those whose sample point is inside ("ignore"), n of them;
    L_det = (w_bce sum bce + w_smooth_l1 sum sl1) / n, 0 if n = 0; det_bce = sum bce / n,
    det_smooth_l1 = sum sl1 / n, det = w_bce det_bce + w_smooth_l1 det_smooth_l1 (not detached).

    BCE is linear in T: its gradient to T is the spec's clamp(log(1-P_o), -100) - clamp(log P_o, -100)
    (torch's own target gradient uses unclamped logs: infinite at P_o = 0 or 1); to P_o it is torch's.
    """
    x_o = det_original
    x_r = det_rotated.detach() if detach_target else det_rotated
    p_o = torch.sigmoid(x_o) if from_logits else x_o
    p_r = torch.sigmoid(x_r) if from_logits else x_r
    t, ins = _warp_grid(p_r, H, stride=stride, h_coords=h_coords)  # [B,1,Hf,Wf], [B,Hf,Wf]
    if from_logits:
        bce = -(t * F.logsigmoid(x_o) + (1 - t) * F.logsigmoid(-x_o))
    else:
        bce = F.binary_cross_entropy(p_o, t.detach(), reduction="none")
        dbce_dt = torch.clamp(torch.log(1 - p_o), min=-100) - torch.clamp(torch.log(p_o), min=-100)
        bce = bce + (t - t.detach()) * dbce_dt.detach()  # value + 0; the spec's gradient to T
    sl1 = F.smooth_l1_loss(p_o, t, reduction="none", beta=1.0)
    if outside == "zeros":
        counted = torch.ones_like(ins)
    elif outside == "ignore":
        counted = ins
    else:
        raise ValueError(f"outside must be zeros or ignore, got {outside!r}")
    counted = counted[:, None]  # [B,1,Hf,Wf]
    zero = torch.zeros((), dtype=bce.dtype, device=bce.device)
    sum_bce = torch.where(counted, bce, zero).sum()
    sum_sl1 = torch.where(counted, sl1, zero).sum()
    n = counted.sum().to(bce.dtype)
    n_safe = torch.clamp(n, min=1)  # n = 0: the sums are 0, L_det = 0
    loss = (w_bce * sum_bce + w_smooth_l1 * sum_sl1) / n_safe
    det_bce = sum_bce / n_safe
    det_sl1 = sum_sl1 / n_safe
    det = w_bce * det_bce + w_smooth_l1 * det_sl1
    return loss, {"det_bce": det_bce, "det_smooth_l1": det_sl1, "det": det}


def _batched(points: torch.Tensor, b: int) -> torch.Tensor:
    """[N,2] or [B,N,2] -> [B,N,2]."""
    return points.expand(b, *points.shape[-2:]) if points.dim() == 2 else points


def rord_descriptor_loss(
    desc_original: torch.Tensor,
    desc_rotated: torch.Tensor,
    H: torch.Tensor,
    anchors: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    stride: float = 8,
    h_coords: str = "pixel",
    outside: str = "zeros",
    margin: float = 1.0,
    distance: str = "l2",
    num_samples: int = 200,
    num_candidates: int = 400,
    safe_radius: float = 0.0,
    detach_negative: bool = True,
) -> torch.Tensor:
    """L_desc of desc maps D_o, D_r [B,C,Hf,Wf].

    Anchors k at grid points p_k (``anchors`` [N,2]/[B,N,2] pixels of the original image, else
    :func:`default_anchors`): a_k = S(D_o, p_k), q_k = H(p_k), pos_k = S(D_r, q_k) (0 if w <= 0).
    Candidates j at grid points c_j of the rotated map (``negatives`` [K,2]/[B,K,2] pixels, else
    :func:`random_candidates` of ``generator``, else :func:`r2_candidates`): n_j = S(D_r, c_j).
    j eligible for k: ("ignore": c_j inside), c_j has no NaN coordinate, and either q_k has
    w <= 0 or is not finite, or ||x_j - x'_k||_inf >= safe_radius in pixels: x_j the given
    ``negatives`` as they are (else s (c_j + 1/2)), x'_k = H(a_k) where H acts
    (:func:`radius_positions`) of the anchor's pixels a_k (the given ``anchors`` as they are,
    else s (p_k + 1/2)). k counts: "zeros", or p_k and q_k inside.
    j* = argmin over eligible j of ||a_k - n_j||_2 (no grad; ties: smallest j); (b, k) valid iff k
    counts and j* exists. d(x, y) = ||x - y + 1e-6||_2 (squared with distance="squared_l2");
    L_desc = mean over valid (b, k) of relu(d(a_k, pos_k) - d(a_k, n_j*) + margin), 0 if none.
    n_j* is detached with ``detach_negative``.
    """
    if negatives is not None and generator is not None:
        raise ValueError("negatives and generator are exclusive: give at most one")
    d_o, d_r = desc_original, desc_rotated
    b, _, hf, wf = d_o.shape
    dtype, dev = d_o.dtype, d_o.device
    # anchors: original grid points p [B,N,2]
    if anchors is None:
        p = default_anchors(num_samples, hf, wf, dtype).to(dev)
        a_px = stride * (p + 0.5)  # the anchors' pixels (the safe_radius test)
    else:
        a_px = anchors.detach().to(device=dev, dtype=dtype)
        p = grid_points(a_px, stride)
    p, a_px = _batched(p, b), _batched(a_px, b)
    # candidates: rotated grid points c [B,K,2], their pixels c_px
    c_px = None
    if negatives is not None:
        c_px = negatives.detach().to(device=dev, dtype=dtype)
        c = grid_points(c_px, stride)
    elif generator is not None:
        c = random_candidates(b, num_candidates, hf, wf, generator, dev, dtype)
    else:
        c = r2_candidates(num_candidates, hf, wf, dtype).to(dev)
    c = _batched(c, b)
    c_px = _batched(c_px, b) if c_px is not None else stride * (c + 0.5)
    k_count = c.shape[1]
    # samples
    q, w = transform(H, p, stride=stride, h_coords=h_coords, Hf=hf, Wf=wf)  # [B,N,2], [B,N]
    a = sample(d_o, p)  # [B,N,C]
    pos = warped_sample(d_r, q, w)  # [B,N,C]
    neg_all = sample(d_r, c)  # [B,K,C]
    # eligibility and counting
    one = torch.ones_like(c[..., 0])
    if outside == "zeros":
        cand_ok = torch.ones_like(c[..., 0], dtype=torch.bool)  # [B,K]
        counts = torch.ones_like(p[..., 0], dtype=torch.bool)  # [B,N]
    elif outside == "ignore":
        cand_ok = inside(c, one, hf, wf)
        counts = inside(p, torch.ones_like(p[..., 0]), hf, wf) & inside(q, w, hf, wf)
    else:
        raise ValueError(f"outside must be zeros or ignore, got {outside!r}")
    # safe_radius: the Chebyshev distance in pixels of c_j to q_k = H(a_k), every candidate
    # when q_k has w <= 0 or is not finite; a candidate with a NaN coordinate is never eligible
    q_px, w_px = radius_positions(H, a_px, stride=stride, h_coords=h_coords, Hf=hf, Wf=wf)
    cheb = (c_px[:, None, :, :] - q_px[:, :, None, :]).abs().amax(dim=-1)  # [B,N,K]
    q_ok = (w_px > 0) & torch.isfinite(q_px).all(dim=-1)  # [B,N]
    far = (cheb >= safe_radius) | ~q_ok[..., None]
    not_nan = ~torch.isnan(c).any(dim=-1)  # [B,K]
    eligible = (cand_ok & not_nan)[:, None, :] & far  # [B,N,K]
    inf = torch.full((), math.inf, dtype=dtype, device=dev)
    # hardest negative: j* = argmin of the plain L2 distance over the eligible candidates
    with torch.no_grad():
        dist = torch.norm(a[:, :, None, :] - neg_all[:, None, :, :], dim=-1)  # [B,N,K]
        dist = torch.where(eligible, dist, inf)
        has = eligible.any(dim=-1)  # [B,N]
        if k_count > 0:
            j_star = torch.argmin(dist, dim=-1)  # first minimum
        else:
            j_star = torch.zeros_like(has, dtype=torch.long)
    valid = counts & has
    neg_src = neg_all.detach() if detach_negative else neg_all
    if k_count > 0:
        neg = torch.gather(neg_src, 1, j_star[..., None].expand(*j_star.shape, neg_src.shape[-1]))
    else:
        neg = torch.zeros_like(a)  # no candidate: no valid triplet
    # triplet loss
    d_pos = F.pairwise_distance(a, pos, p=2, eps=1e-6)  # [B,N]
    d_neg = F.pairwise_distance(a, neg, p=2, eps=1e-6)
    if distance == "l2":
        pass
    elif distance == "squared_l2":
        d_pos, d_neg = d_pos**2, d_neg**2
    else:
        raise ValueError(f"distance must be l2 or squared_l2, got {distance!r}")
    trip = torch.relu(d_pos - d_neg + margin)
    zero = torch.zeros((), dtype=trip.dtype, device=trip.device)
    count = valid.sum().to(trip.dtype)
    return torch.where(valid, trip, zero).sum() / torch.clamp(count, min=1)  # none valid: 0


def rord_loss(
    det_original: torch.Tensor,
    det_rotated: torch.Tensor,
    desc_original: torch.Tensor,
    desc_rotated: torch.Tensor,
    H: torch.Tensor,
    anchors: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    stride: float = 8,
    h_coords: str = "pixel",
    outside: str = "zeros",
    w_det: float = 1.0,
    w_desc: float = 1.0,
    from_logits: bool = False,
    w_bce: float = 1.0,
    w_smooth_l1: float = 0.1,
    detach_target: bool = False,
    margin: float = 1.0,
    distance: str = "l2",
    num_samples: int = 200,
    num_candidates: int = 400,
    safe_radius: float = 0.0,
    detach_negative: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(w_det L_det + w_desc L_desc, {"det_bce", "det_smooth_l1", "det", "desc"}) (not detached):
    :func:`rord_detection_loss` and :func:`rord_descriptor_loss` with their options."""
    l_det, comps = rord_detection_loss(
        det_original,
        det_rotated,
        H,
        stride=stride,
        h_coords=h_coords,
        outside=outside,
        from_logits=from_logits,
        w_bce=w_bce,
        w_smooth_l1=w_smooth_l1,
        detach_target=detach_target,
    )
    l_desc = rord_descriptor_loss(
        desc_original,
        desc_rotated,
        H,
        anchors,
        negatives,
        generator,
        stride=stride,
        h_coords=h_coords,
        outside=outside,
        margin=margin,
        distance=distance,
        num_samples=num_samples,
        num_candidates=num_candidates,
        safe_radius=safe_radius,
        detach_negative=detach_negative,
    )
    total = w_det * l_det + w_desc * l_desc
    return total, {**comps, "desc": l_desc}
