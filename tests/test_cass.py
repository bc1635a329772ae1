"""The CASS family (docs/spec.md 10): cass_soft_target, soft_focal_loss, cass_loss / CASSLoss
against the literal float64 reference, on both backends (triton through the interpreter on CPU).

The reference evaluates the soft mask in the boxes' own dtype (10.6: a patch centre exactly on a
region edge is then decided alike) and the loss in float64.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    DEVICE,
    TOLERANCES,
    assert_grad_close,
    assert_scalar_close,
    build_loss,
    pairwise,
    upstream_scalar,
)
from fused_losses.kernels.launch import launch_count, reset_launch_count
from fused_losses.reference import cass as R

import fused_losses as fl
from fused_losses.cass import patch_grid

STRIDE = 32.0


def scene(b: int, n: int, feat: tuple[int, int], kind: str, seed: int) -> dict:
    """Boxes [b,n,4] in pixels of an image feat * STRIDE, and a box mask, of one ``kind``:
    "random" boxes inside the image; "edges" boxes on patch borders and centres, off the map,
    zero-size, inverted and tiny ones; "masked" random boxes half of which are masked out."""
    g = torch.Generator().manual_seed(seed)
    h, w = feat
    size = torch.tensor([w * STRIDE, h * STRIDE], dtype=torch.float64)
    xy = torch.rand(b, n, 2, generator=g, dtype=torch.float64) * size
    wh = (0.05 + torch.rand(b, n, 2, generator=g, dtype=torch.float64)) * size * 0.4
    boxes = torch.cat([xy, xy + wh], dim=-1)
    mask = None
    if kind == "edges" and n:
        cell = STRIDE
        special = torch.tensor(
            [
                [2 * cell, 2 * cell, 6 * cell, 6 * cell],  # edges on patch centres (patch 4)
                [-8 * cell, -4 * cell, -1 * cell, 3 * cell],  # off the map on the left
                [5 * cell, 1 * cell, 5 * cell, 1 * cell],  # zero-size
                [9 * cell, 7 * cell, 3 * cell, 2 * cell],  # inverted
                [1.3 * cell, 4.1 * cell, 2.0 * cell, 4.9 * cell],  # tiny (below threshold)
                [(w + 1) * cell, (h + 1) * cell, (w + 9) * cell, (h + 5) * cell],  # off, far
            ],
            dtype=torch.float64,
        )
        for i in range(b):
            rows = special[(torch.arange(n) + i) % len(special)]
            boxes[i, : min(n, len(special))] = rows[: min(n, len(special))]
    if kind == "masked":
        mask = torch.rand(b, n, generator=g) > 0.5
    return dict(boxes=boxes, box_mask=mask)


def _target_opts(row: dict) -> dict:
    return {k: row[k] for k in ("merge", "decay", "anisotropic", "patch_size") if k in row}


FACTORS = {
    "b_n": [(1, 0), (1, 6), (3, 5), (2, 12)],
    "feat": [(7, 10), (3, 5), (8, 8), (13, 6)],
    "kind": ["random", "edges", "masked"],
    "merge": ["max", "sum"],
    "decay": ["gaussian", "linear"],
    "anisotropic": [True, False],
    "loss": ["focal", "mse"],
    "eps": [1e-8, 0.0],
    "layout": ["flat", "map"],
    "patch_size": [4, 3],
}
ROWS = pairwise(FACTORS)


def _ids(rows):
    return [
        f"b{r['b_n'][0]}n{r['b_n'][1]}-{r['feat'][0]}x{r['feat'][1]}-{r['kind']}-{r['merge']}-"
        f"{r['decay']}-{'aniso' if r['anisotropic'] else 'circ'}-{r['loss']}-eps{r['eps']}-"
        f"{r['layout']}-p{r['patch_size']}"
        for r in rows
    ]


def run_parity(row: dict, backend: str, dtype: torch.dtype, box_dtype: torch.dtype, seed: int):
    """Loss and score gradient of cass_loss against the reference, at spec 6 tolerances."""
    b, n = row["b_n"]
    feat = row["feat"]
    sc = scene(b, n, feat, row["kind"], seed)
    boxes = sc["boxes"].to(box_dtype)
    mask = sc["box_mask"]
    _, _, hp, wp = patch_grid(feat, row["patch_size"])
    g = torch.Generator().manual_seed(seed + 1)
    shape = (b, hp * wp) if row["layout"] == "flat" else (b, 1, hp, wp)
    s64 = 2.5 * torch.randn(*shape, generator=g, dtype=torch.float64)
    opts = dict(loss=row["loss"], eps=row["eps"], **_target_opts(row))
    ref_s = s64.to(dtype).to(torch.float64).requires_grad_()
    ref = R.cass_loss(ref_s, boxes, mask, feat_size=feat, stride=STRIDE, **opts)
    r = upstream_scalar(seed)
    (ref * r).backward()
    x = s64.to(dtype).to(DEVICE).requires_grad_()
    loss = fl.cass_loss(
        x,
        boxes.to(DEVICE),
        mask.to(DEVICE) if mask is not None else None,
        feat_size=feat,
        stride=STRIDE,
        backend=backend,
        **opts,
    )
    loss_tol, grad_tol = TOLERANCES[dtype]
    assert loss.dim() == 0
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_scalar_close(loss, ref, loss_tol)
    (loss * r).backward()
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    assert_grad_close(x.grad, ref_s.grad, grad_tol, "grad scores")


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_cass_loss_matches_reference(row, backend):
    run_parity(row, backend, torch.float32, torch.float32, seed=len(str(row)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_cass_loss_dtypes(dtype, backend):
    row = dict(ROWS[3], kind="edges")
    box_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    run_parity(row, backend, dtype, box_dtype, seed=5)


@pytest.mark.parametrize("row", ROWS[:8], ids=_ids(ROWS[:8]))
def test_soft_target_matches_reference(row, backend):
    """Y itself: the same support (every region decision equal) and values to float32 rounding;
    float64 boxes to 1e-12."""
    b, n = row["b_n"]
    for box_dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        sc = scene(b, n, row["feat"], row["kind"], seed=7)
        boxes = sc["boxes"].to(box_dtype)
        opts = dict(_target_opts(row), stride=STRIDE)
        ref = R.cass_soft_target(boxes, row["feat"], box_mask=sc["box_mask"], **opts)
        mask = sc["box_mask"].to(DEVICE) if sc["box_mask"] is not None else None
        y = fl.cass_soft_target(
            boxes.to(DEVICE), row["feat"], box_mask=mask, backend=backend, **opts
        ).cpu()
        assert y.dtype == box_dtype and y.shape == ref.shape
        assert torch.equal(y > 0, ref > 0)
        assert torch.equal(y == 1, ref == 1)
        assert (y - ref).abs().max().item() <= tol


def test_band_edge_rounds_like_pytorch(backend):
    """x2 + r bw is exactly 6.0 in float32 with separate roundings (5.9999995 with an FMA): the
    patch centred at 6 is in the band on both backends (the kernel compiles without FMA)."""
    boxes = torch.tensor([[[62.00002670288086, 40.0, 162.0, 140.0]]])
    ref = R.cass_soft_target(boxes, (8, 8))
    y = fl.cass_soft_target(boxes.to(DEVICE), (8, 8), backend=backend).cpu()
    assert ref[0, 0, 0, 1] > 0.4
    assert torch.allclose(y, ref, rtol=1e-6, atol=0)


def test_soft_target_refuses_reduce_across_ranks(backend):
    """The target has no normaliser: reduce_across_ranks=True was accepted and did nothing."""
    boxes = torch.tensor([[[10.0, 10.0, 100.0, 90.0]]])
    with pytest.raises(ValueError, match=r"^reduce_across_ranks"):
        fl.cass_soft_target(boxes, (8, 8), backend=backend, reduce_across_ranks=True)
    y = fl.cass_soft_target(boxes.to(DEVICE), (8, 8), backend=backend, reduce_across_ranks=False)
    assert torch.allclose(y.cpu(), R.cass_soft_target(boxes, (8, 8)), rtol=1e-6, atol=0)


def test_soft_target_region_edges_are_inclusive(backend):
    """Patch centres exactly on a region edge (feat 8x8, patch 4: centres at 2 and 6 cells).
    On the core edge D = 1 as on the core; the band edge matters when the expansion is under one
    cell: X in [2.5, 4.5], ew = 0.25 * 2 = 0.5, so the band reaches px = 2 exactly."""
    boxes = torch.tensor([[[64.0, 64.0, 192.0, 192.0]], [[80.0, 32.0, 144.0, 224.0]]])
    ref = R.cass_soft_target(boxes, (8, 8), expansion_ratio=0.25)
    y = fl.cass_soft_target(boxes.to(DEVICE), (8, 8), expansion_ratio=0.25, backend=backend)
    assert torch.equal(ref[0], torch.ones(1, 2, 2))
    assert (ref[1, 0, :, 0] > 0.5).all() and (ref[1, 0, :, 1] == 0).all()
    assert torch.allclose(y.cpu(), ref, rtol=1e-6, atol=0)


def test_no_boxes_is_the_negative_term_over_every_patch(backend):
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 6, generator=g, dtype=torch.float64)
    for boxes, mask in (
        (torch.zeros(2, 0, 4), None),
        (torch.rand(2, 3, 4) * 100, torch.zeros(2, 3, dtype=torch.bool)),
        (torch.tensor([[[1e4, 1e4, 2e4, 2e4]]] * 2), None),  # every band off the map
    ):
        loss = fl.cass_loss(
            scores.to(DEVICE), boxes.to(DEVICE),
            mask.to(DEVICE) if mask is not None else None, feat_size=(7, 10), backend=backend,
        )  # fmt: skip
        expect = R.soft_focal_loss(scores, torch.zeros_like(scores))
        assert loss.item() > 0
        assert_scalar_close(loss, expect, 1e-12)


def test_nan_box_is_in_no_region(backend):
    boxes = torch.tensor([[[30.0, 20.0, 200.0, 150.0], [float("nan"), 0.0, 100.0, 100.0]]])
    scores = torch.randn(1, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = R.cass_loss(scores, boxes[:, :1], feat_size=(7, 10))
    loss = fl.cass_loss(scores.to(DEVICE), boxes.to(DEVICE), feat_size=(7, 10), backend=backend)
    assert_scalar_close(loss, ref, 1e-6)
    y = fl.cass_soft_target(boxes.to(DEVICE), (7, 10), backend=backend).cpu()
    assert torch.equal(y, fl.cass_soft_target(boxes[:, :1], (7, 10), backend=backend).cpu())


INF = float("inf")


@pytest.mark.parametrize(
    ("bad", "stride"),
    [
        ([INF, 32.0, 64.0, 96.0], 32.0),
        ([-INF, 32.0, 96.0, 96.0], 32.0),
        ([30.0, -INF, 200.0, INF], 32.0),
        ([30.0, 20.0, INF, 150.0], 32.0),
        ([float("nan"), 20.0, 200.0, 150.0], 32.0),
        ([-3e38, 2.0, 3e38, 9.0], 1.0),  # finite, but x2 - x1 overflows float32
        ([3e38, 2.0, 3.4e38, 9.0], 1.0),  # finite, but the centre overflows float32
    ],
    ids=[
        "x1=inf",
        "x1=-inf",
        "y1=-inf,y2=inf",
        "x2=inf",
        "x1=nan",
        "width_overflow",
        "cx_overflow",
    ],
)
@pytest.mark.parametrize(
    ("decay", "anisotropic"),
    [("gaussian", True), ("linear", True), ("gaussian", False), ("linear", False)],
)
def test_non_finite_box_is_in_no_region(bad, stride, decay, anisotropic, backend):
    """A box with a NaN or infinite coordinate (or one whose centre or size overflows the box
    dtype) adds nothing, on both backends and in the reference (docs/spec.md 10.4)."""
    good = [v * stride / 32 for v in (40.0, 30.0, 200.0, 150.0)]
    boxes = torch.tensor([[good, bad]])
    opts = dict(decay=decay, anisotropic=anisotropic, stride=stride)
    ref = R.cass_soft_target(boxes, (7, 10), **opts)
    assert torch.equal(ref, R.cass_soft_target(boxes[:, :1], (7, 10), **opts))
    y = fl.cass_soft_target(boxes.to(DEVICE), (7, 10), backend=backend, **opts).cpu()
    assert torch.equal(y, ref)
    s = torch.randn(1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref_s = s.clone().requires_grad_()
    ref_loss = R.cass_loss(ref_s, boxes[:, :1], feat_size=(7, 10), **opts)
    ref_loss.backward()
    x = s.to(torch.float32).to(DEVICE).requires_grad_()
    loss = fl.cass_loss(x, boxes.to(DEVICE), feat_size=(7, 10), backend=backend, **opts)
    loss.backward()
    assert_scalar_close(loss, ref_loss, 1e-5)
    assert_grad_close(x.grad, ref_s.grad, 1e-5)


@pytest.mark.parametrize("decay", ["gaussian", "linear"])
def test_huge_circular_band_stays_finite(decay, backend):
    """A float32 box beyond 2^64 cells: ew^2 and the distances' squares overflow float32, so the
    circular rho is evaluated on power-of-two-scaled lengths: the float64 reference's Y."""
    boxes = torch.tensor([[[3.2e21, 0.0, 3.2e22, 64.0]], [[-2e30, -2e30, 5e29, 1e30]]])
    ref = R.cass_soft_target(boxes.double(), (7, 10), decay=decay, anisotropic=False)
    assert ref[0, 0, 0, 0] > 0.5
    y = fl.cass_soft_target(boxes.to(DEVICE), (7, 10), decay=decay, anisotropic=False,
                            backend=backend).cpu()  # fmt: skip
    assert torch.isfinite(y).all()
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("eps", [1e-50, 1e-40, 2.0**-126, 1e-31, 1e-310])
def test_tiny_eps_is_the_references(eps, backend):
    """eps below float32's range (it would round or flush to 0, giving log 0) or so small that a
    flushed P matters against it: log(P + eps) in log space, the float64 reference's value."""
    s = torch.tensor(
        [[-200.0, 200.0, 0.0, -90.0, 95.0, 3.0], [-104.0, 110.0, -1.0, 0.5, 30.0, -30.0]],
        dtype=torch.float64,
    )
    boxes = torch.tensor([[[0.0, 0.0, 64.0, 64.0]], [[100.0, 0.0, 330.0, 64.0]]])
    ref_s = s.clone().requires_grad_()
    ref = R.cass_loss(ref_s, boxes, feat_size=(7, 10), eps=eps)
    ref.backward()
    y = torch.rand(2, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y[:, 0] = 1.0
    ref_fs = s.clone().requires_grad_()
    ref_f = R.soft_focal_loss(ref_fs, y, eps=eps)
    ref_f.backward()
    for dtype in (torch.float32, torch.float64):
        x = s.detach().clone().to(dtype).to(DEVICE).requires_grad_()
        loss = fl.cass_loss(x, boxes.to(DEVICE), feat_size=(7, 10), eps=eps, backend=backend)
        loss.backward()
        assert_scalar_close(loss, ref, 1e-5)
        assert_grad_close(x.grad, ref_s.grad, 1e-5)
        xf = s.detach().clone().to(dtype).to(DEVICE).requires_grad_()
        loss_f = fl.soft_focal_loss(xf, y.to(dtype).to(DEVICE), eps=eps, backend=backend)
        loss_f.backward()
        assert_scalar_close(loss_f, ref_f, 1e-5)
        assert_grad_close(xf.grad, ref_fs.grad, 1e-5)


@pytest.mark.parametrize("exponent", [1e4, 1e30])
def test_large_exponents_are_accurate(exponent, backend):
    """Large alpha, beta: Q^alpha is evaluated from logsigmoid, so a P (or 1 - P) that rounds to
    1 in float32 still gives (1 - 2^-30)^alpha, not 1^alpha = 1. 1e4: the float64 reference's loss
    and gradient (the float32 powers of a rounded P were 6e-5 and 5e-4 off); 1e30 (the top of the
    range): finite, float32 as float64."""
    s = 30 * torch.randn(2, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    s[0, 0] = -200.0  # 1 - P = 1 exactly: 1^alpha
    boxes = torch.tensor([[[0.0, 0.0, 64.0, 64.0]]] * 2)
    ref_s = s.clone().requires_grad_()
    ref = R.cass_loss(ref_s, boxes, feat_size=(7, 10), alpha=exponent, beta=exponent)
    ref.backward()
    out = {}
    for dtype in (torch.float64, torch.float32):
        x = s.detach().clone().to(dtype).to(DEVICE).requires_grad_()
        loss = fl.cass_loss(x, boxes.to(DEVICE), feat_size=(7, 10), alpha=exponent,
                            beta=exponent, backend=backend)  # fmt: skip
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        out[dtype] = loss, x.grad
        if exponent < 1e10:  # beyond, float64's own rounding of 1 - P moves the reference
            assert_scalar_close(loss, ref, 1e-5)
            assert_grad_close(x.grad, ref_s.grad, 1e-5)
    (l32, g32), (l64, g64) = out[torch.float32], out[torch.float64]
    assert_scalar_close(l32, l64, 1e-5)
    # (float32 flushes the gradients below 1e-38 to 0)
    assert torch.allclose(g32.double().cpu(), g64.cpu(), rtol=1e-5, atol=1e-30)


def test_list_of_boxes_traces_under_torch_compile(backend):
    """docs/spec.md 10.6: the list form of boxes traces with fullgraph=True."""
    b0 = torch.tensor([[30.0, 20.0, 200.0, 150.0]], device=DEVICE)
    b1 = torch.zeros(0, 4, device=DEVICE)
    s = torch.randn(2, 6, generator=torch.Generator().manual_seed(6)).to(DEVICE).requires_grad_()

    def fn(x):
        return fl.cass_loss(x, [b0, b1], feat_size=(7, 10), backend=backend)

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    out = compiled(s)
    (g,) = torch.autograd.grad(out, s)
    want = fn(s)
    (g_want,) = torch.autograd.grad(want, s)
    assert torch.equal(out, want)
    assert torch.equal(g, g_want)


def test_empty_batch_is_zero(backend):
    assert fl.cass_loss(torch.zeros(0, 6, device=DEVICE), [], feat_size=(7, 10),
                        backend=backend).item() == 0.0  # fmt: skip
    assert fl.cass_soft_target([], (7, 10), backend=backend).shape == (0, 1, 2, 3)
    scores = torch.zeros(0, 6, device=DEVICE, requires_grad=True)
    loss = fl.cass_loss(scores, torch.zeros(0, 2, 4, device=DEVICE), feat_size=(7, 10),
                        backend=backend)  # fmt: skip
    assert loss.item() == 0.0
    loss.backward()
    assert scores.grad.shape == (0, 6)
    assert fl.cass_soft_target(torch.zeros(0, 2, 4), (7, 10), backend=backend).shape == (0, 1, 2, 3)


def test_list_of_boxes_equals_padded_tensor_with_mask(backend):
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 6, generator=g).to(DEVICE)
    lists = [torch.rand(k, 4, generator=g) * 200 for k in (2, 0, 3)]
    for bx in lists:
        bx[:, 2:] += bx[:, :2]
    padded = torch.zeros(3, 3, 4)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    for i, bx in enumerate(lists):
        padded[i, : len(bx)] = bx
        mask[i, : len(bx)] = True
    a = fl.cass_loss(scores, [bx.to(DEVICE) for bx in lists], feat_size=(7, 10), backend=backend)
    b = fl.cass_loss(scores, padded.to(DEVICE), mask.to(DEVICE), feat_size=(7, 10),
                     backend=backend)  # fmt: skip
    assert torch.equal(a, b)


def test_int_box_mask_and_module_form(backend):
    sc = scene(2, 4, (7, 10), "masked", seed=9)
    scores = torch.randn(2, 1, 2, 3, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    boxes, mask = sc["boxes"].float().to(DEVICE), sc["box_mask"].to(DEVICE)
    a = fl.CASSLoss(backend=backend)(scores, boxes, mask.int(), feat_size=(7, 10))
    b = fl.cass_loss(scores, boxes, mask, feat_size=(7, 10), backend=backend)
    assert torch.equal(a, b)


def test_non_contiguous_scores_and_boxes_without_grad_flow(backend):
    sc = scene(2, 5, (13, 6), "random", seed=11)
    boxes = sc["boxes"].float().to(DEVICE).requires_grad_()
    g = torch.Generator().manual_seed(11)
    base = torch.randn(2, 1, 2, 4, generator=g, dtype=torch.float64)
    x = base.to(DEVICE).transpose(2, 3).requires_grad_()  # [2, 1, 4, 2]: the 4 x 2 patch grid
    assert not x.is_contiguous()
    loss = fl.cass_loss(x, boxes, feat_size=(13, 6), stride=STRIDE, backend=backend)
    ref_x = base.transpose(2, 3).contiguous().requires_grad_()
    ref = R.cass_loss(ref_x, sc["boxes"].float(), feat_size=(13, 6), stride=STRIDE)
    ref.backward()
    loss.backward()
    assert_scalar_close(loss, ref, 1e-12)
    assert_grad_close(x.grad, ref_x.grad, 1e-12)
    assert boxes.grad is None


def test_non_contiguous_flat_scores(backend):
    base = torch.randn(6, 3, generator=torch.Generator().manual_seed(12))
    x = base.t().to(DEVICE)  # [3, 6], not contiguous
    assert not x.is_contiguous()
    boxes = torch.tensor([[[30.0, 20.0, 160.0, 90.0]]] * 3, device=DEVICE)
    a = fl.cass_loss(x, boxes, feat_size=(7, 10), backend=backend)
    b = fl.cass_loss(x.contiguous(), boxes, feat_size=(7, 10), backend=backend)
    assert torch.allclose(a, b, rtol=1e-6, atol=0)


def test_scores_without_grad(backend):
    scores = torch.randn(1, 6, device=DEVICE)
    boxes = torch.tensor([[[30.0, 20.0, 160.0, 90.0]]], device=DEVICE)
    loss = fl.cass_loss(scores, boxes, feat_size=(7, 10), backend=backend)
    assert not loss.requires_grad and torch.isfinite(loss)


@pytest.mark.parametrize("scale", [30.0, 1e4])
@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_extreme_logits_stay_finite_and_exact(scale, eps, backend):
    g = torch.Generator().manual_seed(13)
    s = scale * torch.randn(2, 6, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[[30.0, 20.0, 200.0, 150.0]]] * 2, dtype=torch.float64)
    ref_s = s.clone().requires_grad_()
    ref = R.cass_loss(ref_s, boxes, feat_size=(7, 10), eps=eps)
    ref.backward()
    for dtype in (torch.float64, torch.float32):
        x = s.detach().clone().to(dtype).to(DEVICE).requires_grad_()
        loss = fl.cass_loss(
            x, boxes.to(dtype).to(DEVICE), feat_size=(7, 10), eps=eps, backend=backend
        )
        loss.backward()
        assert_scalar_close(loss, ref, 1e-5)
        assert torch.isfinite(x.grad).all()
        if dtype == torch.float64:  # float32 flushes the tiny tail gradients to 0
            assert_grad_close(x.grad, ref_s.grad, 1e-5)


@pytest.mark.parametrize(
    "opts",
    [
        dict(alpha=0.0, beta=0.0),
        dict(alpha=0.5, beta=1e-300),
        dict(expansion_ratio=0.0),
        dict(min_size=0.0),
        dict(small_target_gain=1.0, base_sigma=3.0),
        dict(small_target_threshold=0.0),
        dict(reduction="sum"),
        dict(stride=8.0, patch_size=1),
        dict(patch_size=64),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_options_match_reference(opts, backend):
    sc = scene(2, 6, (9, 11), "edges", seed=21)
    stride = opts.pop("stride", STRIDE)
    boxes = sc["boxes"] * (stride / STRIDE)  # float64: Y to float64 rounding on both sides
    _, _, hp, wp = patch_grid((9, 11), opts.get("patch_size", 4))
    s = 2 * torch.randn(
        2, hp * wp, generator=torch.Generator().manual_seed(22), dtype=torch.float64
    )
    ref_s = s.clone().requires_grad_()
    ref = R.cass_loss(ref_s, boxes, feat_size=(9, 11), stride=stride, **opts)
    ref.backward()
    x = s.clone().to(DEVICE).requires_grad_()
    loss = fl.cass_loss(x, boxes.to(DEVICE), feat_size=(9, 11), stride=stride, backend=backend,
                        **opts)  # fmt: skip
    loss.backward()
    assert_scalar_close(loss, ref, 1e-10)
    assert_grad_close(x.grad, ref_s.grad, 1e-10)


# ------------------------------------------------------------------------------ soft focal loss


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 1, 4, 6), (2, 3, 2, 2, 2)])
@pytest.mark.parametrize("eps", [1e-8, 0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_soft_focal_loss_matches_reference(shape, eps, reduction, backend):
    g = torch.Generator().manual_seed(len(shape))
    s = 3 * torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.rand(*shape, generator=g, dtype=torch.float64)
    y[..., 0] = 1.0
    for dtype in (torch.float32, torch.float64):
        loss_tol, grad_tol = TOLERANCES[dtype]
        ref_s = s.to(dtype).double().requires_grad_()
        ref = R.soft_focal_loss(ref_s, y.to(dtype).double(), eps=eps, reduction=reduction)
        ref.backward()
        x = s.to(dtype).to(DEVICE).requires_grad_()
        loss = fl.soft_focal_loss(x, y.to(dtype).to(DEVICE), eps=eps, reduction=reduction,
                                  backend=backend)  # fmt: skip
        loss.backward()
        assert loss.dtype == dtype
        assert_scalar_close(loss, ref, loss_tol)
        assert_grad_close(x.grad, ref_s.grad, grad_tol)


def test_soft_focal_loss_reads_strided_views(backend):
    """A 1-D view with stride 2 (``x[1::2]``) or 0 (``expand``) of the logits or the target: the
    triton launcher's ``reshape(-1)`` kept the view and the kernel read it as contiguous (the
    loss of [1, 2, 3] against 0 came out 0.566 instead of 1.388)."""
    g = torch.Generator().manual_seed(12)
    base_s = 3 * torch.randn(14, generator=g, dtype=torch.float64)
    base_y = torch.rand(14, generator=g, dtype=torch.float64)
    views = [
        (lambda a: a[1::2], lambda a: a[:7]),
        (lambda a: a[:7], lambda a: a[::2]),
        (lambda a: a[:1].expand(7), lambda a: a[3:4].expand(7)),
    ]
    for sv, yv in views:
        ref_s = sv(base_s).detach().requires_grad_()
        ref = R.soft_focal_loss(ref_s, yv(base_y))
        (ref_g,) = torch.autograd.grad(ref, ref_s)
        s_dev, y_dev = base_s.float().to(DEVICE), base_y.float().to(DEVICE)
        x = sv(s_dev).detach().requires_grad_()
        assert not sv(s_dev).is_contiguous() or not yv(y_dev).is_contiguous()
        loss = fl.soft_focal_loss(x, yv(y_dev), backend=backend)
        (gx,) = torch.autograd.grad(loss, x)
        assert_scalar_close(loss, ref, TOLERANCES[torch.float32][0])
        assert_grad_close(gx, ref_g, TOLERANCES[torch.float32][1])


def test_soft_focal_tiny_exponents_at_saturated_logits_match_the_reference(backend):
    """alpha, beta = 1e-40 at s = +-1e4: the powers are exp(a logsigmoid(+-s)) = 1 (spec 10.3.1).
    The float64 reference formed them as sigmoid(+-s) ** a, 0 ** 1e-40 = 0 with a NaN gradient,
    so it disagreed with both backends there."""
    s = torch.tensor([1e4, -1e4, 3.0, -2.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 0.3, 0.6], dtype=torch.float64)
    ref_s = s.clone().requires_grad_()
    ref = R.soft_focal_loss(ref_s, y, alpha=1e-40, beta=1e-40, eps=0.0, reduction="sum")
    (ref_g,) = torch.autograd.grad(ref, ref_s)
    assert torch.isfinite(ref_g).all()
    # closed form (eps 0): the exponents make every power 1, f = -y log P - (1 - y) log(1 - P)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="sum")
    assert_scalar_close(ref, bce, 1e-12)
    x = s.to(DEVICE).requires_grad_()
    loss = fl.soft_focal_loss(x, y.to(DEVICE), alpha=1e-40, beta=1e-40, eps=0.0, reduction="sum",
                              backend=backend)  # fmt: skip
    (gx,) = torch.autograd.grad(loss, x)
    assert_scalar_close(loss, ref, 1e-12)
    assert_grad_close(gx, ref_g, 1e-12)


def test_soft_focal_module_and_empty_input(backend):
    x = torch.randn(4, 3, device=DEVICE)
    y = torch.rand(4, 3, device=DEVICE)
    assert torch.equal(
        fl.SoftFocalLoss(alpha=1.0, backend=backend)(x, y),
        fl.soft_focal_loss(x, y, alpha=1.0, backend=backend),
    )
    empty = torch.zeros(0, 3, device=DEVICE, requires_grad=True)
    loss = fl.soft_focal_loss(empty, torch.zeros(0, 3, device=DEVICE), backend=backend)
    assert loss.item() == 0.0
    loss.backward()
    assert empty.grad.shape == (0, 3)


def test_soft_focal_refuses_a_target_with_grad():
    x = torch.randn(4)
    y = torch.rand(4, requires_grad=True)
    with pytest.raises(ValueError, match="target"):
        fl.soft_focal_loss(x, y)
    fl.soft_focal_loss(x, y.detach())


# --------------------------------------------------------------------------------- launch count


@pytest.mark.skipif(DEVICE == "cpu" and not fl.backend.interpreter_on(), reason="needs triton")
def test_triton_launches_forward_two_backward_one():
    sc = scene(4, 10, (20, 20), "random", seed=30)
    x = torch.randn(4, 25, device=DEVICE, requires_grad=True)
    boxes = sc["boxes"].float().to(DEVICE)
    reset_launch_count()
    loss = fl.cass_loss(x, boxes, feat_size=(20, 20), backend="triton")
    assert launch_count() == 2
    loss.backward()
    assert launch_count() == 3
    reset_launch_count()
    fl.cass_soft_target(boxes, (20, 20), backend="triton")
    assert launch_count() == 1


# ------------------------------------------------------------------------------------ bad input


def _call(**changes):
    args = dict(
        scores=torch.zeros(2, 6), boxes=torch.zeros(2, 3, 4), box_mask=None, feat_size=(7, 10)
    )
    opts = {k: changes.pop(k) for k in list(changes) if k not in args}
    args.update(changes)
    return fl.cass_loss(
        args["scores"], args["boxes"], args["box_mask"], feat_size=args["feat_size"], **opts
    )


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (
            dict(scores=torch.zeros(2, 7)),
            ValueError,
            r"scores: expected \[B, 6\] or \[B, 1, 2, 3\]",
        ),
        (dict(scores=torch.zeros(2, 1, 3, 2)), ValueError, "patch_size 4"),
        (dict(scores=torch.zeros(2, 6, dtype=torch.long)), TypeError, "scores"),
        (dict(boxes=torch.zeros(2, 3, 5)), ValueError, "boxes"),
        (dict(boxes=torch.zeros(3, 3, 4)), ValueError, "boxes"),
        (dict(boxes=torch.zeros(2, 3, 4, dtype=torch.cfloat)), TypeError, "boxes"),
        (dict(box_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "box_mask"),
        (dict(box_mask=torch.ones(2, 3)), TypeError, "box_mask"),
        (dict(boxes=[torch.zeros(1, 4)]), ValueError, "boxes"),
        (dict(boxes=[torch.zeros(1, 4), torch.zeros(2, 3)]), ValueError, r"boxes\[1\]"),
        (dict(boxes=[torch.zeros(1, 4)] * 2, box_mask=torch.ones(2, 1)), ValueError, "box_mask"),
        (dict(feat_size=(7,)), ValueError, "feat_size"),
        (dict(feat_size=(0, 10)), ValueError, "feat_size"),
        (dict(feat_size=7), TypeError, "feat_size"),
        (dict(patch_size=0), ValueError, "patch_size"),
        (dict(patch_size=2.0), ValueError, "patch_size"),
        (dict(stride=0.0), ValueError, "stride"),
        (dict(stride=float("inf")), ValueError, "stride"),
        (dict(stride=1e-50), ValueError, "stride"),
        (dict(eps=1e300), ValueError, "eps"),
        (dict(base_sigma=0.0), ValueError, "base_sigma"),
        (dict(small_target_gain=0.0), ValueError, "small_target_gain"),
        (dict(small_target_gain=1e30), ValueError, "small_target_gain"),
        (dict(expansion_ratio=-0.1), ValueError, "expansion_ratio"),
        (dict(min_size=float("nan")), ValueError, "min_size"),
        (dict(small_target_threshold=-1.0), ValueError, "small_target_threshold"),
        (dict(alpha=-1.0), ValueError, "alpha"),
        (dict(beta=float("inf")), ValueError, "beta"),
        (dict(alpha=1e39), ValueError, r"alpha: expected a number in \[0, 1e\+30\]"),
        (dict(beta=1e31), ValueError, r"beta: expected a number in \[0, 1e\+30\]"),
        (dict(expansion_ratio=1e39), ValueError, r"expansion_ratio: .*1e\+30"),
        (dict(min_size=1e31), ValueError, r"min_size: .*1e\+30"),
        (dict(small_target_threshold=1e300), ValueError, r"small_target_threshold: .*1e\+30"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(decay="cosine"), ValueError, "decay"),
        (dict(merge="mean"), ValueError, "merge"),
        (dict(loss="bce"), ValueError, "loss"),
        (dict(reduction="none"), ValueError, "reduction"),
        (dict(anisotropic=1), TypeError, "anisotropic"),
        (dict(sigma=1.0), TypeError, "sigma"),
    ],
    ids=lambda v: str(v)[:40] if not isinstance(v, dict) else ",".join(v),
)
def test_bad_input_is_named(changes, error, match):
    with pytest.raises(error, match=match):
        _call(**changes)


def test_bad_input_of_target_and_soft_focal():
    with pytest.raises(ValueError, match="boxes"):
        fl.cass_soft_target(torch.zeros(2, 4), (7, 10))
    with pytest.raises(ValueError, match="feat_size"):
        fl.cass_soft_target(torch.zeros(1, 2, 4), (7, -1))
    with pytest.raises(ValueError, match="target"):
        fl.soft_focal_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="logits"):
        fl.soft_focal_loss(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="reduction"):
        fl.soft_focal_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="none")


