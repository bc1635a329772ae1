"""Triton-specific tests of the fused gap-detection loss (and its kernels' launch budget).

On a machine without CUDA they run the same kernels through Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set here before triton is imported in case conftest has not); the tests
marked ``gpu`` need CUDA (half precision parity, CUDA-graph capture, torch.compile).
"""

import dataclasses
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

pytest.importorskip("triton")

import triton
import triton.language as tl
from fused_losses.kernels import primitives
from fused_losses.kernels.launch import launch_count, reset_launch_count
from fused_losses.reference.cases import gap_case

import fused_losses
from fused_losses import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
COMPONENTS = ("heatmap_gap", "heatmap_piece", "offset", "angle", "hard_negative")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num / den if den > 0 else num


def triton_loss(case, dtype=torch.float32, **opts):
    """(total, components, grads) of the triton backend, and the float64 reference on the same
    (rounded) inputs."""
    c = case.to(dtype, DEVICE, requires_grad=True)
    total, comps = fused_losses.gap_detection_loss(
        *c.args(), return_components=True, backend="triton", **opts
    )
    grads = torch.autograd.grad(total, c.predictions())
    r = case.to(dtype).to(torch.float64, requires_grad=True)
    ref_total, ref_comps = reference.gap_detection_loss(*r.args(), return_components=True, **opts)
    ref_grads = torch.autograd.grad(ref_total, r.predictions())
    return (total, comps, grads), (ref_total, ref_comps, ref_grads)


def check_parity(ours, ref, loss_tol, grad_tol):
    total, comps, grads = ours
    ref_total, ref_comps, ref_grads = ref
    assert torch.isfinite(total)
    assert rel_err(total, ref_total) <= loss_tol
    for name in COMPONENTS:
        assert abs(comps[name].item() - ref_comps[name].item()) <= loss_tol * max(
            abs(ref_comps[name].item()), 1e-3
        ), name
    for g, gr in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        assert rel_err(g, gr) <= grad_tol


# ------------------------------------------------------------------------------ launch budget


def _fills(prof) -> int:
    names = {"aten::fill_", "aten::zero_"}
    return sum(
        1
        for e in prof.events()
        if e.name in names and (e.cpu_parent is None or e.cpu_parent.name not in names)
    )


@pytest.mark.parametrize("padding", [None, "mask", "box"])
def test_full_loss_is_five_launches_and_no_fill(padding):
    """Forward: weights, normalize, main pass (loss partials and gradients), total; backward: the
    in-place upstream scaling."""
    c = gap_case(2, (8, 12), confusers=3, padding=padding, seed=1).to(
        torch.float32, DEVICE, requires_grad=True
    )
    upstream = torch.tensor(0.7, device=DEVICE)
    reset_launch_count()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        total = fused_losses.gap_detection_loss(*c.args(), backend="triton")
        assert launch_count() == 4
        torch.autograd.grad(total, c.predictions(), grad_outputs=upstream)
    launches, fills = launch_count(), _fills(prof)
    assert launches == 5, launches
    assert fills == 0, fills


@pytest.mark.parametrize("per_image", [False, True])
def test_forward_only_is_four_launches(per_image):
    """4 launches, the per-image totals included (they come from the same partial sums)."""
    c = gap_case(3, (8, 12), confusers=2, seed=2).to(torch.float32, DEVICE)
    reset_launch_count()
    with torch.no_grad():
        fused_losses.gap_detection_loss(*c.args(), return_per_image=per_image, backend="triton")
    assert launch_count() == 4


# ------------------------------------------------------------------- stored vs recomputed gradients


def _grads_vs_reference(case, c, grads, upstream, tol):
    r = case.to(c.heatmap_gap.dtype).to(torch.float64, requires_grad=True)
    ref = reference.gap_detection_loss(*r.args())
    ref_grads = torch.autograd.grad(ref, r.predictions(), grad_outputs=upstream.double().cpu())
    for g, gr in zip(grads, ref_grads):
        assert g.dtype == c.heatmap_gap.dtype
        assert rel_err(g, gr) <= tol


