"""CenterNet multi-pose loss (docs/centernet.md "Multi-pose"): centernet_pose_loss /
CenterNetPoseLoss over CenterNet's batch dict against the literal MultiPoseLoss of
``reference/centernet_pose.py``, in float64, on both backends (triton through the interpreter on
CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, assert_grad_close, assert_scalar_close, pairwise, upstream_scalar
from fused_losses.reference import centernet_pose as RP
from fused_losses.reference.centernet import clamped_sigmoid

import fused_losses as fl

F64 = torch.float64
J = 5  # joints (17 for COCO; fewer keeps the float64 reference fast)


def pose_scene(seed: int, *, b=2, n=4, size=(16, 20), k=1, dense_hp=False, mse_loss=False):
    """Random people (boxes in input pixels, down_ratio 4), some joints unlabelled or outside the
    map, one person without a labelled joint; CenterNet's targets from the reference."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    img = torch.tensor([w * 4.0, h * 4.0], dtype=F64)
    xy = torch.rand(b, n, 2, generator=g, dtype=F64) * img * 0.6
    boxes = torch.cat([xy, xy + 12 + torch.rand(b, n, 2, generator=g, dtype=F64) * img * 0.4], -1)
    boxes = boxes.float()
    kp_xy = boxes[..., None, :2] + torch.rand(b, n, J, 2, generator=g) * (
        boxes[..., None, 2:] - boxes[..., None, :2]
    )
    kp_xy[:, :, 0] = -3.0  # joint 0 left of the map
    vis = torch.randint(0, 3, (b, n, J), generator=g).float()
    vis[0, 1] = 0  # a person without a labelled joint
    keypoints = torch.cat([kp_xy, vis[..., None]], -1)
    labels = torch.randint(0, k, (b, n), generator=g)
    box_mask = torch.rand(b, n, generator=g) > 0.2
    targets = RP.centernet_pose_targets(
        boxes, keypoints, labels, box_mask, num_classes=k, num_joints=J, output_size=size,
        dense_hp=dense_hp, mse_loss=mse_loss, hm_gauss=2.0 if mse_loss else None,
    )  # fmt: skip
    return targets


def pose_heads(seed: int, targets: dict, stacks: int, mse_loss: bool) -> list[dict]:
    g = torch.Generator().manual_seed(1000 + seed)
    b, k, h, w = targets["hm"].shape
    out = []
    for _ in range(stacks):
        heads = {
            "hm": clamped_sigmoid(torch.randn(b, k, h, w, generator=g, dtype=F64) - 1),
            "wh": torch.randn(b, 2, h, w, generator=g, dtype=F64) * 4 + 6,
            "reg": torch.rand(b, 2, h, w, generator=g, dtype=F64),
            "hps": torch.randn(b, 2 * J, h, w, generator=g, dtype=F64) * 3,
            "hp_offset": torch.rand(b, 2, h, w, generator=g, dtype=F64),
        }
        hm_hp = torch.randn(b, J, h, w, generator=g, dtype=F64)
        heads["hm_hp"] = hm_hp.sigmoid() if mse_loss else clamped_sigmoid(hm_hp - 1)
        out.append(heads)
    return out


FACTORS = {
    "stacks": [1, 2],
    "dense_hp": [False, True],
    "mse_loss": [False, True],
    "reg_loss": ["l1", "sl1"],
    "hm_hp": [True, False],
    "reg_offset": [True, False],
    "reg_hp_offset": [True, False],
    "weights": ["default", "zeros", "custom"],
}
ROWS = pairwise(FACTORS)
WEIGHTS = {
    "default": {},
    "zeros": dict(wh_weight=0.0, off_weight=0.0, hm_hp_weight=0.0),
    "custom": dict(hm_weight=1.3, wh_weight=0.2, off_weight=0.7, hp_weight=0.9, hm_hp_weight=1.1),
}


def _ids(rows):
    return ["-".join(f"{k}={v}" for k, v in r.items()) for r in rows]


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_pose_loss_matches_multi_pose_loss(row, backend):
    opts = dict(
        dense_hp=row["dense_hp"], mse_loss=row["mse_loss"], reg_loss=row["reg_loss"],
        hm_hp=row["hm_hp"], reg_offset=row["reg_offset"], reg_hp_offset=row["reg_hp_offset"],
        **WEIGHTS[row["weights"]],
    )  # fmt: skip
    seed = len(_ids([row])[0])
    targets = pose_scene(seed, dense_hp=row["dense_hp"], mse_loss=row["mse_loss"])
    heads = pose_heads(seed, targets, row["stacks"], row["mse_loss"])
    ref_leaves = [{k: v.clone().requires_grad_() for k, v in st.items()} for st in heads]
    ref_total, ref_parts = RP.multi_pose_loss(ref_leaves, targets, **opts)
    r = upstream_scalar(seed)
    (ref_total * r).backward()

    leaves = [{k: v.float().to(DEVICE).requires_grad_() for k, v in st.items()} for st in heads]
    t = {k: v.to(DEVICE) for k, v in targets.items()}
    t["meta"] = "ignored"
    outputs = leaves if row["stacks"] > 1 else leaves[0]
    total, parts = fl.centernet_pose_loss(
        outputs, t, return_components=True, backend=backend, **opts
    )
    (total * r).backward()
    assert total.dim() == 0 and total.dtype == torch.float32
    assert_scalar_close(total, ref_total, 1e-5, "total")
    assert set(parts) == set(ref_parts)
    for name, value in parts.items():
        assert not value.requires_grad
        assert_scalar_close(value, ref_parts[name], 1e-5, name)
    for st, ref_st in zip(leaves, ref_leaves):
        for key, leaf in st.items():
            if ref_st[key].grad is None:
                assert leaf.grad is None or not leaf.grad.any(), key
            else:
                assert_grad_close(leaf.grad, ref_st[key].grad, 1e-5, f"grad {key}")