# ------------------------------------------------------------------- confident logits (10.3)

# |s| up to 30, each logit in its own loss (so that its term is the whole value): Y = 0 is an image
# without boxes (the negative term over every patch, 10.4), Y = 1 a box covering the map. beta = 2
# where the default beta = 4 would take a confident negative's P^4 log(1 - P + eps) below float32's
# normal range (s < -16: the float64 value itself is then not a float32).
CONFIDENT = [9.0, 12.0, 16.0, 20.0, 25.0, 30.0]


@pytest.mark.parametrize("loss", ["focal", "mse"])
@pytest.mark.parametrize("y", [0, 1])
@pytest.mark.parametrize("logit", [-v for v in CONFIDENT] + CONFIDENT)
def test_confident_logits_keep_float32_accuracy(logit, y, loss, backend):
    """docs/spec.md 10.3: log(P + eps), log(1 - P + eps) and P - Y are formed from the logit,
    not from a P rounded near 1 (which gave 9e-3 relative at s = 12, 1e-1 at 16): loss and
    gradient within spec 6's float32 tolerance of the float64 reference, also for an empty image."""
    boxes = torch.zeros(2, 0, 4) if y == 0 else torch.tensor([[[0.0, 0.0, 320.0, 224.0]]] * 2)
    beta = 2.0 if y == 0 and logit < -16 else 4.0
    opts = dict(feat_size=(7, 10), loss=loss, beta=beta)
    s = torch.full((2, 6), logit) + torch.tensor([0.0, 0.25, -0.5, 0.75, -1.0, 0.125])
    ref_s = s.double().requires_grad_()
    ref = R.cass_loss(ref_s, boxes, **opts)
    ref.backward()
    x = s.clone().to(DEVICE).requires_grad_()
    out = fl.cass_loss(x, boxes.to(DEVICE), backend=backend, **opts)
    out.backward()
    loss_tol, grad_tol = TOLERANCES[torch.float32]
    assert_scalar_close(out, ref, loss_tol)
    assert_grad_close(x.grad, ref_s.grad, grad_tol, "grad scores")