def test_retained_graph_backward_twice_with_different_upstream():
    """The first backward scales the forward's gradients in place; a second one through the
    retained graph must not compound that scaling (it recomputes)."""
    case = gap_case(2, (9, 14), confusers=3, padding="mask", seed=11)
    c = case.to(torch.float32, DEVICE, requires_grad=True)
    total = fused_losses.gap_detection_loss(*c.args(), backend="triton")
    for upstream in (0.5, 3.0, 1.0, 0.0):
        up = torch.tensor(upstream, device=DEVICE)
        reset_launch_count()
        grads = torch.autograd.grad(total, c.predictions(), grad_outputs=up, retain_graph=True)
        assert launch_count() == 1
        if upstream == 0.0:
            assert all(torch.count_nonzero(g) == 0 for g in grads)
        else:
            _grads_vs_reference(case, c, grads, up, 1e-5)


def test_backward_accumulates_into_grad():
    """loss.backward() twice over two forwards: .grad holds the sum (stored gradients are handed
    to autograd, not reused)."""
    case = gap_case(2, (9, 14), confusers=2, padding="box", seed=12)
    c = case.to(torch.float32, DEVICE, requires_grad=True)
    for _ in range(2):
        fused_losses.gap_detection_loss(*c.args(), backend="triton").backward()
    r = case.to(torch.float32).to(torch.float64, requires_grad=True)
    reference.gap_detection_loss(*r.args()).backward()
    for x, xr in zip(c.predictions(), r.predictions()):
        assert rel_err(x.grad, 2 * xr.grad) <= 1e-5


def test_only_some_predictions_need_grad():
    case = gap_case(2, (9, 14), confusers=2, padding="mask", seed=13)
    c = case.to(torch.float32, DEVICE, requires_grad=True)
    c.heatmap_piece.requires_grad_(False)
    c.angle.requires_grad_(False)
    total = fused_losses.gap_detection_loss(*c.args(), backend="triton")
    grads = torch.autograd.grad(total, (c.heatmap_gap, c.offset))
    r = case.to(torch.float32).to(torch.float64, requires_grad=True)
    ref_grads = torch.autograd.grad(
        reference.gap_detection_loss(*r.args()), (r.heatmap_gap, r.offset)
    )
    for g, gr in zip(grads, ref_grads):
        assert rel_err(g, gr) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_are_computed_in_backward(dtype):
    """float16/bfloat16 predictions: the forward writes no gradient (4 launches), the backward
    recomputes them with the upstream gradient (1 launch), e.g. a large loss scale."""
    case = gap_case(2, (9, 14), confusers=2, padding="mask", seed=14)
    c = case.to(dtype, DEVICE, requires_grad=True)
    reset_launch_count()
    total = fused_losses.gap_detection_loss(*c.args(), backend="triton")
    assert launch_count() == 4
    up = torch.tensor(1024.0, device=DEVICE)
    grads = torch.autograd.grad(total, c.predictions(), grad_outputs=up)
    assert launch_count() == 5
    _grads_vs_reference(case, c, grads, up, 1e-2)


def test_double_backward_raises():
    c = gap_case(1, (8, 12), confusers=1, seed=15).to(torch.float32, DEVICE, requires_grad=True)
    total = fused_losses.gap_detection_loss(*c.args(), backend="triton")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(total, c.predictions(), create_graph=True)


# ------------------------------------------------------------------------------ determinism


