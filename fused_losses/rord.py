"""RoRD losses (docs/spec.md 11): detection and descriptor maps of an image and its rotated copy.

Geometry (11.2): cell (i, j) is grid point (u, v) = (j, i), pixel (x, y) is (x/s - 1/2, y/s - 1/2);
H maps original points to rotated points (pixels, or ``F.affine_grid``'s normalised coordinates).
Both conventions are one homography G [B,3,3] from original grid points to rotated grid points
(:func:`grid_homography`, built in float64 on the device), and S(F, q) is the bilinear sample of
``F.grid_sample(align_corners=False, padding_mode="zeros")``, 0 where w <= 0.

Detection: T_c = S(P_r, G c) at every original cell c,
    L_det = (w_bce sum_c bce(P_o, T) + w_smooth_l1 sum_c smoothL1(P_o - T)) / n
Descriptor: a_k = S(D_o, p_k), pos_k = S(D_r, G p_k), the nearest eligible candidate n_j* of D_r,
    L_desc = mean over valid k of relu(d(a_k, pos_k) - d(a_k, n_j*) + margin), d = ||x - y + 1e-6||
Total: w_det L_det + w_desc L_desc. Gradients flow into the four maps only.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

import torch

from .backend import PrecomputedGradient, compute_dtype, needs_grad, resolve_backend
from .distributed import active_group, denominator_sync, global_loss
from .options import LossModule, LossOptions
from .validation import (
    check_bool,
    check_choice,
    check_coordinates,
    check_floating,
    check_number,
    check_range,
    check_same_device,
    check_tensor,
    shape_str,
)

STRIDE_RANGE = (1e-6, 1e6)  # pixels per cell: coordinates / stride stay finite in float32
# |w_det|, |w_desc|, |w_bce|, |w_smooth_l1|, |margin| at most: the gradient
# w_det w_bce (P_o - T) / 1e-12 and the total w_desc margin stay finite in float32 (1e36, 1e24)
WEIGHT_MAX = 1e12
COUNT_LIMIT = 2**24  # num_samples, num_candidates: point indices exact in float32
PAIR_CHUNK = 2**22  # torch backend: anchor-candidate-channel differences in memory at once
TRIPLET_EPS = 1e-6  # nn.TripletMarginLoss / F.pairwise_distance
R2_STEPS = (0.7548776662466927, 0.5698402909980532)  # 1/phi, 1/phi^2 (phi: the plastic number)


# ------------------------------------------------------------------------------------ options


@dataclasses.dataclass(frozen=True)
class RoRDGeometryOptions(LossOptions):
    """The geometry shared by the RoRD losses (docs/spec.md 11.2): ``stride`` pixels per cell,
    ``h_coords`` ("pixel" or "normalized": the units H acts on), ``outside`` ("zeros" or
    "ignore": what a point off the map counts)."""

    stride: float = 8.0
    h_coords: str = "pixel"
    outside: str = "zeros"

    def validate(self) -> None:
        stride = check_number("stride", self.stride, positive=True)
        lo, hi = STRIDE_RANGE
        if not lo <= stride <= hi:
            raise ValueError(f"stride: expected a number in [{lo:g}, {hi:g}], got {self.stride!r}")
        self._set("stride", stride)
        check_choice("h_coords", self.h_coords, ("pixel", "normalized"))
        check_choice("outside", self.outside, ("zeros", "ignore"))


def _weight(name: str, value: object) -> float:
    """A weight (or the margin) in [-WEIGHT_MAX, WEIGHT_MAX]."""
    return check_range(name, value, -WEIGHT_MAX, WEIGHT_MAX)


def _safe_radius(value: object) -> float:
    """A radius >= 0 in pixels; +inf is allowed (every candidate at a finite Chebyshev distance
    is then excluded: only anchors whose q_k has w <= 0 or is not finite keep candidates)."""
    if isinstance(value, float) and value == math.inf:
        return value
    return check_number("safe_radius", value, nonneg=True)


def _count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= COUNT_LIMIT:
        raise ValueError(f"{name}: expected an int in [{low}, {COUNT_LIMIT}], got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class RoRDDetectionOptions(RoRDGeometryOptions):
    """Options of :func:`rord_detection_loss` (docs/spec.md 11.1): the geometry,
    ``from_logits``, the weights ``w_bce`` and ``w_smooth_l1``, ``detach_target``."""

    from_logits: bool = False
    w_bce: float = 1.0
    w_smooth_l1: float = 0.1
    detach_target: bool = False

    def validate(self) -> None:
        super().validate()
        check_bool("from_logits", self.from_logits)
        self._set("w_bce", _weight("w_bce", self.w_bce))
        self._set("w_smooth_l1", _weight("w_smooth_l1", self.w_smooth_l1))
        check_bool("detach_target", self.detach_target)


@dataclasses.dataclass(frozen=True)
class RoRDDescriptorOptions(RoRDGeometryOptions):
    """Options of :func:`rord_descriptor_loss` (docs/spec.md 11.1): the geometry, the triplet
    ``margin`` and ``distance`` ("l2" or "squared_l2"), ``num_samples`` (default anchors:
    floor(sqrt)^2), ``num_candidates`` (drawn when no negatives are given), ``safe_radius``
    (pixels, Chebyshev), ``detach_negative``."""

    margin: float = 1.0
    distance: str = "l2"
    num_samples: int = 200
    num_candidates: int = 400
    safe_radius: float = 0.0
    detach_negative: bool = True

    def validate(self) -> None:
        super().validate()
        self._set("margin", _weight("margin", self.margin))
        check_choice("distance", self.distance, ("l2", "squared_l2"))
        _count("num_samples", self.num_samples, 1)
        _count("num_candidates", self.num_candidates, 0)
        self._set("safe_radius", _safe_radius(self.safe_radius))
        check_bool("detach_negative", self.detach_negative)


@dataclasses.dataclass(frozen=True)
class RoRDOptions(RoRDDetectionOptions, RoRDDescriptorOptions):
    """Options of :func:`rord_loss` / :class:`RoRDLoss`: those of :class:`RoRDDetectionOptions`
    and :class:`RoRDDescriptorOptions` (each validated once) and the total's weights ``w_det``
    and ``w_desc``."""

    w_det: float = 1.0
    w_desc: float = 1.0

    def validate(self) -> None:
        super().validate()  # detection, descriptor, geometry (the MRO)
        self._set("w_det", _weight("w_det", self.w_det))
        self._set("w_desc", _weight("w_desc", self.w_desc))

    def part(self, cls: type[LossOptions]) -> Any:
        """The options of one part (its fields of these options)."""
        return cls(**{f: getattr(self, f) for f in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------- input checks


def _check_map(name: str, x: object) -> torch.Tensor:
    """A floating [B, C, Hf, Wf] map with Hf, Wf >= 1 (an empty map has no cell to sample)."""
    check_tensor(name, x)
    check_floating(name, x)
    if x.dim() != 4:
        raise ValueError(f"{name}: expected shape [B, C, Hf, Wf], got {shape_str(x)}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(
            f"{name}: expected shape [B, C, Hf, Wf] with Hf, Wf >= 1, got {shape_str(x)}"
        )
    return x


def check_det_maps(det_original: object, det_rotated: object) -> None:
    for name, x in (("det_original", det_original), ("det_rotated", det_rotated)):
        _check_map(name, x)
        if x.shape[1] != 1:
            raise ValueError(f"{name}: expected shape [B, 1, Hf, Wf], got {shape_str(x)}")
    if det_rotated.shape != det_original.shape:
        raise ValueError(
            f"det_rotated: expected the shape of det_original {shape_str(det_original)}, got "
            f"{shape_str(det_rotated)}"
        )


def check_desc_maps(desc_original: object, desc_rotated: object, det: Any = None) -> None:
    _check_map("desc_original", desc_original)
    _check_map("desc_rotated", desc_rotated)
    if det is not None:
        b, _, hf, wf = det.shape
        if (desc_original.shape[0], *desc_original.shape[2:]) != (b, hf, wf):
            raise ValueError(
                f"desc_original: expected shape [{b}, C, {hf}, {wf}] (the det maps' B, Hf, Wf), "
                f"got {shape_str(desc_original)}"
            )
    if desc_rotated.shape != desc_original.shape:
        raise ValueError(
            f"desc_rotated: expected the shape of desc_original {shape_str(desc_original)}, got "
            f"{shape_str(desc_rotated)}"
        )


def check_homography(H: object, batch: int) -> None:
    check_tensor("H", H)
    check_coordinates("H", H)
    ok = H.dim() in (2, 3) and tuple(H.shape[-2:]) in ((2, 3), (3, 3))
    if ok and H.dim() == 3:
        ok = H.shape[0] == batch
    if not ok:
        raise ValueError(
            f"H: expected shape [{batch}, 2, 3], [{batch}, 3, 3], [2, 3] or [3, 3], got "
            f"{shape_str(H)}"
        )


def check_points(name: str, pts: object, batch: int) -> None:
    check_tensor(name, pts)
    check_coordinates(name, pts)
    letter = "N" if name == "anchors" else "K"
    ok = pts.shape[-1:] == (2,) and (pts.dim() == 2 or (pts.dim() == 3 and pts.shape[0] == batch))
    if not ok:
        raise ValueError(
            f"{name}: expected shape [{letter}, 2] or [{batch}, {letter}, 2] (x, y) pixels, got "
            f"{shape_str(pts)}"
        )


def check_generator(generator: object, negatives: object, device: torch.device) -> None:
    if generator is None:
        return
    if negatives is not None:
        raise ValueError("negatives, generator: give at most one of them, got both")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    gdev = torch.device(generator.device)
    same = gdev.type == device.type and (
        gdev.type == "cpu" or (gdev.index or 0) == (device.index or 0)
    )
    if not same:
        raise ValueError(
            f"generator: expected a generator on {device} (the maps' device), got one on {gdev}"
        )


# ---------------------------------------------------------------------------------- geometry


def grid_homography(
    H: torch.Tensor, batch: int, size: tuple[int, int], stride: float, h_coords: str
) -> torch.Tensor:
    """G [B,3,3] float64: original grid point (u, v, 1) -> rotated grid point (homogeneous).

    pixel: G = A^-1 H A with A (u, v) = (s (u + 1/2), s (v + 1/2)); normalized: G = N^-1 H N
    with N (u, v) = (2 (u + 1/2) / Wf - 1, 2 (v + 1/2) / Hf - 1). A [2,3] H gets the row
    (0, 0, 1), so w = 1 and G is affine."""
    hf, wf = size
    h = full_homography(H, batch)
    if h_coords == "pixel":
        sx = sy = stride
        tx, ty = stride / 2, stride / 2
    else:
        sx, sy = 2 / wf, 2 / hf
        tx, ty = 1 / wf - 1, 1 / hf - 1
    # M = H A with A = [[sx, 0, tx], [0, sy, ty], [0, 0, 1]], then G = A'^-1 M with A' the same
    # affine map: arithmetic on the device tensor (no host-to-device copy of A)
    m = torch.stack(
        [h[..., 0] * sx, h[..., 1] * sy, h[..., 0] * tx + h[..., 1] * ty + h[..., 2]], -1
    )
    g = torch.stack([(m[..., 0, :] - tx * m[..., 2, :]) / sx,
                     (m[..., 1, :] - ty * m[..., 2, :]) / sy, m[..., 2, :]], -2)  # fmt: skip
    return normalize_homography(g)


def full_homography(H: torch.Tensor, batch: int) -> torch.Tensor:
    """H as [B,3,3] float64 (detached; a [2,3] H gets the row (0, 0, 1), an unbatched one is
    shared by the batch)."""
    h = H.detach().to(torch.float64)
    if h.shape[-2] == 2:
        row = h.new_zeros((*h.shape[:-2], 1, 3))
        row[..., 0, 2] = 1
        h = torch.cat([h, row], dim=-2)
    if h.dim() == 2:
        h = h.expand(batch, 3, 3)
    return h


def normalize_homography(g: torch.Tensor) -> torch.Tensor:
    """g [B,3,3] divided by the power of two 2^floor(log2 max |g_ij|) of each matrix (the same
    homography, exactly: the points, w > 0 and every sample keep their bits), so that its entries
    and the adjugate's cofactors neither over- nor underflow in float32 whatever H's scale. A G
    that is 0 or not finite is left as it is. On the device, no synchronisation."""
    top = g.abs().amax(dim=(-2, -1), keepdim=True)
    ok = torch.isfinite(top) & (top > 0)
    _, e = torch.frexp(torch.where(ok, top, 1))
    return g / torch.ldexp(torch.ones_like(top), e - 1)


def default_anchors(num_samples: int, size: tuple[int, int], device, dtype) -> torch.Tensor:
    """[1,N,2] grid points: n = floor(sqrt(num_samples)) per side over the cell centres,
    row-major (the map centre for n = 1)."""
    hf, wf = size
    n = math.isqrt(num_samples)
    t = torch.arange(n, dtype=torch.float64, device=device)
    if n > 1:  # t (Wf - 1) is an exact integer: one rounding (as the reference)
        xs, ys = t * (wf - 1) / (n - 1), t * (hf - 1) / (n - 1)
    else:
        xs, ys = t * 0 + (wf - 1) / 2, t * 0 + (hf - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)[None].to(dtype)


def r2_candidates(k: int, size: tuple[int, int], device, dtype) -> torch.Tensor:
    """[1,K,2] grid points of the R2 sequence: (frac(1/2 + (j+1) a1) (Wf-1), frac(1/2 + (j+1)
    a2) (Hf-1)), computed in float64 (device-independent)."""
    hf, wf = size
    j = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    fx = torch.frac(0.5 + j * R2_STEPS[0])
    fy = torch.frac(0.5 + j * R2_STEPS[1])
    return torch.stack([fx * (wf - 1), fy * (hf - 1)], -1)[None].to(dtype)


def pixel_points(pts: torch.Tensor, stride: float, dtype) -> torch.Tensor:
    """(x, y) pixels [M,2] or [B,M,2] -> grid points [1 or B, M, 2] in ``dtype``."""
    g = pts.detach().to(torch.float64) / stride - 0.5
    return (g if g.dim() == 3 else g[None]).to(dtype)


def candidate_points(
    negatives: torch.Tensor | None,
    generator: torch.Generator | None,
    batch: int,
    size: tuple[int, int],
    opts: Any,
    device,
    dtype,
) -> torch.Tensor:
    """[1 or B, K, 2] candidate grid points (docs/spec.md 11.2)."""
    hf, wf = size
    if negatives is not None:
        return pixel_points(negatives, opts.stride, dtype)
    if generator is not None:
        r = torch.rand(
            (batch, opts.num_candidates, 2), generator=generator, device=device, dtype=torch.float32
        )
        return torch.stack([r[..., 0] * (wf - 1), r[..., 1] * (hf - 1)], -1).to(dtype)
    return r2_candidates(opts.num_candidates, size, device, dtype)


def radius_positions(
    H: torch.Tensor, anchors_px: torch.Tensor, batch: int, size: tuple[int, int], opts: Any
) -> torch.Tensor:
    """q_k in pixels [B,N,2] float64 for the ``safe_radius`` test (docs/spec.md 11.3.2): the
    anchors' pixels ``anchors_px`` [1 or B, N, 2] (float64) sent through H where H acts (pixels;
    normalised coordinates, then back to pixels), H divided by a power of two first (exact: the
    same quotients); NaN where w <= 0 or the point is not finite (every candidate is then
    eligible). An H of 0, +-1 and binary-fraction shifts (an identity, a shift, a quarter turn)
    gives exact pixels, so a candidate exactly ``safe_radius`` pixels away is decided exactly. Same arithmetic, in the
    same order, as ``reference/rord.py``'s ``radius_positions``."""
    hf, wf = size
    h = normalize_homography(full_homography(H, batch).to(anchors_px.device))
    s = opts.stride
    x, y = anchors_px[..., 0], anchors_px[..., 1]
    if opts.h_coords == "normalized":
        x = 2 * (x / s) / wf - 1
        y = 2 * (y / s) / hf - 1

    def row(i: int) -> torch.Tensor:
        return h[:, i, 0, None] * x + h[:, i, 1, None] * y + h[:, i, 2, None]

    w = row(2)
    xr, yr = row(0) / w, row(1) / w
    if opts.h_coords == "normalized":
        xr = s * ((xr + 1) * wf / 2)
        yr = s * ((yr + 1) * hf / 2)
    q = torch.stack([xr, yr], -1)
    far = (w > 0) & torch.isfinite(q).all(-1)
    return torch.where(far[..., None], q, math.nan)