@pytest.mark.parametrize("y", [0.0, 1.0])
@pytest.mark.parametrize("logit", [-30.0, -12.0, 12.0, 30.0])
def test_soft_focal_confident_logits_keep_float32_accuracy(logit, y, backend):
    """The same for soft_focal_loss (alpha = beta = 2: every value here is a normal float32)."""
    s = torch.full((3, 5), logit) + torch.linspace(-1, 1, 15).reshape(3, 5)
    t = torch.full((3, 5), y)
    ref_s = s.double().requires_grad_()
    ref = R.soft_focal_loss(ref_s, t.double(), alpha=2.0, beta=2.0)
    ref.backward()
    x = s.clone().to(DEVICE).requires_grad_()
    out = fl.soft_focal_loss(x, t.to(DEVICE), alpha=2.0, beta=2.0, backend=backend)
    out.backward()
    assert_scalar_close(out, ref, 1e-5)
    assert_grad_close(x.grad, ref_s.grad, 1e-5, "grad logits")


def test_reference_is_exact_for_confident_logits():
    """The oracle itself (float64) forms the logs and P - Y from 1 - P = sigmoid(-s): checked
    against the formula in 50-digit arithmetic where the plain float64 P - Y loses 1e-3."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    for logit in (-30.0, -12.0, 12.0, 30.0):
        for y in (0.0, 1.0, 0.3):
            p = 1 / (1 + mp.e ** (-mp.mpf(logit)))
            focal = -y * (1 - p) ** 2 * mp.log(p + 1e-8) - (1 - y) * p**4 * mp.log(1 - p + 1e-8)
            s = torch.tensor([logit], dtype=torch.float64)
            t = torch.tensor([y], dtype=torch.float64)
            got_focal = float(R.soft_focal_loss(s, t))
            got_mse = float(R.soft_mse_loss(s, t))
            assert abs(got_focal - focal) <= 1e-12 * abs(focal)
            assert abs(got_mse - (p - y) ** 2) <= 1e-12 * (p - y) ** 2


# ------------------------------------------------------------------- box dtype of the oracle


@pytest.mark.parametrize("box_dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_reference_box_arithmetic_is_float32_for_other_dtypes(box_dtype, backend):
    """docs/spec.md 10.1: half-precision and integer boxes are evaluated in float32, by the
    reference as by the library (it built Y in float16 and returned it, 7.5e-3 off)."""
    g = torch.Generator().manual_seed(0)
    boxes = (torch.rand(2, 8, 4, generator=g) * 13 * 7.3).to(box_dtype)
    opts = dict(stride=7.3, patch_size=1)
    ref = R.cass_soft_target(boxes, (13, 13), **opts)
    assert ref.dtype == torch.float32
    assert torch.equal(ref, R.cass_soft_target(boxes.float(), (13, 13), **opts))
    got = fl.cass_soft_target(boxes.to(DEVICE), (13, 13), backend=backend, **opts).cpu()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-6)


# -------------------------------------------------------------------------- requires_grad


def test_loss_requires_grad_only_through_the_scores(backend):
    """The boxes get no gradient (10.1), so boxes that require grad do not make the loss require
    grad (the triton backend's did, the torch backend's not); the scores do, on both."""
    boxes = torch.tensor([[[30.0, 20.0, 160.0, 90.0]]], device=DEVICE, requires_grad=True)
    mask = torch.ones(1, 1, device=DEVICE)
    scores = torch.randn(1, 6, device=DEVICE)
    loss = fl.cass_loss(scores, boxes, mask.long(), feat_size=(7, 10), backend=backend)
    assert not loss.requires_grad
    scores.requires_grad_()
    loss = fl.cass_loss(scores, boxes, feat_size=(7, 10), backend=backend)
    assert loss.requires_grad
    loss.backward()
    assert boxes.grad is None and scores.grad is not None


# ------------------------------------------------------------------------- bool coordinates


@pytest.mark.parametrize("as_list", [False, True])
def test_bool_boxes_are_refused(as_list):
    """Boxes are pixel coordinates: a bool tensor (read as 0/1 pixels before) is a TypeError
    naming the argument, before any kernel."""
    boxes = torch.ones(2, 3, 4, dtype=torch.bool)
    name = r"boxes\[0\]" if as_list else "boxes"
    arg = list(boxes) if as_list else boxes
    with pytest.raises(TypeError, match=rf"^{name}: expected a floating or integer tensor"):
        fl.cass_loss(torch.zeros(2, 6), arg, feat_size=(7, 10))
    with pytest.raises(TypeError, match=rf"^{name}: .*torch.bool"):
        fl.cass_soft_target(arg, (7, 10))


# ------------------------------------------------------------------------- registry (12.1)


@pytest.mark.parametrize("name", ["CASSLoss", "SoftFocalLoss"])
def test_registry_entry_refuses_weight_avg_factor_and_reduction_override(name, backend):
    """docs/spec.md 12.1: a call's weight, avg_factor or reduction_override is not offered: a
    ValueError naming it (it was Python's "unexpected keyword argument" TypeError)."""
    loss = build_loss({"type": name, "backend": backend})
    if name == "CASSLoss":
        args, kw = (
            (torch.randn(2, 6), torch.tensor([[[0.0, 0.0, 90.0, 70.0]]] * 2)),
            {"feat_size": (7, 10)},
        )
    else:
        args, kw = (torch.randn(2, 6), torch.rand(2, 6)), {}
    for key, value in (
        ("weight", torch.ones(2, 6)),
        ("avg_factor", 2.0),
        ("reduction_override", "sum"),
        ("reduction_override", "none"),
    ):
        with pytest.raises(ValueError, match=rf"^{key}: not offered by {name} \(it normalises"):
            loss(*args, **kw, **{key: value})
    # None (and the built reduction) are what the call gives without them
    expect = loss(*args, **kw)
    same = loss(*args, **kw, weight=None, avg_factor=None, reduction_override="mean")
    assert torch.equal(same, expect)


@pytest.mark.parametrize("name", ["CASSLoss", "SoftFocalLoss"])
def test_registry_entry_offers_the_modules_reduction(name, backend):
    """docs/spec.md 10.1 / 12.1: CASSLoss and SoftFocalLoss have a reduction option ("mean" or
    "sum"); their registry entries pass it on (a config's reduction="sum" was refused)."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 6, generator=g, dtype=torch.float64)
    if name == "CASSLoss":
        boxes = torch.tensor([[[0.0, 0.0, 90.0, 70.0]]] * 2, dtype=torch.float64)
        args, kw = (s, boxes), {"feat_size": (7, 10)}
        ref = R.cass_loss(s, boxes, feat_size=(7, 10), reduction="sum")
    else:
        t = torch.rand(2, 6, generator=g, dtype=torch.float64)
        args, kw = (s, t), {}
        ref = R.soft_focal_loss(s, t, reduction="sum")
    loss = build_loss({"type": name, "reduction": "sum", "loss_weight": 2.0, "backend": backend})
    assert_scalar_close(loss(*args, **kw), 2.0 * ref, 1e-12)
    for bad in ("none", "batchmean"):
        with pytest.raises(ValueError, match=r"^reduction: expected one of \['mean', 'sum'\]"):
            build_loss({"type": name, "reduction": bad})
    with pytest.raises(ValueError, match=rf"^avg_factor: not offered by {name}"):
        build_loss({"type": name, "avg_factor": 4.0})
