"""Double backward (``create_graph=True``, e.g. a gradient penalty): every differentiable public op
either supports it exactly or raises a clear RuntimeError; it never drops the second-order term.

The fused losses compute their gradients analytically (not differentiable): they raise, on both
backends. ``transpose_and_gather_feat`` on the torch backend is a plain gather, differentiable to
any order: its penalty gradient must match the reference's.
"""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, DEVICE
from fused_losses.reference import centernet as RC
from fused_losses.reference import centernet_pose as RP
from fused_losses.reference.cases import gap_case

import fused_losses as fl
from fused_losses.backend import interpreter_on


def _skip_unavailable(backend: str) -> None:
    if backend == "triton" and DEVICE == "cpu" and not interpreter_on():
        pytest.skip("triton backend needs CUDA or TRITON_INTERPRET=1")


def _gap_inputs():
    c = gap_case(2, (8, 12), confusers=2, padding="mask", seed=31)
    return c.to(torch.float32, DEVICE, requires_grad=True)


def _centernet_inputs():
    g = torch.Generator().manual_seed(32)
    hm = RC.clamped_sigmoid(torch.randn(2, 3, 8, 8, generator=g) - 1).to(DEVICE)
    wh = (torch.randn(2, 2, 8, 8, generator=g) + 4).to(DEVICE)
    boxes = torch.tensor([[[2.0, 3.0, 20.0, 25.0]], [[5.0, 1.0, 12.0, 30.0]]], device=DEVICE)
    labels = torch.tensor([[1], [2]], device=DEVICE)
    return hm, wh, boxes, labels


def _ops():
    """(name, thunk(backend) -> (loss, the prediction it is differentiated in))."""

    def gap(backend):
        c = _gap_inputs()
        return fl.gap_detection_loss(*c.args(), backend=backend), c.heatmap_gap

    def focal(backend):
        c = _gap_inputs()
        y = torch.rand(c.heatmap_gap.shape, generator=torch.Generator().manual_seed(1))
        return fl.masked_focal_loss(c.heatmap_gap, y.to(DEVICE), backend=backend), c.heatmap_gap

    def smooth_l1(backend):
        c = _gap_inputs()
        m = torch.ones(2, 1, 8, 12, device=DEVICE)
        t = torch.zeros(2, 4, 1, 1, device=DEVICE)
        return fl.masked_smooth_l1_loss(c.offset, t, m, backend=backend), c.offset

    def cosine(backend):
        c = _gap_inputs()
        m = torch.ones(2, 1, 8, 12, device=DEVICE)
        return fl.masked_cosine_loss(c.angle, c.gap_angle.detach(), m, backend=backend), c.angle

    def hard_negative(backend):
        c = _gap_inputs()
        loss = fl.hard_negative_margin_loss(
            c.heatmap_gap, c.gap_center, c.confusers, c.confuser_mask, backend=backend
        )
        return loss, c.heatmap_gap

    def centernet_focal(backend):
        hm, _, boxes, labels = _centernet_inputs()
        hm.requires_grad_()
        t = fl.centernet_targets(boxes, labels, num_classes=3, output_size=(8, 8), backend="torch")
        return fl.centernet_focal_loss(hm, t["hm"], backend=backend), hm

    def reg_l1(backend):
        _, wh, boxes, labels = _centernet_inputs()
        wh.requires_grad_()
        t = fl.centernet_targets(boxes, labels, num_classes=3, output_size=(8, 8), backend="torch")
        return fl.reg_l1_loss(wh, t["reg_mask"], t["ind"], t["wh"], backend=backend), wh

    def reg_smooth_l1(backend):
        _, wh, boxes, labels = _centernet_inputs()
        wh.requires_grad_()
        t = fl.centernet_targets(boxes, labels, num_classes=3, output_size=(8, 8), backend="torch")
        return fl.reg_smooth_l1_loss(wh, t["reg_mask"], t["ind"], t["wh"], backend=backend), wh

    def pose_total(backend):
        hm, wh, boxes, _ = _centernet_inputs()
        kp = torch.tensor([[[[8.0, 9.0, 2.0]]], [[[9.0, 20.0, 2.0]]]], device=DEVICE)
        t = RP.centernet_pose_targets(boxes.cpu(), kp.cpu(), num_joints=1, output_size=(8, 8))
        t = {k: v.to(DEVICE) for k, v in t.items()}
        hm1 = hm[:, :1].clone().requires_grad_()
        heads = {"hm": hm1, "wh": wh, "reg": wh, "hps": wh, "hm_hp": hm[:, 1:2], "hp_offset": wh}
        return fl.centernet_pose_loss(heads, t, backend=backend), hm1

    def centernet_total(backend):
        hm, wh, boxes, labels = _centernet_inputs()
        hm.requires_grad_()
        reg = torch.zeros_like(wh)
        loss = fl.centernet_loss(hm, wh, reg, boxes=boxes, labels=labels, backend=backend)
        return loss, hm

    def cass(backend):
        g = torch.Generator().manual_seed(33)
        scores = torch.randn(2, 1, 3, 4, generator=g).to(DEVICE).requires_grad_()
        boxes = torch.tensor([[[40.0, 30.0, 200.0, 150.0]]] * 2, device=DEVICE)
        return fl.cass_loss(scores, boxes, feat_size=(10, 14), backend=backend), scores

    def soft_focal(backend):
        g = torch.Generator().manual_seed(34)
        logits = torch.randn(2, 7, generator=g).to(DEVICE).requires_grad_()
        return fl.soft_focal_loss(
            logits, torch.rand(2, 7, generator=g).to(DEVICE), backend=backend
        ), logits

    def rord(backend):
        g = torch.Generator().manual_seed(35)
        det = torch.rand(2, 1, 4, 5, generator=g).to(DEVICE).requires_grad_()
        desc = torch.randn(2, 3, 4, 5, generator=g).to(DEVICE)
        hom = torch.tensor([[0.96, -0.28, 9.0], [0.28, 0.96, -3.0]], device=DEVICE)
        return fl.rord_loss(
            det, det.flip(-1), desc, desc.flip(-1), hom, num_samples=9, backend=backend
        ), det

    def rord_desc(backend):
        g = torch.Generator().manual_seed(36)
        desc = torch.randn(2, 3, 4, 5, generator=g).to(DEVICE).requires_grad_()
        hom = torch.tensor([[0.96, -0.28, 9.0], [0.28, 0.96, -3.0]], device=DEVICE)
        return fl.rord_descriptor_loss(
            desc, desc.flip(-1), hom, num_samples=9, num_candidates=12, backend=backend
        ), desc

    return [
        ("gap_detection_loss", gap),
        ("rord_loss", rord),
        ("rord_descriptor_loss", rord_desc),
        ("cass_loss", cass),
        ("soft_focal_loss", soft_focal),
        ("masked_focal_loss", focal),
        ("masked_smooth_l1_loss", smooth_l1),
        ("masked_cosine_loss", cosine),
        ("hard_negative_margin_loss", hard_negative),
        ("centernet_focal_loss", centernet_focal),
        ("reg_l1_loss", reg_l1),
        ("reg_smooth_l1_loss", reg_smooth_l1),
        ("centernet_loss", centernet_total),
        ("centernet_pose_loss", pose_total),
    ]