# ------------------------------------------------------------------------ torch backend pieces


def warp_points(G: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotated grid points [B,M,2], w > 0 [B,M]) of grid points uv [1 or B, M, 2] under G."""
    g = G.to(uv.dtype)
    u, v = uv[..., 0], uv[..., 1]
    x = g[:, 0, 0, None] * u + g[:, 0, 1, None] * v + g[:, 0, 2, None]
    y = g[:, 1, 0, None] * u + g[:, 1, 1, None] * v + g[:, 1, 2, None]
    w = g[:, 2, 0, None] * u + g[:, 2, 1, None] * v + g[:, 2, 2, None]
    ok = w > 0
    w = torch.where(ok, w, 1)
    return torch.stack([x / w, y / w], -1), ok


def inside(uv: torch.Tensor, ok: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """w > 0 and 0 <= u <= Wf-1 and 0 <= v <= Hf-1 (False for a non-finite point)."""
    hf, wf = size
    u, v = uv[..., 0], uv[..., 1]
    return ok & (u >= 0) & (u <= wf - 1) & (v >= 0) & (v <= hf - 1)


def corners(
    uv: torch.Tensor, ok: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat cell index [B,M,4], weight [B,M,4]) of the bilinear corners of grid points uv; a
    corner off the map (or of a point with w <= 0 or not finite) has weight 0 (index 0)."""
    hf, wf = size
    u, v = uv[..., 0], uv[..., 1]
    reach = ok & (u > -1) & (u < wf) & (v > -1) & (v < hf)
    u, v = torch.where(reach, u, -2), torch.where(reach, v, -2)
    x0, y0 = torch.floor(u), torch.floor(v)
    fx, fy = u - x0, v - y0
    idx, wt = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            xc, yc = x0 + dx, y0 + dy
            w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
            on = reach & (xc >= 0) & (xc <= wf - 1) & (yc >= 0) & (yc <= hf - 1)
            idx.append(torch.where(on, yc, 0).long() * wf + torch.where(on, xc, 0).long())
            wt.append(torch.where(on, w, 0))
    return torch.stack(idx, -1), torch.stack(wt, -1)