def test_module_form_and_absent_heads(backend):
    targets = pose_scene(3)
    heads = pose_heads(3, targets, 1, False)[0]
    t = {k: v.to(DEVICE) for k, v in targets.items()}
    x = {k: v.float().to(DEVICE) for k, v in heads.items()}
    crit = fl.CenterNetPoseLoss(hm_hp=False, backend=backend)
    a = crit(x, t)
    del x["hm_hp"], x["hp_offset"]  # not read without hm_hp
    assert torch.equal(crit(x, t), a)
    ref, _ = RP.multi_pose_loss(heads, targets, hm_hp=False)
    assert_scalar_close(a, ref, 1e-5)


def test_float64_heads():
    targets = pose_scene(4)
    heads = pose_heads(4, targets, 1, False)[0]
    loss = fl.centernet_pose_loss(heads, targets, backend="torch")
    ref, _ = RP.multi_pose_loss(heads, targets)
    assert loss.dtype == F64
    assert_scalar_close(loss, ref, 1e-12)


def test_bad_input_names_the_argument():
    targets = pose_scene(5)
    heads = pose_heads(5, targets, 1, False)[0]
    with pytest.raises(ValueError, match="hm_hp"):
        fl.centernet_pose_loss({k: v for k, v in heads.items() if k != "hm_hp"}, targets)
    with pytest.raises(ValueError, match="dense_hps"):
        fl.centernet_pose_loss(heads, targets, dense_hp=True)
    bad = dict(heads, hps=heads["hps"][:, :4])
    with pytest.raises(ValueError, match="hps"):
        fl.centernet_pose_loss(bad, targets)
    with pytest.raises(ValueError, match="reg_loss"):
        fl.CenterNetPoseLoss(reg_loss="l2")
    with pytest.raises(TypeError, match="dense_hp"):
        fl.CenterNetPoseLoss(dense_hp=1)
    with pytest.raises(TypeError, match="outputs"):
        fl.centernet_pose_loss([], targets)
    with pytest.raises(TypeError, match="targets"):
        fl.centernet_pose_loss(heads, [targets])
    with pytest.raises(ValueError, match=r"targets\['hm'\]"):
        fl.centernet_pose_loss(heads, dict(targets, hm=targets["hm"][:1]))


# --------------------------------------------------------------------------------------- targets


def raw_scene(seed: int, *, b=2, n=5, size=(16, 20), k=2, joints=J):
    """Boxes, keypoints, labels and mask: some boxes partly off the map, joints outside it and
    unlabelled, a box without a labelled joint, two people with the same box (overlap)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    img = torch.tensor([w * 4.0, h * 4.0])
    xy = torch.rand(b, n, 2, generator=g) * img * 0.7 - 6
    boxes = torch.cat([xy, xy + 2 + torch.rand(b, n, 2, generator=g) * img * 0.5], -1)
    span = boxes[..., None, 2:] - boxes[..., None, :2]
    kp = boxes[..., None, :2] + torch.rand(b, n, joints, 2, generator=g) * span * 1.2 - 3
    vis = torch.randint(0, 3, (b, n, joints), generator=g).float()
    vis[0, 1] = 0  # a person without a labelled joint
    if n > 3:
        boxes[1, 3] = boxes[1, 2]  # overlapping people: the same box, other joints
        kp[1, 3] = kp[1, 2] + 1
    keypoints = torch.cat([kp, vis[..., None]], -1)
    labels = torch.randint(0, k, (b, n), generator=g)
    box_mask = torch.rand(b, n, generator=g) > 0.15
    return boxes, keypoints, labels, box_mask


TARGET_ROWS = [
    dict(dense_hp=d, mse_loss=m, hm_gauss=g, size=s)
    for d in (False, True)
    for m, g in ((False, None), (True, 2.0), (True, 2.5))
    for s in ((16, 20), (20, 9))
]


@pytest.mark.parametrize("row", TARGET_ROWS, ids=_ids(TARGET_ROWS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pose_targets_equal_the_reference(row, seed, backend):
    """Bit-identical to the literal CenterNet loop for float32 inputs (the msra Gaussians too:
    the reference's arithmetic order), in every order-dependent case of dense_hp."""
    boxes, kp, labels, mask = raw_scene(seed, size=row["size"])
    kw = dict(num_classes=2, num_joints=J, output_size=row["size"], dense_hp=row["dense_hp"],
              mse_loss=row["mse_loss"], hm_gauss=row["hm_gauss"])  # fmt: skip
    ref = RP.centernet_pose_targets(boxes, kp, labels, mask, **kw)
    got = fl.centernet_pose_targets(
        boxes.to(DEVICE), kp.to(DEVICE), labels.to(DEVICE), mask.to(DEVICE), backend=backend,
        **kw,
    )  # fmt: skip
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key].cpu(), value), key


F64_ROWS = [
    dict(n=5, size=(16, 20), joints=J, mse_loss=False),
    dict(n=12, size=(24, 20), joints=19, mse_loss=False),
    dict(n=12, size=(24, 20), joints=19, mse_loss=True),  # tl.exp and torch.exp: 1 ulp apart
]