def test_bitwise_run_to_run_determinism():
    case = gap_case(3, (17, 33), confusers=3, padding="mask", from_logits=True, seed=3)
    runs = []
    for _ in range(2):
        c = case.to(torch.float32, DEVICE, requires_grad=True)
        total, comps = fused_losses.gap_detection_loss(
            *c.args(), return_components=True, from_logits=True, backend="triton"
        )
        runs.append((total, comps, torch.autograd.grad(total, c.predictions())))
    (t0, c0, g0), (t1, c1, g1) = runs
    assert torch.equal(t0, t1)
    assert all(torch.equal(c0[k], c1[k]) for k in COMPONENTS)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_random_upstream_gradient():
    case = gap_case(2, (9, 16), confusers=2, padding="box", seed=4)
    upstream = torch.randn((), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    c = case.to(torch.float32, DEVICE, requires_grad=True)
    total = fused_losses.gap_detection_loss(*c.args(), backend="triton")
    grads = torch.autograd.grad(total, c.predictions(), grad_outputs=upstream)
    r = case.to(torch.float32).to(torch.float64, requires_grad=True)
    ref = reference.gap_detection_loss(*r.args())
    ref_grads = torch.autograd.grad(ref, r.predictions(), grad_outputs=upstream.double().cpu())
    for g, gr in zip(grads, ref_grads):
        assert rel_err(g, gr) <= 1e-5


# ------------------------------------------------------------------------------ parity (float32)


PARITY = [
    # batch, (Hf, Wf), confusers, padding, from_logits
    (1, (8, 12), 0, None, False),
    (3, (17, 33), 3, None, True),
    (3, (17, 33), 3, "mask", False),
    (2, (17, 33), 3, "mask", True),
    (3, (17, 33), 0, "box", False),
    (1, (9, 16), 3, "box", True),
]


@pytest.mark.parametrize(("batch", "size", "k", "padding", "from_logits"), PARITY)
def test_parity_float32_vs_float64_reference(batch, size, k, padding, from_logits):
    case = gap_case(batch, size, confusers=k, padding=padding, from_logits=from_logits, seed=5)
    ours, ref = triton_loss(case, from_logits=from_logits)
    assert ours[0].dtype == torch.float32
    check_parity(ours, ref, 1e-5, 1e-5)


def test_parity_options_exact_center_and_weights():
    case = gap_case(2, (12, 20), confusers=3, padding="box", seed=6)
    opts = dict(
        center="exact",
        sigma=2.0,
        alpha=2.0,
        beta=3.0,
        reg_threshold=0.5,
        margin=0.4,
        w_heatmap=0.5,
        w_offset=2.0,
        w_angle=0.7,
        w_hard_negative=3.0,
    )
    ours, ref = triton_loss(case, **opts)
    check_parity(ours, ref, 1e-5, 1e-5)


@pytest.mark.parametrize("padding,from_logits", [("mask", False), ("box", True)])
def test_many_programs_per_image_and_multi_pass_finalize(monkeypatch, padding, from_logits):
    """GPU-like tiling under the interpreter (which otherwise runs one program per image): 8 cells
    per program gives 18 programs per image (blocks straddling rows, a ragged last block), and
    with 16 partial rows per finalize pass the 36 rows take 3 passes."""
    import fused_losses.kernels.gap_detection as K

    monkeypatch.setattr(K, "main_block", lambda n: (8, 4))
    monkeypatch.setattr(K, "FINALIZE_BLOCK_P", 16)
    case = gap_case(2, (9, 15), confusers=3, padding=padding, from_logits=from_logits, seed=3)
    reset_launch_count()
    ours, ref = triton_loss(case, from_logits=from_logits)
    assert launch_count() == 5
    check_parity(ours, ref, 1e-5, 1e-5)


def test_component_ops_with_many_programs(monkeypatch):
    """The focal kernels and ratio_finalize with 8 elements per program and 16 partial rows per
    finalize pass: 2 * 9 * 15 / 8 -> 34 rows, 3 passes."""
    import fused_losses.kernels.focal as KF
    import fused_losses.kernels.reduce as KR

    monkeypatch.setattr(KF, "elementwise_block", lambda n: (8, 4))
    monkeypatch.setattr(KR, "FINALIZE_BLOCK_P", 16)
    g = torch.Generator().manual_seed(4)
    pred = (torch.rand(2, 1, 9, 15, generator=g) * 0.98 + 0.01).to(DEVICE)
    target = torch.rand(2, 1, 9, 15, generator=g).to(DEVICE) ** 3
    target[0, 0, 3, 4] = target[1, 0, 8, 14] = 1.0
    weight = torch.rand(2, 1, 9, 15, generator=g).to(DEVICE)
    x = pred.clone().requires_grad_(True)
    loss = fused_losses.masked_focal_loss(x, target, weight, backend="triton")
    (grad,) = torch.autograd.grad(loss, x)
    xr = pred.double().cpu().requires_grad_(True)
    ref = reference.masked_focal_loss(xr, target.double().cpu(), weight.double().cpu())
    (ref_grad,) = torch.autograd.grad(ref, xr)
    assert rel_err(loss, ref) <= 1e-5
    assert rel_err(grad, ref_grad) <= 1e-5


def test_float64_inputs_computed_in_float64():
    # A case with an active angle term: w_angle = 0.2 rounded to fp32 would show at 1e-12.
    case = gap_case(2, (9, 16), confusers=2, padding="mask", seed=17)
    ours, ref = triton_loss(case, dtype=torch.float64)
    assert ref[1]["angle"].item() > 0.1
    assert ours[0].dtype == torch.float64
    assert all(g.dtype == torch.float64 for g in ours[2])
    check_parity(ours, ref, 1e-12, 1e-12)


KERNEL_MODULES = ("gap_detection", "focal", "regression", "hard_negative", "reduce", "labels")


def _fp32_scalar_launches(monkeypatch):
    """Launch every kernel of these modules as a GPU would: Triton types a Python float argument
    as fp32 (the interpreter passes it at full precision). Returns the list of float args seen."""
    import importlib

    import numpy as np

    seen = []
    for name in KERNEL_MODULES:
        mod = importlib.import_module(f"fused_losses.kernels.{name}")
        orig = mod.launch

        def launch32(kernel, grid, *args, _orig=orig, **kw):
            seen.extend(a for a in args if isinstance(a, float))
            args = [float(np.float32(a)) if isinstance(a, float) else a for a in args]
            return _orig(kernel, grid, *args, **kw)

        monkeypatch.setattr(mod, "launch", launch32)
    return seen


def test_float_options_reach_float64_kernels_exactly(monkeypatch):
    """Float options are passed as float64 bit patterns (launch.f64_bits), never as Python floats
    that Triton would round to fp32: with GPU-like fp32 scalar arguments simulated, the float64
    path still matches the float64 reference to 1e-12, non-default options included."""
    from fused_losses.kernels.launch import f64_bits

    for x in (0.2, 0.0, -0.0, 1e-7, 1 / 3, -2.5, 1e300, 5e-324):
        bits = f64_bits(x)
        assert isinstance(bits, int)
        assert torch.tensor([bits], dtype=torch.int64).view(torch.float64).item() == x
    seen = _fp32_scalar_launches(monkeypatch)
    case = gap_case(2, (9, 16), confusers=2, padding="box", seed=17)
    opts = dict(
        sigma=1.3,
        alpha=1.7,
        beta=3.3,
        pos_threshold=0.85,
        reg_threshold=0.6,
        margin=0.3,
        w_heatmap=0.7,
        w_offset=1.1,
        w_angle=0.2,
        w_hard_negative=0.9,
        eps=1.1e-7,
    )
    ours, ref = triton_loss(case, dtype=torch.float64, **opts)
    assert ref[1]["angle"].item() > 0.1
    check_parity(ours, ref, 1e-12, 1e-12)

    g = torch.Generator().manual_seed(3)
    f64 = dict(dtype=torch.float64, device=DEVICE)
    pred = torch.rand(2, 1, 5, 6, generator=g).to(**f64)
    target = torch.rand(2, 1, 5, 6, generator=g).to(**f64)
    focal = dict(alpha=1.3, beta=3.7, pos_threshold=0.6, eps=1.1e-7)
    loss = fused_losses.masked_focal_loss(pred, target, backend="triton", **focal)
    ref_loss = reference.masked_focal_loss(pred.cpu(), target.cpu(), **focal)
    assert rel_err(loss, ref_loss) <= 1e-12
    off = torch.rand(2, 2, 5, 6, generator=g).to(**f64)
    mask = torch.ones(2, 1, 5, 6, **f64)
    loss = fused_losses.masked_smooth_l1_loss(off, off * 0, mask, beta=0.3, backend="triton")
    ref_loss = reference.masked_smooth_l1_loss(off.cpu(), off.cpu() * 0, mask.cpu(), beta=0.3)
    assert rel_err(loss, ref_loss) <= 1e-12
    centers = torch.rand(2, 3, 2, generator=g).to(**f64) * 20
    hm = fused_losses.gaussian_heatmap(centers, (5, 6), sigma=1.3, backend="triton")
    ref_hm = reference.gaussian_heatmap(centers.cpu(), (5, 6), sigma=1.3)
    assert rel_err(hm, ref_hm) <= 1e-12
    assert seen == []


def test_non_contiguous_inputs_and_partial_requires_grad():
    case = gap_case(2, (9, 16), confusers=2, padding="mask", seed=8)
    c = case.to(torch.float32, DEVICE)
    # Channels-last style strides for the predictions, a [B,H,W] padding mask, a strided centre.
    hg = c.heatmap_gap.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    off = c.offset.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).requires_grad_()
    ang = c.angle.transpose(2, 3).contiguous().transpose(2, 3)
    gc = torch.stack([c.gap_center, c.gap_center], dim=2)[..., 0]
    pm = c.padding_mask[:, 0]
    args = (hg, c.heatmap_piece, off, ang, gc, c.piece_center, c.gap_angle, c.confusers)
    total = fused_losses.gap_detection_loss(*args, c.confuser_mask, pm, None, backend="triton")
    (g_off,) = torch.autograd.grad(total, off)
    r = case.to(torch.float32).to(torch.float64)
    r.offset.requires_grad_()
    ref = reference.gap_detection_loss(*r.args())
    (ref_off,) = torch.autograd.grad(ref, r.offset)
    assert rel_err(total, ref) <= 1e-5
    assert rel_err(g_off, ref_off) <= 1e-5