def gather_sample(flat: torch.Tensor, idx: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """S(F, .) [B,M,C] from F [B,C,Hf*Wf] at the corners (idx, wt) [B,M,4]."""
    b, c, _ = flat.shape
    m = idx.shape[1]
    vals = flat.gather(2, idx.reshape(b, 1, m * 4).expand(b, c, m * 4)).view(b, c, m, 4)
    w = wt[:, None]
    # a corner of weight 0 adds exactly 0, also when its cell is not finite (0 * inf = NaN)
    return torch.where(w != 0, vals * w, 0).sum(-1).transpose(1, 2)


def scatter_sample_grad(
    grad: torch.Tensor, idx: torch.Tensor, wt: torch.Tensor, hw: int
) -> torch.Tensor:
    """The transpose of :func:`gather_sample`: [B,C,Hf*Wf] from grad [B,M,C] (deterministic
    index_add on CPU)."""
    b, m, c = grad.shape
    w = wt[..., None]
    contrib = torch.where(w != 0, grad[:, :, None, :] * w, 0).reshape(b, m * 4, c)
    flat = idx.reshape(b, m * 4) + torch.arange(b, device=idx.device)[:, None] * hw
    out = grad.new_zeros(b * hw, c)
    out.index_add_(0, flat.reshape(-1), contrib.reshape(b * m * 4, c))
    return out.view(b, hw, c).transpose(1, 2)


def cell_points(size: tuple[int, int], device, dtype) -> torch.Tensor:
    """[1, Hf*Wf, 2] grid points of the cells, row-major."""
    hf, wf = size
    yy, xx = torch.meshgrid(
        torch.arange(hf, device=device, dtype=dtype),
        torch.arange(wf, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)[None]


def _bce_terms(p_o, x_o, t, from_logits: bool):
    """(bce, d bce / d P_o or d bce / d x_o, d bce / d T) elementwise (docs/spec.md 11.3)."""
    if from_logits:
        ls_pos, ls_neg = torch.nn.functional.logsigmoid(x_o), torch.nn.functional.logsigmoid(-x_o)
        return -(t * ls_pos + (1 - t) * ls_neg), p_o - t, -x_o
    log_p = torch.clamp(torch.log(p_o), min=-100)
    log_q = torch.clamp(torch.log1p(-p_o), min=-100)
    bce = -(t * log_p + (1 - t) * log_q)
    d_p = (p_o - t) / torch.clamp((1 - p_o) * p_o, min=1e-12)
    return bce, d_p, log_q - log_p


def detection_torch(
    det_o, det_r, G, opts: Any, sync, op: str = "rord_detection_loss"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch backend of the detection loss: (L_det, components [det_bce, det_smooth_l1, det]);
    ``op`` names the public op in the double-backward error."""
    need_o, need_r = needs_grad(det_o, det_r)
    need_r = need_r and not opts.detach_target
    b, _, hf, wf = det_o.shape
    size = (hf, wf)

    def value_and_grad(xo: torch.Tensor, xr: torch.Tensor):
        cdt = torch.promote_types(compute_dtype(xo.dtype), compute_dtype(xr.dtype))
        xo = xo.detach().to(cdt).reshape(b, hf * wf)
        xr = xr.detach().to(cdt).reshape(b, 1, hf * wf)
        p_o = torch.sigmoid(xo) if opts.from_logits else xo
        p_r = torch.sigmoid(xr) if opts.from_logits else xr
        q, ok = warp_points(G, cell_points(size, xo.device, cdt))
        idx, wt = corners(q, ok, size)
        t = gather_sample(p_r, idx, wt)[..., 0]
        counted = inside(q, ok, size) if opts.outside == "ignore" else torch.ones_like(ok)
        bce, d_bce, d_bce_t = _bce_terms(p_o, xo, t, opts.from_logits)
        d = p_o - t
        sl1 = torch.where(d.abs() < 1, 0.5 * d * d, d.abs() - 0.5)
        bce, sl1 = torch.where(counted, bce, 0), torch.where(counted, sl1, 0)
        n = counted.sum().to(cdt)
        n = (sync(n) if sync is not None else n).clamp_min(1)
        det_bce, det_sl1 = bce.sum() / n, sl1.sum() / n
        loss = opts.w_bce * det_bce + opts.w_smooth_l1 * det_sl1
        comps = torch.stack([det_bce, det_sl1, loss])
        g_o = g_r = None
        d_sl1 = torch.clamp(d, -1, 1)
        if need_o:
            sl1_o = d_sl1 * p_o * torch.sigmoid(-xo) if opts.from_logits else d_sl1
            g_o = torch.where(counted, opts.w_bce * d_bce + opts.w_smooth_l1 * sl1_o, 0) / n
            g_o = g_o.view(b, 1, hf, wf)
        if need_r:
            g_t = torch.where(counted, opts.w_bce * d_bce_t - opts.w_smooth_l1 * d_sl1, 0) / n
            g_r = scatter_sample_grad(g_t[..., None], idx, wt, hf * wf)
            if opts.from_logits:
                g_r = g_r * p_r * torch.sigmoid(-xr)
            g_r = g_r.view(b, 1, hf, wf)
        return loss, comps, (g_o, g_r)

    # detach_target: no gradient reaches det_rotated, so it does not make the loss require grad
    det_r = det_r.detach() if opts.detach_target else det_r
    return PrecomputedGradient.apply(op, value_and_grad, det_o, det_r)


def _triplet_distance(x: torch.Tensor, y: torch.Tensor, squared: bool):
    """(d, d d / d x) of d = ||x - y + eps|| (squared: its square) over the last dim; the
    gradient at d = 0 is 0 (autograd's norm)."""
    diff = x - y + TRIPLET_EPS
    d2 = (diff * diff).sum(-1)
    if squared:
        return d2, 2 * diff
    d = torch.sqrt(d2)
    return d, diff / torch.where(d > 0, d, 1)[..., None] * (d > 0)[..., None]


def nearest_candidates(a, cand, eligible) -> tuple[torch.Tensor, torch.Tensor]:
    """(j* [B,N] (0 where none), found [B,N]): the eligible candidate nearest each anchor in
    plain L2 (smallest j on ties; a NaN distance is nearest, as for torch.argmin; an overflowed
    one still counts), a streaming argmin over chunks of candidates; found = some candidate is
    eligible."""
    b, n, c = a.shape
    k = cand.shape[1]
    best = a.new_full((b, n), math.inf)
    arg = torch.zeros(b, n, dtype=torch.long, device=a.device)
    chunk = max(1, PAIR_CHUNK // max(b * n * c, 1))
    big = torch.finfo(a.dtype).max
    for k0 in range(0, k, chunk):
        diff = a[:, :, None, :] - cand[:, None, k0 : k0 + chunk, :]
        d2 = (diff * diff).sum(-1)
        # a NaN distance wins (torch.argmin's NaN) and an overflowed one stays a candidate, so
        # that a broken or out-of-range input gives a NaN or inf loss instead of 0
        d2 = torch.where(d2 == math.inf, big, d2)
        d2 = torch.where(torch.isnan(d2), -math.inf, d2)
        d2 = torch.where(eligible[:, :, k0 : k0 + chunk], d2, math.inf)
        m, j = d2.min(-1)
        better = m < best
        best, arg = torch.where(better, m, best), torch.where(better, j + k0, arg)
    return arg, best < math.inf


def descriptor_torch(
    desc_o, desc_r, G, anchors, cands, radius, opts: Any, sync, op: str = "rord_descriptor_loss"
) -> torch.Tensor:
    """Torch backend of the descriptor loss (anchors [1 or B, N, 2], cands [1 or B, K, 2] grid
    points; ``radius``: None, or (q_k [B,N,2], candidates [1 or B, K, 2]) in pixels for the
    ``safe_radius`` test, :func:`radius_points`; ``op`` names the public op in the
    double-backward error)."""
    need_o, need_r = needs_grad(desc_o, desc_r)
    b, c, hf, wf = desc_o.shape
    size = (hf, wf)
    squared = opts.distance == "squared_l2"

    def value_and_grad(do: torch.Tensor, dr: torch.Tensor):
        cdt = torch.promote_types(compute_dtype(do.dtype), compute_dtype(dr.dtype))
        fo = do.detach().to(cdt).reshape(b, c, hf * wf)
        fr = dr.detach().to(cdt).reshape(b, c, hf * wf)
        pa = anchors.to(cdt).expand(b, -1, -1)
        pc = cands.to(cdt).expand(b, -1, -1)
        one = torch.ones(pa.shape[:2], dtype=torch.bool, device=pa.device)
        q, q_ok = warp_points(G, pa)
        ia, wa = corners(pa, one, size)
        iq, wq = corners(q, q_ok, size)
        cand_ok = torch.ones(pc.shape[:2], dtype=torch.bool, device=pc.device)
        ic, wc = corners(pc, cand_ok, size)
        a, pos = gather_sample(fo, ia, wa), gather_sample(fr, iq, wq)
        neg_all = gather_sample(fr, ic, wc)
        counts = torch.ones_like(one)
        if opts.outside == "ignore":
            counts = inside(pa, one, size) & inside(q, q_ok, size)
            cand_ok = inside(pc, cand_ok, size)
        cand_ok = cand_ok & ~torch.isnan(pc).any(-1)  # a NaN candidate is never eligible
        eligible = cand_ok[:, None, :].expand(b, pa.shape[1], pc.shape[1])
        if radius is not None:  # safe_radius > 0: Chebyshev distance in pixels
            q_px, c_px = (t.to(cdt) for t in radius)
            far = ~torch.isnan(q_px[..., 0])  # NaN: w <= 0 or not finite, every candidate
            cheb = (c_px[:, None, :, :] - q_px[:, :, None, :]).abs().amax(-1)
            eligible = eligible & ((cheb >= opts.safe_radius) | ~far[..., None])
        j, found = nearest_candidates(a, neg_all, eligible)
        valid = counts & found
        if neg_all.shape[1] == 0:  # K = 0: no triplet is valid
            neg_all, ic, wc = torch.zeros_like(a[:, :1]), ia[:, :1], wa[:, :1] * 0
        neg = neg_all.gather(1, j[..., None].expand(b, j.shape[1], c))
        dp, gp = _triplet_distance(a, pos, squared)
        dn, gn = _triplet_distance(a, neg, squared)
        h = dp - dn + opts.margin
        nv = valid.sum().to(cdt)
        nv = (sync(nv) if sync is not None else nv).clamp_min(1)
        loss = torch.where(valid, torch.relu(h), 0).sum() / nv
        active = (valid & (h > 0)).to(cdt)[..., None] / nv
        g_o = g_r = None
        if need_o:
            g_o = scatter_sample_grad(active * (gp - gn), ia, wa, hf * wf).view(b, c, hf, wf)
        if need_r:
            g_r = scatter_sample_grad(-active * gp, iq, wq, hf * wf)
            if not opts.detach_negative:
                jn = j[..., None].expand(-1, -1, 4)
                g_r = g_r + scatter_sample_grad(
                    active * gn, ic.gather(1, jn), wc.gather(1, jn), hf * wf
                )
            g_r = g_r.view(b, c, hf, wf)
        return loss, loss.new_zeros(0), (g_o, g_r)

    return PrecomputedGradient.apply(op, value_and_grad, desc_o, desc_r)[0]


# ---------------------------------------------------------------------------------- public ops


def _check_desc_inputs(desc_o, desc_r, H, anchors, negatives, generator, det=None) -> None:
    check_desc_maps(desc_o, desc_r, det)
    b = desc_o.shape[0]
    check_homography(H, b)
    if anchors is not None:
        check_points("anchors", anchors, b)
    if negatives is not None:
        check_points("negatives", negatives, b)
    check_generator(generator, negatives, desc_o.device)


def _det_share(
    det_o, det_r, H, opts, sync, op: str = "rord_detection_loss"
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's detection loss and components; ``op``: the public op (double-backward error)."""
    b, _, hf, wf = det_o.shape
    G = grid_homography(H, b, (hf, wf), opts.stride, opts.h_coords).to(det_o.device)
    if resolve_backend(opts.backend, det_o.device) == "triton":
        from .triton_rord import detection_loss_triton

        return detection_loss_triton(det_o, det_r, G, opts, sync, op=op)
    return detection_torch(det_o, det_r, G, opts, sync, op=op)


def radius_points(H, anchors, negatives, pa, pc, batch, size, opts) -> tuple[torch.Tensor, ...]:
    """(q_k [B,N,2], candidates [1 or B, K, 2]) in pixels, float64, for the ``safe_radius`` test
    (docs/spec.md 11.3.2): the given ``anchors`` / ``negatives`` as they are (else s (p + 1/2) of
    the float64 grid points ``pa`` / ``pc``), the anchors sent through H by
    :func:`radius_positions`."""
    s = opts.stride
    if anchors is not None:
        a_px = anchors.detach().to(torch.float64)
        a_px = a_px if a_px.dim() == 3 else a_px[None]
    else:
        a_px = s * (pa + 0.5)
    if negatives is not None:
        c_px = negatives.detach().to(torch.float64)
        c_px = c_px if c_px.dim() == 3 else c_px[None]
    else:
        c_px = s * (pc + 0.5)
    return radius_positions(H, a_px, batch, size, opts), c_px


def _desc_share(
    desc_o, desc_r, H, anchors, negatives, generator, opts, sync, op: str = "rord_descriptor_loss"
) -> torch.Tensor:
    """This rank's descriptor loss; ``op``: the public op (double-backward error)."""
    b, _, hf, wf = desc_o.shape
    size = (hf, wf)
    dev = desc_o.device
    cdt = torch.promote_types(compute_dtype(desc_o.dtype), compute_dtype(desc_r.dtype))
    G = grid_homography(H, b, size, opts.stride, opts.h_coords).to(dev)
    f64 = torch.float64  # grid points in float64, then rounded to cdt (as computed directly)
    pa = (
        pixel_points(anchors, opts.stride, f64)
        if anchors is not None
        else default_anchors(opts.num_samples, size, dev, f64)
    )
    pc = candidate_points(negatives, generator, b, size, opts, dev, f64)
    radius = None
    if opts.safe_radius > 0:
        radius = radius_points(H, anchors, negatives, pa, pc, b, size, opts)
    pa, pc = pa.to(cdt), pc.to(cdt)
    if resolve_backend(opts.backend, dev) == "triton":
        from .triton_rord import descriptor_loss_triton

        return descriptor_loss_triton(desc_o, desc_r, G, pa, pc, opts, sync, radius, op=op)
    return descriptor_torch(desc_o, desc_r, G, pa, pc, radius, opts, sync, op=op)


def rord_detection_loss(
    det_original: torch.Tensor,
    det_rotated: torch.Tensor,
    H: torch.Tensor,
    *,
    return_components: bool = False,
    options: RoRDDetectionOptions | None = None,
    **overrides: Any,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RoRD detection loss (docs/spec.md 11.3.1): det maps [B,1,Hf,Wf] (probabilities; logits with
    ``from_logits``), H [B,2,3] / [B,3,3] (or unbatched) original -> rotated points.

    L_det = (w_bce sum bce(P_o, T) + w_smooth_l1 sum smoothL1(P_o - T)) / n, T_c = S(P_r, H(c)).
    With ``return_components``: ``(L_det, {"det_bce", "det_smooth_l1", "det"})`` (detached).
    Options: :class:`RoRDDetectionOptions`."""
    check_det_maps(det_original, det_rotated)
    check_homography(H, det_original.shape[0])
    check_same_device({"det_original": det_original, "det_rotated": det_rotated, "H": H})
    check_bool("return_components", return_components)
    opts = RoRDDetectionOptions.build(options, overrides)
    group = active_group(opts)
    local, comps = _det_share(det_original, det_rotated, H, opts, denominator_sync(group))
    loss, comps = global_loss(local, group, comps)
    if not return_components:
        return loss
    return loss, dict(zip(("det_bce", "det_smooth_l1", "det"), comps.detach().unbind()))


def rord_descriptor_loss(
    desc_original: torch.Tensor,
    desc_rotated: torch.Tensor,
    H: torch.Tensor,
    anchors: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    options: RoRDDescriptorOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """RoRD descriptor loss (docs/spec.md 11.3.2): desc maps [B,C,Hf,Wf], H as
    :func:`rord_detection_loss`, anchors [N,2] / [B,N,2] (x, y) original pixels (default: a
    grid), negatives [K,2] / [B,K,2] rotated pixels (default: ``num_candidates`` points of the R2
    sequence, or uniform draws of ``generator``).

    L_desc = mean over valid anchors of relu(d(a, pos) - d(a, n_j*) + margin), n_j* the nearest
    eligible candidate. Options: :class:`RoRDDescriptorOptions`."""
    _check_desc_inputs(desc_original, desc_rotated, H, anchors, negatives, generator)
    check_same_device(
        {
            "desc_original": desc_original,
            "desc_rotated": desc_rotated,
            "H": H,
            "anchors": anchors,
            "negatives": negatives,
        }
    )
    opts = RoRDDescriptorOptions.build(options, overrides)
    group = active_group(opts)
    local = _desc_share(
        desc_original, desc_rotated, H, anchors, negatives, generator, opts,
        denominator_sync(group),
    )  # fmt: skip
    return global_loss(local, group)[0]


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
    return_components: bool = False,
    options: RoRDOptions | None = None,
    **overrides: Any,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Functional form of :class:`RoRDLoss`: w_det L_det + w_desc L_desc (docs/spec.md 11.3)."""
    check_det_maps(det_original, det_rotated)
    _check_desc_inputs(
        desc_original, desc_rotated, H, anchors, negatives, generator, det=det_original
    )
    check_same_device(
        {"det_original": det_original, "det_rotated": det_rotated, "desc_original": desc_original,
         "desc_rotated": desc_rotated, "H": H, "anchors": anchors, "negatives": negatives}
    )  # fmt: skip
    check_bool("return_components", return_components)
    opts = RoRDOptions.build(options, overrides)
    group = active_group(opts)
    sync = denominator_sync(group)
    det, det_comps = _det_share(
        det_original, det_rotated, H, opts.part(RoRDDetectionOptions), sync, op="rord_loss"
    )
    desc = _desc_share(
        desc_original, desc_rotated, H, anchors, negatives, generator,
        opts.part(RoRDDescriptorOptions), sync, op="rord_loss",
    )  # fmt: skip
    local = opts.w_det * det + opts.w_desc * desc
    extras = torch.cat([det_comps.detach(), desc.detach().reshape(1).to(det_comps.dtype)])
    total, extras = global_loss(local, group, extras)
    if not return_components:
        return total
    names = ("det_bce", "det_smooth_l1", "det", "desc")
    return total, dict(zip(names, extras.unbind()))


class RoRDDetectionLoss(LossModule):
    """Module form of :func:`rord_detection_loss`: ``RoRDDetectionLoss(**options)`` (the fields
    of :class:`RoRDDetectionOptions`), ``forward(det_original, det_rotated, H,
    return_components=False)``."""

    Options = RoRDDetectionOptions

    def forward(self, det_original, det_rotated, H, return_components: bool = False):
        return rord_detection_loss(
            det_original, det_rotated, H, return_components=return_components,
            options=self.options,
        )  # fmt: skip


class RoRDDescriptorLoss(LossModule):
    """Module form of :func:`rord_descriptor_loss`: ``RoRDDescriptorLoss(**options)`` (the fields
    of :class:`RoRDDescriptorOptions`), ``forward(desc_original, desc_rotated, H, anchors=None,
    negatives=None, generator=None)``."""

    Options = RoRDDescriptorOptions

    def forward(self, desc_original, desc_rotated, H, anchors=None, negatives=None, generator=None):
        return rord_descriptor_loss(
            desc_original, desc_rotated, H, anchors, negatives, generator, options=self.options
        )


class RoRDLoss(LossModule):
    """RoRD training loss (docs/spec.md 11): detection (BCE + smooth-L1 of the original map
    against the rotated map warped back) plus descriptor (triplet with grid anchors and
    nearest-candidate hard negatives), fused: neither the warped map nor the distance matrix is
    built.

    ``RoRDLoss(**options)`` with the fields of :class:`RoRDOptions` (``stride=8,
    h_coords="pixel", outside="zeros", w_det=1.0, w_desc=1.0, from_logits=False, w_bce=1.0,
    w_smooth_l1=0.1, detach_target=False, margin=1.0, distance="l2", num_samples=200,
    num_candidates=400, safe_radius=0.0, detach_negative=True, backend="auto",
    reduce_across_ranks=False, process_group=None``), called as ``criterion(det_original,
    det_rotated, desc_original, desc_rotated, H, anchors=None, negatives=None, generator=None,
    return_components=False)``: det maps [B,1,Hf,Wf], desc maps [B,C,Hf,Wf], H [B,2,3] or
    [B,3,3] (or unbatched) mapping original to rotated points. Returns the 0-dim total (float32;
    float64 for float64 maps), with ``return_components`` also the detached ``det_bce``,
    ``det_smooth_l1``, ``det`` and ``desc``.
    """

    Options = RoRDOptions

    def forward(
        self,
        det_original: torch.Tensor,
        det_rotated: torch.Tensor,
        desc_original: torch.Tensor,
        desc_rotated: torch.Tensor,
        H: torch.Tensor,
        anchors: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_components: bool = False,
    ):
        return rord_loss(
            det_original, det_rotated, desc_original, desc_rotated, H, anchors, negatives,
            generator, return_components=return_components, options=self.options,
        )  # fmt: skip


WARP_OPTIONS = ("stride", "h_coords")


def homography_warp(
    x: torch.Tensor,
    H: torch.Tensor,
    *,
    stride: float = 8.0,
    h_coords: str = "pixel",
    **unknown: Any,
) -> torch.Tensor:
    """x [B,C,Hf,Wf] sampled at every original cell's image under H: out[b, :, i, j] =
    S(x[b], H(cell (i, j))) (docs/spec.md 11.2), the target T of the detection loss, made
    explicit (the losses never build it). Differentiable in x (autograd); no gradient into H.
    Options ``stride`` and ``h_coords`` only; another keyword is a TypeError naming it (a point
    beyond the map samples 0: there is no ``outside``)."""
    for name in unknown:
        close = difflib.get_close_matches(name, WARP_OPTIONS, n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if not close and name in RoRDOptions.__dataclass_fields__:
            hint = " (an option of the RoRD losses; homography_warp samples 0 beyond the map)"
        raise TypeError(
            f"{name}: not an option of homography_warp; expected one of "
            f"{', '.join(WARP_OPTIONS)}{hint}"
        )
    _check_map("x", x)
    check_homography(H, x.shape[0])
    check_same_device({"x": x, "H": H})
    opts = RoRDDetectionOptions(stride=stride, h_coords=h_coords)
    b, c, hf, wf = x.shape
    size = (hf, wf)
    cdt = compute_dtype(x.dtype)
    G = grid_homography(H, b, size, opts.stride, opts.h_coords).to(x.device)
    q, ok = warp_points(G, cell_points(size, x.device, cdt))
    idx, wt = corners(q, ok, size)
    out = gather_sample(x.to(cdt).reshape(b, c, hf * wf), idx, wt)
    return out.transpose(1, 2).reshape(b, c, hf, wf).to(x.dtype)