# The op each error names (docs/spec.md 8): the public op, or (a torch-backend op whose module
# does not pass its name to PrecomputedGradient) the module and function computing it.
OP_NAMES = {
    "gap_detection_loss": r"(gap_detection_loss|fused_losses\.gap_detection\.\w+)",
    "rord_loss": r"rord_loss",
    "rord_descriptor_loss": r"rord_descriptor_loss",
    "cass_loss": r"cass_loss",
    "soft_focal_loss": r"soft_focal_loss",
    "masked_focal_loss": r"(masked_focal_loss|fused_losses\.focal\.\w+)",
    "masked_smooth_l1_loss": r"masked_smooth_l1_loss",
    "masked_cosine_loss": r"masked_cosine_loss",
    "hard_negative_margin_loss": r"hard_negative_margin_loss",
    "centernet_focal_loss": r"(\w*focal_loss|fused_losses\.focal\.\w+)",
    "reg_l1_loss": r"reg_l1_loss",
    "reg_smooth_l1_loss": r"reg_smooth_l1_loss",
    "centernet_loss": r"(centernet_loss|\w*focal_loss|fused_losses\.focal\.\w+)",
    "centernet_pose_loss": r"(centernet_pose_loss|\w*focal_loss|fused_losses\.focal\.\w+)",
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "make"), _ops(), ids=[n for n, _ in _ops()])
def test_gradient_penalty_raises_instead_of_dropping_the_second_order_term(name, make, backend):
    _skip_unavailable(backend)
    loss, x = make(backend)
    # First order still works.
    (g,) = torch.autograd.grad(loss, x, retain_graph=True)
    assert torch.isfinite(g).all()
    # The error names the op and the backend (docs/spec.md 8).
    op = OP_NAMES[name]
    with pytest.raises(RuntimeError, match=rf"^{op} \({backend} backend\): double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_double_backward(backend):
    """torch: exact (a gather is linear, the penalty gradient is the reference's); triton: raises."""
    _skip_unavailable(backend)
    g = torch.Generator().manual_seed(33)
    feat = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    ind = torch.tensor([[0, 7, 7, 19], [3, 3, 11, 2]])
    w = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)

    def penalty_grad(fn, x):
        out = fn(x)
        loss = (out * w.to(out.device)).sum() + (out**2).sum()
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        (gg,) = torch.autograd.grad((gx**2).sum(), x)
        return gg

    ref = penalty_grad(
        lambda x: RC.transpose_and_gather_feat(x, ind), feat.clone().requires_grad_()
    )
    x = feat.to(DEVICE).requires_grad_()
    ours = lambda x: fl.transpose_and_gather_feat(x, ind.to(DEVICE), backend=backend)
    if backend == "torch":
        torch.testing.assert_close(penalty_grad(ours, x).cpu(), ref)
    else:
        with pytest.raises(RuntimeError, match="double backward"):
            penalty_grad(ours, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["gap_detection_loss", "CrossEntropyLoss"])
def test_gradient_penalty_through_a_compiled_loss_raises(op, backend):
    """Under torch.compile the backward is traced ahead of time: create_graph=True succeeds, and
    backpropagating the penalty raises AOTAutograd's RuntimeError (spec 8) instead of adding no
    second-order term."""
    _skip_unavailable(backend)
    torch._dynamo.reset()
    if op == "gap_detection_loss":
        c = _gap_inputs()
        x, args = c.offset, c.args()
        fn = torch.compile(lambda *a: fl.gap_detection_loss(*a, backend=backend),
                           backend="aot_eager", fullgraph=True)  # fmt: skip
    else:
        loss = fl.build_loss({"type": "CrossEntropyLoss", "backend": backend})
        x = torch.randn(2, 3, 4, 4, device=DEVICE, requires_grad=True)
        args = (x, torch.randint(0, 3, (2, 4, 4), device=DEVICE))
        fn = torch.compile(lambda a, b: loss(a, b), backend="aot_eager", fullgraph=True)
    out = fn(*args)
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        (out + 0.1 * (g**2).sum()).backward()