def test_edge_cases_are_finite():
    case = gap_case(2, (8, 12), confusers=3, padding="mask", seed=9)
    case.padding_mask[0] = True  # image 0 fully padded
    case.confuser_mask[1] = False  # no confuser of image 1 counts
    case.gap_center[1] = torch.tensor([-100.0, 1000.0], dtype=torch.float64)  # off the grid
    ours, ref = triton_loss(case)
    check_parity(ours, ref, 1e-5, 1e-5)


def test_component_ops_are_three_launches():
    pred = torch.rand(2, 1, 8, 12, device=DEVICE).clamp(0.01, 0.99).requires_grad_()
    target = torch.rand(2, 1, 8, 12, device=DEVICE)
    reset_launch_count()
    loss = fused_losses.masked_focal_loss(pred, target, normalize="num_pos", backend="triton")
    torch.autograd.grad(loss, pred)
    assert launch_count() == 3


# ------------------------------------------------------------------------------ GPU only


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("from_logits", [False, True])
def test_half_precision_parity(dtype, from_logits):
    case = gap_case(4, (64, 128), confusers=3, padding="mask", from_logits=from_logits, seed=10)
    ours, ref = triton_loss(case, dtype=dtype, from_logits=from_logits)
    assert ours[0].dtype == torch.float32
    assert all(g.dtype == dtype for g in ours[2])
    check_parity(ours, ref, 1e-3, 1e-2)