@pytest.mark.parametrize("row", F64_ROWS, ids=_ids(F64_ROWS))
def test_pose_targets_float64_and_defaults(row, backend):
    """float64 boxes: float64 targets within 1e-15 relative of the reference (the float64 exp of
    the two backends and of the reference may differ by an ulp); integer targets exact."""
    nj, size = row["joints"], row["size"]
    boxes, kp, _, _ = raw_scene(4, k=1, n=row["n"], size=size, joints=nj)
    kw = dict(num_joints=nj, output_size=size, dense_hp=True, mse_loss=row["mse_loss"],
              hm_gauss=2.5 if row["mse_loss"] else None)  # fmt: skip
    if not row["mse_loss"]:
        del kw["dense_hp"], kw["mse_loss"], kw["hm_gauss"]  # the defaults
    ref = RP.centernet_pose_targets(boxes.double(), kp.double(), **kw)
    got = fl.centernet_pose_targets(boxes.double().to(DEVICE), kp.double().to(DEVICE),
                                    backend=backend, **kw)  # fmt: skip
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key].dtype == value.dtype, key
        if value.is_floating_point():
            torch.testing.assert_close(got[key].cpu(), value, rtol=1e-15, atol=0, msg=key)
        else:
            assert torch.equal(got[key].cpu(), value), key


def test_pose_targets_empty_cases(backend):
    kw = dict(num_joints=J, output_size=(8, 8), backend=backend, dense_hp=True)
    for b, n in ((0, 3), (2, 0)):
        t = fl.centernet_pose_targets(torch.zeros(b, n, 4, device=DEVICE),
                                      torch.zeros(b, n, J, 3, device=DEVICE), **kw)  # fmt: skip
        assert t["hm"].shape == (b, 1, 8, 8) and t["hp_ind"].shape == (b, n * J)
        assert not t["hm"].any() and not t["dense_hps"].any()
    boxes, kp, _labels, _ = raw_scene(5, k=1)
    t = fl.centernet_pose_targets(
        boxes.to(DEVICE), kp.to(DEVICE), box_mask=torch.zeros(2, 5, dtype=torch.bool,
        device=DEVICE), output_size=(16, 20), num_joints=J, backend=backend,
    )  # fmt: skip
    assert not t["hm"].any() and not t["hps_mask"].any() and not t["reg_mask"].any()


@pytest.mark.skipif(DEVICE == "cpu" and not fl.backend.interpreter_on(), reason="needs triton")
def test_pose_targets_one_launch():
    from fused_losses.kernels.launch import launch_count, reset_launch_count

    boxes, kp, labels, mask = raw_scene(6)
    reset_launch_count()
    fl.centernet_pose_targets(boxes.to(DEVICE), kp.to(DEVICE), labels.to(DEVICE),
                              mask.to(DEVICE), num_classes=2, num_joints=J, output_size=(16, 20),
                              dense_hp=True, backend="triton")  # fmt: skip
    assert launch_count() == 1


def test_pose_loss_from_raw_boxes_equals_target_dict(backend):
    boxes, kp, _labels, mask = raw_scene(7, k=1)
    targets = RP.centernet_pose_targets(boxes, kp, None, mask, num_joints=J, output_size=(16, 20))
    heads = pose_heads(7, targets, 1, False)[0]
    x = {k: v.float().to(DEVICE) for k, v in heads.items()}
    crit = fl.CenterNetPoseLoss(backend=backend)
    a = crit(x, boxes=boxes.to(DEVICE), keypoints=kp.to(DEVICE), box_mask=mask.to(DEVICE))
    b = crit(x, {k: v.to(DEVICE) for k, v in targets.items()})
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="exactly one"):
        crit(x, targets, boxes=boxes)
    with pytest.raises(ValueError, match="keypoints"):
        crit(x, boxes=boxes)


def test_pose_targets_bad_input():
    boxes, kp, labels, _ = raw_scene(8)
    kw = dict(num_classes=2, num_joints=J, output_size=(16, 20))
    with pytest.raises(ValueError, match="keypoints"):
        fl.centernet_pose_targets(boxes, kp[..., :2], labels, **kw)
    with pytest.raises(ValueError, match="keypoints"):
        fl.centernet_pose_targets(boxes, kp, labels, **{**kw, "num_joints": J + 1})
    with pytest.raises(ValueError, match="hm_gauss"):
        fl.centernet_pose_targets(boxes, kp, labels, mse_loss=True, **kw)
    with pytest.raises(ValueError, match="hm_gauss"):
        fl.centernet_pose_targets(boxes, kp, labels, hm_gauss=-1.0, **kw)
    with pytest.raises(TypeError, match="dense_hp"):
        fl.centernet_pose_targets(boxes, kp, labels, dense_hp=1, **kw)
    with pytest.raises(ValueError, match="boxes"):
        fl.centernet_pose_targets(boxes[..., :3], kp, labels, **kw)
    with pytest.raises(ValueError, match="labels"):
        fl.centernet_pose_targets(boxes, kp, labels[:, :2], **kw)
    with pytest.raises(TypeError, match="keypoints"):
        fl.centernet_pose_targets(boxes, kp.to(torch.complex64), labels, **kw)


@pytest.mark.parametrize("dense_hp", [False, True])
def test_pose_loss_without_people(dense_hp, backend):
    """Every person masked: the regression terms are 0, the heatmaps' negative terms remain."""
    boxes, kp, _, _ = raw_scene(9, k=1)
    none = torch.zeros(2, 5, dtype=torch.bool)
    targets = RP.centernet_pose_targets(boxes, kp, None, none, num_joints=J, output_size=(16, 20),
                                        dense_hp=dense_hp)  # fmt: skip
    heads = pose_heads(9, targets, 1, False)[0]
    ref, ref_parts = RP.multi_pose_loss(heads, targets, dense_hp=dense_hp)
    x = {k: v.to(DEVICE) for k, v in heads.items()}
    loss, parts = fl.centernet_pose_loss(
        x, boxes=boxes.to(DEVICE), keypoints=kp.to(DEVICE), box_mask=none.to(DEVICE),
        dense_hp=dense_hp, return_components=True, backend=backend,
    )  # fmt: skip
    assert_scalar_close(loss, ref, 1e-10)
    for name in ("wh", "off", "hp", "hp_offset"):
        assert float(parts[name]) == 0.0 == float(ref_parts[name])
    assert float(parts["hm"]) > 0 and float(parts["hm_hp"]) > 0