@gpu
@needs_cuda
def test_autocast_training_step():
    case = gap_case(2, (32, 64), confusers=2, padding="box", seed=11)
    c = case.to(torch.float32, DEVICE, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.float16):
        total = fused_losses.gap_detection_loss(*c.args(), backend="triton")
    assert total.dtype == torch.float32
    grads = torch.autograd.grad(total, c.predictions())
    r = case.to(torch.float32).to(torch.float64, requires_grad=True)
    ref = reference.gap_detection_loss(*r.args())
    assert rel_err(total, ref) <= 1e-5
    for g, gr in zip(grads, torch.autograd.grad(ref, r.predictions())):
        assert rel_err(g, gr) <= 1e-5


@gpu
@needs_cuda
def test_cuda_graph_capture_and_replay():
    crit = fused_losses.GapDetectionLoss(backend="triton")
    static = gap_case(2, (32, 64), confusers=3, padding="mask", seed=12).to(
        torch.float32, "cuda", requires_grad=True
    )

    def step():
        total = crit(*static.args())
        return (total, *torch.autograd.grad(total, static.predictions()))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    fresh = gap_case(2, (32, 64), confusers=3, padding="mask", seed=13).to(torch.float32, "cuda")
    for f in dataclasses.fields(static):  # every input, in place (the graph reads those buffers)
        dst, src = getattr(static, f.name), getattr(fresh, f.name)
        if isinstance(dst, torch.Tensor):
            dst.detach().copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    eager = fresh.to(requires_grad=True)
    e_total = crit(*eager.args())
    e_grads = torch.autograd.grad(e_total, eager.predictions())
    assert torch.equal(outs[0], e_total)
    assert all(torch.equal(a, b) for a, b in zip(outs[1:], e_grads))


@gpu
@needs_cuda
def test_torch_compile_fullgraph_training_step():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 8, 3, padding=1).cuda()
    crit = fused_losses.GapDetectionLoss(from_logits=True, backend="triton")
    case = gap_case(2, (32, 64), confusers=3, padding="box", seed=14).to(torch.float32, "cuda")
    image = torch.randn(2, 3, 32, 64, device="cuda")

    def train_step(image, gc, pc, ga, conf, cmask, box):
        out = net(image)
        return crit(
            out[:, 0:1], out[:, 1:2], out[:, 2:6], out[:, 6:8], gc, pc, ga, conf, cmask, None, box
        )

    targets = (
        case.gap_center,
        case.piece_center,
        case.gap_angle,
        case.confusers,
        case.confuser_mask,
        case.valid_box,
    )
    compiled = torch.compile(train_step, fullgraph=True)
    loss_c = compiled(image, *targets)
    loss_c.backward()
    grads_c = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    loss_e = train_step(image, *targets)
    loss_e.backward()
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for gc_, ge in zip(grads_c, (p.grad for p in net.parameters())):
        assert rel_err(gc_, ge) <= 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA variant above covers this")
def test_torch_compile_fullgraph_under_interpreter():
    """The triton backend's ops trace without graph breaks (Dynamo + AOTAutograd, fullgraph) and
    give the eager numbers; on CPU they run as opaque custom ops over the interpreted kernels."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 8, 3, padding=1)
    crit = fused_losses.GapDetectionLoss(from_logits=True, backend="triton")
    case = gap_case(2, (8, 12), confusers=2, padding="box", seed=14).to(torch.float32)
    image = torch.randn(2, 3, 8, 12)

    def train_step(image, gc, pc, ga, conf, cmask, box):
        out = net(image)
        return crit(
            out[:, 0:1], out[:, 1:2], out[:, 2:6], out[:, 6:8], gc, pc, ga, conf, cmask, None, box
        )

    targets = (
        case.gap_center,
        case.piece_center,
        case.gap_angle,
        case.confusers,
        case.confuser_mask,
        case.valid_box,
    )
    torch._dynamo.reset()
    compiled = torch.compile(train_step, fullgraph=True, backend="aot_eager")
    loss_c = compiled(image, *targets)
    loss_c.backward()
    grads_c = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    loss_e = train_step(image, *targets)
    loss_e.backward()
    assert torch.equal(loss_c, loss_e)
    for g_c, g_e in zip(grads_c, (p.grad for p in net.parameters())):
        assert rel_err(g_c, g_e) <= 1e-6


def _compile_cases(device: str) -> dict:
    """One small call per public differentiable op (and the label ops), as f(p) of one tensor."""
    g = torch.Generator().manual_seed(21)
    x = (torch.rand(2, 1, 4, 5, generator=g) * 0.9 + 0.05).to(device)
    target = torch.rand(2, 3, 1, generator=g).to(device)
    ind = torch.tensor([[0, 5, 19], [3, 3, 7]], device=device)
    box = torch.tensor([[[1.0, 1.0, 9.0, 9.0]]] * 2, device=device)
    lab = torch.zeros(2, 1, dtype=torch.long, device=device)
    pts = torch.full((2, 2), 6.0, device=device)
    fl, be = fused_losses, "triton"
    pose_t = _pose_targets(device)  # the reference's loop: outside the compiled function
    pose_kp = torch.tensor([[[[5.0, 6.0, 2.0]]], [[[11.0, 3.0, 1.0]]]], device=device)
    hom = torch.tensor([[0.96, -0.28, 9.0], [0.28, 0.96, -3.0]], device=device)
    return {
        "masked_focal_loss": lambda p: fl.masked_focal_loss(p, x, torch.ones_like(x), backend=be),
        "masked_smooth_l1_loss": lambda p: fl.masked_smooth_l1_loss(
            p.expand(2, 2, 4, 5), x.expand(2, 2, 4, 5), torch.ones_like(x), backend=be
        ),
        "masked_cosine_loss": lambda p: fl.masked_cosine_loss(
            p.expand(2, 2, 4, 5), pts[:, 0], torch.ones_like(x), backend=be
        ),
        "hard_negative_margin_loss": lambda p: fl.hard_negative_margin_loss(
            p, pts, pts[:, None] + 3.0, backend=be
        ),
        "centernet_focal_loss": lambda p: fl.centernet_focal_loss(p, (x > 0.8).float(), backend=be),
        "transpose_and_gather_feat": lambda p: (
            fl.transpose_and_gather_feat(p, ind, backend=be).square().sum()
        ),
        "reg_l1_loss": lambda p: fl.reg_l1_loss(
            p, torch.ones_like(target[..., 0]), ind, target, backend=be
        ),
        "reg_smooth_l1_loss": lambda p: fl.reg_smooth_l1_loss(
            p * 5.0, torch.ones_like(target[..., 0]), ind, target, backend=be
        ),
        "centernet_loss": lambda p: fl.centernet_loss(
            p, p.expand(2, 2, 4, 5), p.expand(2, 2, 4, 5), boxes=box, labels=lab, backend=be
        ),
        "gaussian_heatmap": lambda p: (
            fl.gaussian_heatmap(pts[:, None], (4, 5), backend=be) * p
        ).sum(),
        "gap_detection_loss[per_image]": lambda p: _gap_with_per_image(p, pts, be),
        "padding_weight": lambda p: (
            fl.padding_weight(valid_box=box[:, 0] + 2.0, size=(4, 5), backend=be) * p
        ).sum(),
        "centernet_pose_loss": lambda p: fl.centernet_pose_loss(_pose_heads(p), pose_t, backend=be),
        "centernet_pose_targets": lambda p: (
            fl.centernet_pose_targets(
                box, pose_kp, num_joints=1, output_size=(4, 5), dense_hp=True, backend=be
            )["hm_hp"]
            * p
        ).sum(),
        "cass_loss": lambda p: fl.cass_loss(
            p.reshape(2, 20)[:, :12] * 3.0, box * 20.0, feat_size=(10, 14), backend=be
        ),
        "soft_focal_loss": lambda p: fl.soft_focal_loss(p * 4.0 - 2.0, x, backend=be),
        "cass_soft_target": lambda p: (
            fl.cass_soft_target(box * 20.0, (10, 14), backend=be).reshape(2, 12)
            * p.reshape(2, 20)[:, :12]
        ).sum(),
        "boundary_label": lambda p: (
            fl.boundary_label(torch.ones(2, 16, 20, device=device).tril(), backend=be) * p
        ).sum(),
        "rord_loss": lambda p: fl.rord_loss(
            p,
            p.flip(-1),
            p.expand(2, 3, 4, 5) * 2.0,
            p.expand(2, 3, 4, 5).flip(-2),
            hom,
            num_samples=9,
            num_candidates=12,
            detach_negative=False,
            backend=be,
        ),
        "rord_detection_loss[logits,ignore]": lambda p: fl.rord_detection_loss(
            p, p.flip(-2), hom, from_logits=True, outside="ignore", backend=be
        ),
    }, x


def _pose_heads(p: torch.Tensor) -> dict:
    pair = p.expand(2, 2, 4, 5)
    return {"hm": p, "wh": pair, "reg": pair, "hps": pair, "hm_hp": p, "hp_offset": pair}


def _pose_targets(device: str) -> dict:
    """Multi-pose targets of the reference: one joint per image on the 4x5 map."""
    from fused_losses.reference.centernet_pose import centernet_pose_targets

    boxes = torch.tensor([[[1.0, 1.0, 9.0, 9.0]]] * 2)
    kp = torch.tensor([[[[5.0, 6.0, 2.0]]], [[[11.0, 3.0, 1.0]]]])
    t = centernet_pose_targets(boxes, kp, num_joints=1, output_size=(4, 5))
    return {k: v.to(device) for k, v in t.items()}


def _gap_with_per_image(p, pts, backend):
    """The total plus the (detached) per-image totals, from predictions built from ``p``."""
    heads = (p[:1].expand(2, 1, 4, 5), p[1:].expand(2, 1, 4, 5), p.expand(2, 4, 4, 5))
    total, per = fused_losses.gap_detection_loss(
        *heads,
        p.expand(2, 2, 4, 5),
        pts,
        pts + 5.0,
        pts[:, 0],
        return_per_image=True,
        backend=backend,
    )
    return total + per.sum()


def _check_compiled_matches_eager(fn, x, backend: str) -> None:
    torch._dynamo.reset()
    p = x.clone().requires_grad_()
    out = torch.compile(fn, fullgraph=True, backend=backend)(p)
    out.backward()
    q = x.clone().requires_grad_()
    ref = fn(q)
    ref.backward()
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)


COMPILE_OPS = list(_compile_cases("cpu")[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA variant below covers this")
@pytest.mark.parametrize("op", COMPILE_OPS)
def test_every_op_compiles_fullgraph_under_interpreter(op):
    """docs/spec.md 5: every public op of the triton backend traces with
    torch.compile(fullgraph=True) (Dynamo + AOTAutograd; on CPU as opaque custom ops over the
    interpreted kernels) and gives the eager value and gradient."""
    if not fused_losses.backend.interpreter_on():
        pytest.skip("needs TRITON_INTERPRET=1 with interpreted kernels")
    cases, x = _compile_cases("cpu")
    _check_compiled_matches_eager(cases[op], x, "aot_eager")


@gpu
@needs_cuda
@pytest.mark.parametrize("op", COMPILE_OPS)
def test_every_op_compiles_fullgraph_on_cuda(op):
    """The same with Inductor on a GPU."""
    cases, x = _compile_cases("cuda")
    _check_compiled_matches_eager(cases[op], x, "inductor")


@triton.jit
def _log1p_kernel(t_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    t = tl.load(t_ptr + i, mask=i < n)
    tl.store(out_ptr + i, primitives.log1p(t), mask=i < n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1p_primitive_keeps_relative_precision(dtype):
    """kernels.primitives.log1p (the focal loss's log(1 - p + eps), logsigmoid) against float64
    torch.log1p over t in (-1, 10]: tiny t of both signs, both sides of the series' switch at
    |t| = 1/4, t next to -1; relative error within a few units in the last place (the GPU's float32
    log, used for |t| >= 1/4, is accurate to ~2^-22 absolute, hence the looser float32 bound)."""
    tiny = [s * 10.0**k for k in range(-30, 0) for s in (1.0, -1.0)]
    switch = [s * (0.25 + d) for s in (1.0, -1.0) for d in (-1e-6, 0.0, 1e-6)]
    ends = [-1 + 2.0**-20, -0.999, -0.5, 0.5, 1.0, 3.0, 10.0, 0.0]
    t = torch.tensor(tiny + switch + ends, dtype=dtype, device=DEVICE)
    out = torch.empty_like(t)
    _log1p_kernel[(1,)](t, out, t.numel(), BLOCK=triton.next_power_of_2(t.numel()))
    ref = torch.log1p(t.double().cpu())
    rel = ((out.double().cpu() - ref).abs() / ref.abs().clamp_min(1e-300))[ref != 0]
    assert out[t == 0].item() == 0.0
    bound = {torch.float32: 2e-6 if torch.cuda.is_available() else 3e-7, torch.float64: 1e-15}
    assert rel.max().item() <= bound[dtype], t[ref != 0][rel.argmax()].item()