# ------------------------------------------------------------------------- validation, edge cases


@pytest.mark.parametrize("hm_gauss", [1e-23, 1e-30, 1e-7, 2e4, 0.0, -1.0])
def test_hm_gauss_out_of_range_is_rejected(hm_gauss, backend):
    """Below 1e-6, 2 sigma^2 rounds to 0 in float32 (NaN centres, or an empty map): a ValueError
    naming hm_gauss and its range, from the targets, the loss and the options alike."""
    boxes, kp, labels, _ = raw_scene(10)
    heads = pose_heads(10, pose_scene(10, mse_loss=True), 1, True)[0]
    x = {k: v.float().to(DEVICE) for k, v in heads.items()}
    match = r"hm_gauss: expected a number in \[1e-6, 1e4\]"
    with pytest.raises(ValueError, match=match):
        fl.centernet_pose_targets(boxes.to(DEVICE), kp.to(DEVICE), labels.to(DEVICE),
                                  num_classes=2, num_joints=J, output_size=(16, 20),
                                  mse_loss=True, hm_gauss=hm_gauss, backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        fl.centernet_pose_loss(x, boxes=boxes.to(DEVICE), keypoints=kp.to(DEVICE), mse_loss=True,
                               hm_gauss=hm_gauss, backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match=match):
        fl.CenterNetPoseLoss(mse_loss=True, hm_gauss=hm_gauss)


@pytest.mark.parametrize("hm_gauss", [1e-6, 1e-3, 0.4])
def test_hm_gauss_small_in_range_equals_the_reference(hm_gauss, backend):
    boxes, kp, labels, mask = raw_scene(11)
    kw = dict(num_classes=2, num_joints=J, output_size=(16, 20), dense_hp=True, mse_loss=True,
              hm_gauss=hm_gauss)  # fmt: skip
    ref = RP.centernet_pose_targets(boxes, kp, labels, mask, **kw)
    got = fl.centernet_pose_targets(boxes.to(DEVICE), kp.to(DEVICE), labels.to(DEVICE),
                                    mask.to(DEVICE), backend=backend, **kw)  # fmt: skip
    for key, value in ref.items():
        assert torch.equal(got[key].cpu(), value), key
    assert ref["hm"].isfinite().all() and ref["hm"].max() == 1.0


@pytest.mark.skipif(DEVICE == "cpu" and not fl.backend.interpreter_on(), reason="needs triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's 0 / 0
def test_pose_kernel_keeps_nans_like_torch():
    """A NaN Gaussian (hm_gauss below the checked range, the checks bypassed) is max-merged into
    the maps as torch.maximum does (NaN at every centre, as the reference), not dropped."""
    from fused_losses.kernels.centernet_pose import pose_targets_launch

    from fused_losses.centernet_labels import MIN_OVERLAP
    from fused_losses.centernet_pose_labels import pose_targets_torch

    boxes, kp, labels, mask = raw_scene(12)
    boxes, kp, labels, mask = (t.to(DEVICE) for t in (boxes, kp, labels, mask))
    ref = RP.centernet_pose_targets(boxes.cpu(), kp.cpu(), labels.cpu(), mask.cpu(),
                                    num_classes=2, num_joints=J, output_size=(16, 20),
                                    dense_hp=True, mse_loss=True, hm_gauss=1e-23)  # fmt: skip
    args = (boxes, kp, labels, mask, 2, (16, 20), 4, True, True, 1e-23)
    for got in (pose_targets_torch(*args), pose_targets_launch(*args, MIN_OVERLAP)):
        for key in ("hm", "hm_hp", "dense_hps_mask"):
            assert ref[key].isnan().any(), key
            torch.testing.assert_close(got[key].cpu(), ref[key], rtol=0, atol=0, equal_nan=True)


def _raw_bad_heads(h: dict) -> list:
    """(heads, error, pattern) for raw boxes [2, 5, 4], keypoints [2, 5, J, 3], maps 16x20."""
    shapes = r"\[2, 2J = 10, 16, 20\].*boxes \[2, 5, 4\], keypoints \[2, 5, 5, 3\].*got \[2, 5, 16,"
    return [
        (
            dict(h, hps=h["hps"][:, :5]),
            ValueError,
            r"outputs\[0\]\['hps'\]: expected shape " + shapes,
        ),
        (
            {k: v[:1] for k, v in h.items()},
            ValueError,
            r"outputs\[0\]\['hm'\]: expected shape \[2, K, H, W\] .*boxes \[2, 5, 4\].*got \[1,",
        ),
        (
            dict(h, wh=torch.cat([h["wh"], h["wh"][:, :1]], 1)),
            ValueError,
            r"outputs\[0\]\['wh'\]: expected shape \[2, 2, 16, 20\].*got \[2, 3, 16, 20\]",
        ),
        (
            dict(h, hm_hp=h["hm_hp"][:, :4]),
            ValueError,
            r"outputs\[0\]\['hm_hp'\]: expected shape \[2, J = 5, 16, 20\].*keypoints.*got \[2, 4,",
        ),
        (
            dict(h, hp_offset=h["hp_offset"][:, :1]),
            ValueError,
            r"outputs\[0\]\['hp_offset'\]: expected shape \[2, 2, 16, 20\].*got \[2, 1, 16, 20\]",
        ),
        (dict(h, reg=h["reg"][..., :10]), ValueError, r"outputs\[0\]\['reg'\]: expected shape"),
        (
            [h, {k: v[:1] for k, v in h.items()}],
            ValueError,
            r"outputs\[1\]\['hm'\]: expected shape \[2, 1, 16, 20\].*got \[1, 1, 16, 20\]",
        ),
        (dict(h, hm=h["hm"].long()), TypeError, r"outputs\[0\]\['hm'\]: expected a floating"),
        (dict(h, wh=h["wh"].to(torch.complex64)), TypeError, r"outputs\[0\]\['wh'\]"),
        (dict(h, hps=h["hps"].int()), TypeError, r"outputs\[0\]\['hps'\]"),
        ({k: v for k, v in h.items() if k != "hps"}, ValueError, r"outputs\[0\]: missing heads"),
        ({k: v for k, v in h.items() if k != "hm"}, ValueError, r"outputs\[0\]: missing heads"),
        ([h, {k: v for k, v in h.items() if k != "wh"}], ValueError, r"outputs\[1\]: missing"),
        (
            dict(h, hm_hp=h["hm_hp"].to("meta")),
            ValueError,
            r"outputs\[0\]\['hm_hp'\]: expected a tensor on .* \(like boxes\), got one on meta",
        ),
        (
            {k: v.to("meta") for k, v in h.items()},
            ValueError,
            r"outputs\[0\]\['hm'\]: expected a tensor on .*like boxes",
        ),
        (dict(h, hm=h["hm"][:, :, :0]), ValueError, r"outputs\[0\]\['hm'\]: expected K, H, W"),
    ]


def test_raw_box_heads_checked_before_any_target(backend, monkeypatch):
    """With raw boxes, every head read is checked (dtype, shape, channels against J, batch
    against boxes, device) before a target is built or a kernel runs; errors name the head."""
    import sys

    from fused_losses.kernels.launch import launch_count, reset_launch_count

    pose = sys.modules["fused_losses.centernet_pose"]

    def spy(*_args, **_kwargs):
        raise AssertionError("targets built before the heads were checked")

    boxes, kp, _labels, _ = raw_scene(13, k=1)
    targets = RP.centernet_pose_targets(boxes, kp, num_joints=J, output_size=(16, 20))
    h = {k: v.float().to(DEVICE) for k, v in pose_heads(13, targets, 1, False)[0].items()}
    boxes, kp = boxes.to(DEVICE), kp.to(DEVICE)
    monkeypatch.setattr(pose, "centernet_pose_targets", spy)
    for heads, error, pattern in _raw_bad_heads(h):
        reset_launch_count()
        with pytest.raises(error, match=pattern):
            fl.centernet_pose_loss(heads, boxes=boxes, keypoints=kp, backend=backend)
        with pytest.raises(error, match=pattern):
            fl.CenterNetPoseLoss(backend=backend)(heads, boxes=boxes, keypoints=kp)
        assert launch_count() == 0
    with pytest.raises(AssertionError, match="targets built"):  # the good heads get that far
        fl.centernet_pose_loss(h, boxes=boxes, keypoints=kp, backend=backend)


@pytest.mark.parametrize("mode", ["raw", "dict"])
def test_outputs_not_a_dict_is_a_type_error(mode):
    boxes, kp, _labels, _ = raw_scene(14, k=1)
    targets = RP.centernet_pose_targets(boxes, kp, num_joints=J, output_size=(16, 20))
    h = pose_heads(14, targets, 1, False)[0]
    for outputs in (h["hm"], 5, "hm", {1}, (x for x in [h]), [], (), None):
        with pytest.raises(TypeError, match="outputs: expected a dict of heads or a non-empty"):
            if mode == "raw":
                fl.centernet_pose_loss(outputs, boxes=boxes, keypoints=kp)
            else:
                fl.centernet_pose_loss(outputs, targets)
    with pytest.raises(TypeError, match=r"outputs\[1\]: expected a dict of heads, got Tensor"):
        if mode == "raw":
            fl.centernet_pose_loss([h, h["hm"]], boxes=boxes, keypoints=kp)
        else:
            fl.centernet_pose_loss([h, h["hm"]], targets)


@pytest.mark.parametrize("name", ["hm_weight", "wh_weight", "off_weight", "hp_weight",
                                  "hm_hp_weight"])  # fmt: skip
def test_weights_beyond_float32_are_rejected(name):
    """A weight that float32 makes inf (or close to it) is a ValueError naming it; 1e30 is fine."""
    for value in (1e39, -1e39, 3.5e38, 1.1e30):
        with pytest.raises(ValueError, match=rf"{name}: expected a number in \[-1e30, 1e30\]"):
            fl.CenterNetPoseLoss(**{name: value})
        with pytest.raises(ValueError, match=name):
            fl.centernet_pose_loss({}, {}, **{name: value})
    assert getattr(fl.CenterNetPoseLoss(**{name: 1e30}).options, name) == 1e30
    assert getattr(fl.CenterNetPoseLoss(**{name: -1e30}).options, name) == -1e30


def test_output_size_range(backend):
    """output_size: H, W in [1, 65536] and H * W <= 2^30 (spec 8), before any work; raw boxes
    name the hm head whose size it would be."""
    boxes, kp, _labels, _ = raw_scene(15, k=1)
    kw = dict(num_joints=J, backend=backend)
    for size in ((70000, 2), (2, 70000), (65537, 1), (65536, 65536), (32769, 32768)):
        with pytest.raises(ValueError, match=r"output_size: expected \(H, W\) with H and W in "
                           r"\[1, 65536\] and H \* W <= 2\^30"):  # fmt: skip
            fl.centernet_pose_targets(boxes, kp, output_size=size, **kw)
    t = fl.centernet_pose_targets(boxes, kp, output_size=(65536, 1), **kw)
    assert t["hm"].shape == (2, 1, 65536, 1)
    heads = {
        k: torch.zeros(2, c, 70000, 1)
        for k, c in (
            ("hm", 1),
            ("wh", 2),
            ("reg", 2),
            ("hps", 2 * J),
            ("hm_hp", J),
            ("hp_offset", 2),
        )
    }
    with pytest.raises(ValueError, match=r"outputs\[0\]\['hm'\]: expected K, H, W in \[1, 65536\]"):
        fl.centernet_pose_loss(heads, boxes=boxes, keypoints=kp, backend=backend)


@pytest.mark.parametrize("mode", ["raw", "dict"])
def test_heads_not_read_are_not_checked(mode, backend):
    """A head the loss does not read (an extra key, or hm_hp without hm_hp) may be anything,
    on any device: only the heads read are validated."""
    boxes, kp, _labels, mask = raw_scene(16, k=1)
    targets = RP.centernet_pose_targets(boxes, kp, None, mask, num_joints=J, output_size=(16, 20))
    h = {k: v.float().to(DEVICE) for k, v in pose_heads(16, targets, 1, False)[0].items()}
    t = {k: v.to(DEVICE) for k, v in targets.items()}
    raw = dict(boxes=boxes.to(DEVICE), keypoints=kp.to(DEVICE), box_mask=mask.to(DEVICE))

    def loss(heads, **opts):
        if mode == "raw":
            return fl.centernet_pose_loss(heads, backend=backend, **raw, **opts)
        return fl.centernet_pose_loss(heads, t, backend=backend, **opts)

    base = loss(h)
    assert torch.equal(loss(dict(h, extra=torch.zeros(1, device="meta"))), base)
    assert torch.equal(loss(dict(h, extra="not a tensor")), base)
    off = loss(h, hm_hp=False)
    assert torch.equal(loss(dict(h, hm_hp=torch.zeros(1, device="meta")), hm_hp=False), off)
    assert_scalar_close(off, RP.multi_pose_loss(
        {k: v.double() for k, v in h.items()}, targets, hm_hp=False)[0], 1e-5)  # fmt: skip
    with pytest.raises(ValueError, match=r"outputs\[0\]\['hm_hp'\]: expected a tensor on"):
        loss(dict(h, hm_hp=h["hm_hp"].to("meta")))  # read with hm_hp: checked


def test_compiled_step_follows_a_changing_map_size(backend):
    """torch.compile(fullgraph=True) of a raw-box pose step whose map size changes between calls:
    the recompile makes H and W symbolic, and they reach the target kernel's options (a list of
    ints) as their run-time values (it failed with "sort with non-constant keys")."""
    crit = fl.CenterNetPoseLoss(backend=backend)
    step = lambda h, b, k, m: crit(h, boxes=b, keypoints=k, box_mask=m)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    for size in ((16, 20), (17, 21), (18, 22)):
        boxes, kp, _labels, mask = raw_scene(9, size=size)
        targets = RP.centernet_pose_targets(boxes, kp, None, mask, num_joints=J, output_size=size)
        heads = pose_heads(9, targets, 1, False)[0]
        x = {k: v.float().to(DEVICE) for k, v in heads.items()}
        args = (x, boxes.to(DEVICE), kp.to(DEVICE), mask.to(DEVICE))
        assert torch.equal(compiled(*args), step(*args)), size


def test_compiled_step_with_dynamic_shapes_and_msra_gaussians(backend):
    """torch.compile(dynamic=True): the float options (hm_gauss, the focal exponents) are symbolic
    there, and their checks must trace (math.isfinite of one failed the whole graph)."""
    crit = fl.CenterNetPoseLoss(backend=backend, mse_loss=True, hm_gauss=2.0)
    step = lambda h, b, k, m: crit(h, boxes=b, keypoints=k, box_mask=m)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="eager", dynamic=True)
    for size in ((16, 20), (17, 21)):
        boxes, kp, _labels, mask = raw_scene(9, size=size)
        targets = RP.centernet_pose_targets(
            boxes, kp, None, mask, num_joints=J, output_size=size, mse_loss=True, hm_gauss=2.0
        )
        heads = pose_heads(9, targets, 1, False)[0]
        x = {k: v.float().to(DEVICE) for k, v in heads.items()}
        args = (x, boxes.to(DEVICE), kp.to(DEVICE), mask.to(DEVICE))
        assert torch.equal(compiled(*args), step(*args)), size


def test_numpy_bool_is_named_by_its_module():
    """A NumPy bool is refused with its full name (it said "expected a bool, got bool")."""
    np = pytest.importorskip("numpy")
    for value in (np.bool_(True), np.int64(1)):
        name = f"numpy.{type(value).__qualname__}"
        with pytest.raises(TypeError, match=rf"dense_hp: expected a bool, got {name}"):
            fl.CenterNetPoseLoss(dense_hp=value)


# ------------------------------------------------ target dict: shapes, names, constants, the MSE


def _no_kernel(monkeypatch):
    """Make any loss term or kernel launch fail: the checks must raise before them."""
    import sys

    from fused_losses.kernels.launch import reset_launch_count

    pose = sys.modules["fused_losses.centernet_pose"]

    def spy(*_args, **_kwargs):
        raise AssertionError("a loss term ran before the inputs were checked")

    for name in ("focal_share", "_reg_loss", "_dense_l1_share", "_mse_share"):
        monkeypatch.setattr(pose, name, spy)
    reset_launch_count()


@pytest.mark.parametrize("dense_hp", [False, True])
def test_target_dict_heads_share_hm_map_size(dense_hp, backend, monkeypatch):
    """With a target dict every head read has hm's map size [B, C, H, W], as with raw boxes
    (ind and hp_ind index that map): a head of another map size, or of the same H * W in another
    shape, is a ValueError naming outputs[s]['<head>'] before any kernel or term runs. (triton
    read the out-of-range cells as 0 and returned a wrong value; torch failed inside gather.)"""
    from fused_losses.kernels.launch import launch_count

    targets = pose_scene(19, dense_hp=dense_hp)
    h = {k: v.float().to(DEVICE) for k, v in pose_heads(19, targets, 1, False)[0].items()}
    t = {k: v.to(DEVICE) for k, v in targets.items()}
    b, size = 2, "16, 20"
    cases = [
        (0, "wh", h["wh"][:, :, :8, :10], "2"),
        (0, "wh", h["wh"].reshape(b, 2, 10, 32), "2"),  # the same H * W
        (0, "reg", h["reg"][..., :10], "2"),
        (0, "hps", h["hps"][:, :, :8], "2J = 10"),
        (0, "hps", h["hps"].reshape(b, 2 * J, 20, 16), "2J = 10"),
        (0, "hp_offset", h["hp_offset"].reshape(b, 2, 20, 16), "2"),
        (0, "hm_hp", h["hm_hp"][..., :19], "J = 5"),
        (1, "wh", h["wh"][:, :, :4, :4], "2"),
        (1, "hp_offset", h["hp_offset"][..., :1, :], "2"),
    ]
    _no_kernel(monkeypatch)
    for s, head, bad, channels in cases:
        outputs = dict(h, **{head: bad})
        outputs = [h, outputs] if s else outputs
        with pytest.raises(ValueError) as info:
            fl.centernet_pose_loss(outputs, t, dense_hp=dense_hp, backend=backend)
        expected = f"outputs[{s}]['{head}']: expected shape [{b}, {channels}, {size}] ("
        assert str(info.value).startswith(expected), str(info.value)
        assert str(info.value).endswith(f"got {list(bad.shape)}".replace("'", "")), head
    assert launch_count() == 0


def test_target_dict_errors_name_the_wrong_head(backend, monkeypatch):
    """Heads are checked against stack 0's hm and the target dict's shapes, so a wrong head is
    named (with its stack), not the target it is compared with; a wrong target is still named."""
    from fused_losses.kernels.launch import launch_count

    targets = pose_scene(20)
    h = {k: v.float().to(DEVICE) for k, v in pose_heads(20, targets, 1, False)[0].items()}
    t = {k: v.to(DEVICE) for k, v in targets.items()}
    dev = t["hm"].device
    hm0 = "outputs[0]['hm'] [2, 1, 16, 20]"
    head_cases = [
        (
            dict(h, hm_hp=torch.rand(2, J + 1, 16, 20, device=DEVICE)),
            "outputs[0]['hm_hp']: expected shape [2, J = 5, 16, 20] (B, J, H, W from "
            "targets['hm_hp'] [2, 5, 16, 20]), got [2, 6, 16, 20]",
        ),
        (
            dict(h, wh=h["wh"][:1]),
            f"outputs[0]['wh']: expected shape [2, 2, 16, 20] (B, H, W from {hm0}), got "
            "[1, 2, 16, 20]",
        ),
        (
            dict(h, hm=h["hm"].to("meta")),
            f"outputs[0]['hm']: expected a tensor on {dev} (like targets['hm']), got one on meta",
        ),
        (
            dict(h, wh=h["wh"].to("meta")),
            f"outputs[0]['wh']: expected a tensor on {dev} (like targets['hm']), got one on meta",
        ),
        (
            [h, dict(h, hm=h["hm"][..., :10])],
            f"outputs[1]['hm']: expected shape [2, 1, 16, 20] (like {hm0}), got [2, 1, 16, 10]",
        ),
        (
            [h, dict(h, hps=h["hps"][:1])],
            f"outputs[1]['hps']: expected shape [2, 2J = 10, 16, 20] (B, H, W, 2J from {hm0}, "
            "targets['hps'] [2, 4, 10]), got [1, 10, 16, 20]",
        ),
        (
            [h, dict(h, hm_hp=h["hm_hp"].to("meta"))],
            f"outputs[1]['hm_hp']: expected a tensor on {dev} (like targets['hm']), got one on "
            "meta",
        ),
    ]
    target_cases = [
        (
            dict(t, ind=t["ind"][:1]),
            f"targets['ind']: expected shape [2, M] (B from {hm0}), got [1, 4]",
        ),
        (
            dict(t, hm_hp=t["hm_hp"][..., :10]),
            f"targets['hm_hp']: expected shape [2, J, 16, 20] (B, H, W from {hm0}), got "
            "[2, 5, 16, 10]",
        ),
        (
            dict(t, hps_mask=t["hps_mask"][..., :4]),
            "targets['hps_mask']: expected shape [2, 4, 10] (like targets['hps'] [2, 4, 10]), "
            "got [2, 4, 4]",
        ),
        (
            dict(t, hp_offset=t["hp_offset"][:, :3]),
            f"targets['hp_offset']: expected shape [2, 20, 2] (B, MJ from {hm0}, "
            "targets['hp_ind'] [2, 20]), got [2, 3, 2]",
        ),
        (
            dict(t, wh=t["wh"].to("meta")),
            f"targets['wh']: expected a tensor on {dev} (like targets['hm']), got one on meta",
        ),
    ]
    _no_kernel(monkeypatch)
    cases = [(heads, t, msg) for heads, msg in head_cases]
    cases += [(h, tt, msg) for tt, msg in target_cases]
    for heads, tt, message in cases:
        with pytest.raises(ValueError) as info:
            fl.centernet_pose_loss(heads, tt, backend=backend)
        assert str(info.value) == message
    assert launch_count() == 0


@pytest.mark.parametrize("mode", ["default", "dense_mse"])
def test_targets_that_require_grad_are_refused(mode, backend, monkeypatch):
    """Targets are constants (docs/spec.md 8): a floating target that requires grad is a
    ValueError naming it, before any kernel runs (the fused terms gave it no gradient while the
    dense L1 and MSE terms did). Under torch.no_grad nothing is differentiated and it is taken."""
    from fused_losses.kernels.launch import launch_count

    dense = mode == "dense_mse"
    opts = dict(dense_hp=dense, mse_loss=dense, backend=backend)
    targets = pose_scene(21, dense_hp=dense, mse_loss=dense)
    h = {k: v.float().to(DEVICE) for k, v in pose_heads(21, targets, 1, dense)[0].items()}
    t = {k: v.to(DEVICE) for k, v in targets.items()}
    keys = ["hm", "wh", "reg", "reg_mask", "hm_hp", "hp_offset", "hp_mask"]
    keys += ["dense_hps", "dense_hps_mask"] if dense else ["hps", "hps_mask"]
    expected = fl.centernet_pose_loss(h, t, **opts)
    with monkeypatch.context() as patch:
        _no_kernel(patch)
        for key in keys:
            leaf = t[key].to(torch.float32, copy=True).requires_grad_()  # e.g. a teacher's
            soft = dict(t, **{key: leaf})
            pattern = rf"^targets\['{key}'\]: expected a tensor that does not require grad .*"
            with pytest.raises(ValueError, match=pattern + "requires grad: detach it$"):
                fl.centernet_pose_loss(h, soft, **opts)
            with pytest.raises(ValueError, match=pattern):
                fl.CenterNetPoseLoss(**opts)([h, h], soft)
        assert launch_count() == 0
    soft = {k: v.to(torch.float32, copy=True).requires_grad_() for k, v in t.items() if k in keys}
    with torch.no_grad():
        assert torch.equal(fl.centernet_pose_loss(h, dict(t, **soft), **opts), expected)


def test_mse_hm_hp_is_finite_where_the_reference_fits_float32(backend):
    """mse_loss: mean((hm_hp - t)^2) is finite wherever its float64 value fits float32: a raw
    logit of 2e19 squares past float32's max (4e38), its mean over 3200 cells does not (it was
    inf on both backends). Value and gradient against the float64 reference."""
    targets = pose_scene(22, mse_loss=True)
    heads = pose_heads(22, targets, 1, True)[0]
    heads["hm_hp"][0, 0, 7, 7] = 2e19
    heads["hm_hp"][1, 2, 3, 4] = -3e19
    ref_leaves = {k: v.clone().requires_grad_() for k, v in heads.items()}
    ref_total, ref_parts = RP.multi_pose_loss(ref_leaves, targets, mse_loss=True)
    ref_total.backward()
    assert float(ref_parts["hm_hp"].detach()) < 3.4e38
    leaves = {k: v.float().to(DEVICE).requires_grad_() for k, v in heads.items()}
    t = {k: v.to(DEVICE) for k, v in targets.items()}
    total, parts = fl.centernet_pose_loss(
        leaves, t, mse_loss=True, return_components=True, backend=backend
    )
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(parts["hm_hp"])
    assert_scalar_close(parts["hm_hp"], ref_parts["hm_hp"], 1e-5, "hm_hp")
    assert_scalar_close(total, ref_total, 1e-5, "total")
    for key, leaf in leaves.items():
        assert_grad_close(leaf.grad, ref_leaves[key].grad, 1e-5, f"grad {key}")


@pytest.mark.parametrize("shape", [(0, J), (2, 0)], ids=["B=0", "J=0"])
def test_mse_of_an_empty_map_is_zero(shape, backend):
    """mse_loss over an empty hm_hp (B = 0 or J = 0) is 0 with zero gradients (the count is
    clamped to 1; F.mse_loss, and so CenterNet, would give NaN): docs/centernet.md."""
    b, nj = shape
    hm_hp = torch.zeros(b, nj, 16, 20, device=DEVICE, requires_grad=True)
    targets = {
        "hm": torch.zeros(b, 1, 16, 20), "ind": torch.zeros(b, 0, dtype=torch.long),
        "reg_mask": torch.zeros(b, 0), "wh": torch.zeros(b, 0, 2), "reg": torch.zeros(b, 0, 2),
        "hps": torch.zeros(b, 0, 2 * nj), "hps_mask": torch.zeros(b, 0, 2 * nj),
        "hm_hp": torch.rand(b, nj, 16, 20), "hp_offset": torch.zeros(b, 0, 2),
        "hp_ind": torch.zeros(b, 0, dtype=torch.long), "hp_mask": torch.zeros(b, 0),
    }  # fmt: skip
    heads = {"hm": torch.full((b, 1, 16, 20), 0.5), "wh": torch.zeros(b, 2, 16, 20),
             "reg": torch.zeros(b, 2, 16, 20), "hps": torch.zeros(b, 2 * nj, 16, 20),
             "hp_offset": torch.zeros(b, 2, 16, 20)}  # fmt: skip
    heads = {k: v.to(DEVICE) for k, v in heads.items()}
    t = {k: v.to(DEVICE) for k, v in targets.items()}
    _, parts = fl.centernet_pose_loss(
        dict(heads, hm_hp=hm_hp), t, mse_loss=True, return_components=True, backend=backend
    )
    assert float(parts["hm_hp"]) == 0.0
    total = fl.centernet_pose_loss(dict(heads, hm_hp=hm_hp), t, mse_loss=True, backend=backend)
    total.backward()
    assert hm_hp.grad is not None and hm_hp.grad.shape == hm_hp.shape
