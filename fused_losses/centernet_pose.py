"""CenterNet's multi-pose loss (``MultiPoseLoss``, docs/centernet.md "Multi-pose"): six terms over
CenterNet's batch dict, averaged over the stacks of the network.

Per stack s, with the shared targets t:

    hm        = centernet_focal_loss(hm_s, t.hm)
    wh        = crit_reg(wh_s, t.reg_mask, t.ind, t.wh)                  if wh_weight > 0
    off       = crit_reg(reg_s, t.reg_mask, t.ind, t.reg)                if reg_offset, off_weight > 0
    hp        = reg_weighted_l1_loss(hps_s, t.hps_mask, t.ind, t.hps), or with dense_hp
                sum |hps_s M - t.dense_hps M| / (sum M + 1e-4), M = t.dense_hps_mask
    hm_hp     = centernet_focal_loss(hm_hp_s, t.hm_hp), or with mse_loss mean((hm_hp_s - t.hm_hp)^2)
                = sum(((hm_hp_s - t.hm_hp) / sqrt(n))^2), 0 for n = 0   if hm_hp, hm_hp_weight > 0
    hp_offset = crit_reg(hp_offset_s, t.hp_mask, t.hp_ind, t.hp_offset)  if reg_hp_offset (forced
                off without hm_hp), off_weight > 0
    crit_reg  = reg_l1_loss ("l1") or reg_smooth_l1_loss ("sl1")
    total = hm_weight hm + wh_weight wh + off_weight off + hp_weight hp + hm_hp_weight hm_hp
            + off_weight hp_offset            (each term averaged over the S stacks)

The focal and gathered-regression terms are the fused ops of ``centernet.py`` (both backends); the
dense L1 and the MSE are single-pass PyTorch reductions with autograd. A term that does not run
is 0 and its head may be absent. The targets are constants: one that requires grad is refused
(docs/spec.md 8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .centernet import CENTERNET_FOCAL, REG_EPS, _reg_loss, check_constant
from .centernet_labels import AREA_LIMIT
from .centernet_pose_labels import centernet_pose_targets, check_hm_gauss
from .distributed import active_group, denominator_sync, global_loss
from .focal import focal_share
from .options import LossModule, LossOptions
from .validation import (
    INT_LIMIT,
    check_bool,
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

POSE_COMPONENTS = ("hm", "wh", "off", "hp", "hm_hp", "hp_offset")
WEIGHT_NAMES = ("hm_weight", "wh_weight", "off_weight", "hp_weight", "hm_hp_weight")
WEIGHT_LIMIT = 1e30  # |weight|: finite in float32 (max about 3.4e38) with room for the term


@dataclasses.dataclass(frozen=True)
class CenterNetPoseOptions(LossOptions):
    """Options of :class:`CenterNetPoseLoss`, named and defaulted as CenterNet's ``opts.py``: the
    term weights, the switches ``hm_hp``, ``reg_offset``, ``reg_hp_offset``, ``dense_hp``,
    ``mse_loss``, the regression loss ``reg_loss`` (``"l1"`` or ``"sl1"``)."""

    hm_weight: float = 1.0
    wh_weight: float = 0.1
    off_weight: float = 1.0
    hp_weight: float = 1.0
    hm_hp_weight: float = 1.0  # the weights: numbers in [-1e30, 1e30]
    hm_hp: bool = True
    reg_offset: bool = True
    reg_hp_offset: bool = True
    dense_hp: bool = False
    mse_loss: bool = False
    reg_loss: str = "l1"
    down_ratio: int = 4
    hm_gauss: float | None = None  # None, or a number in [1e-6, 1e4] (HM_GAUSS_RANGE)

    def validate(self) -> None:
        for name in WEIGHT_NAMES:
            value = check_number(name, getattr(self, name))
            if not abs(value) <= WEIGHT_LIMIT:
                raise ValueError(
                    f"{name}: expected a number in [-1e30, 1e30] (finite in float32), "
                    f"got {getattr(self, name)!r}"
                )
            self._set(name, value)
        for name in ("hm_hp", "reg_offset", "reg_hp_offset", "dense_hp", "mse_loss"):
            check_bool(name, getattr(self, name))
        check_choice("reg_loss", self.reg_loss, ("l1", "sl1"))
        self._set("down_ratio", check_positive_int("down_ratio", self.down_ratio))
        if self.hm_gauss is not None:
            self._set("hm_gauss", check_hm_gauss(self.hm_gauss))

    def runs(self) -> dict[str, bool]:
        """Which terms run (CenterNet's gates; ``reg_hp_offset`` is off without ``hm_hp``)."""
        return {
            "hm": True,
            "wh": self.wh_weight > 0,
            "off": self.reg_offset and self.off_weight > 0,
            "hp": True,
            "hm_hp": self.hm_hp and self.hm_hp_weight > 0,
            "hp_offset": self.reg_hp_offset and self.hm_hp and self.off_weight > 0,
        }


# The heads each term reads, and the target keys.
_HEADS = {
    "hm": "hm",
    "wh": "wh",
    "off": "reg",
    "hp": "hps",
    "hm_hp": "hm_hp",
    "hp_offset": "hp_offset",
}


def _target_keys(opts: CenterNetPoseOptions) -> list[str]:
    runs = opts.runs()
    keys = ["hm", "ind"]
    if runs["wh"] or runs["off"]:
        keys += ["reg_mask"] + (["wh"] if runs["wh"] else []) + (["reg"] if runs["off"] else [])
    keys += ["dense_hps", "dense_hps_mask"] if opts.dense_hp else ["hps", "hps_mask"]
    if runs["hm_hp"]:
        keys.append("hm_hp")
    if runs["hp_offset"]:
        keys += ["hp_offset", "hp_ind", "hp_mask"]
    return keys


def _heads_read(opts: CenterNetPoseOptions) -> list[str]:
    """The heads the terms that run read (``hm`` first); any other key of a stack is ignored."""
    return [_HEADS[name] for name, on in opts.runs().items() if on]


def _stacks(outputs: Any) -> list[dict[str, Any]]:
    """``outputs`` as a list of stacks, each a dict of heads (one dict: one stack)."""
    if isinstance(outputs, dict):
        return [outputs]
    if not isinstance(outputs, (list, tuple)) or not outputs:
        got = type(outputs).__name__
        if isinstance(outputs, (list, tuple)):
            got = f"an empty {got}"
        raise TypeError(
            f"outputs: expected a dict of heads or a non-empty list of them (stacks), got {got}"
        )
    for s, out in enumerate(outputs):
        if not isinstance(out, dict):
            raise TypeError(f"outputs[{s}]: expected a dict of heads, got {type(out).__name__}")
    return list(outputs)


def _check_present(s: int, out: dict[str, Any], need: list[str]) -> None:
    absent = [h for h in need if h not in out]
    if absent:
        raise ValueError(f"outputs[{s}]: missing heads {absent}")


def _expect_shape(
    name: str, x: torch.Tensor, expected: list, labels: list[str], note: str, *sources: Any
) -> None:
    """``check_shape`` with the message built only on error (no text of a symbolic size while
    torch.compile traces): ``expected`` per dim an int or None (any), ``labels`` its prefix or,
    for None, its name; ``sources`` the tensors (name, tensor) whose shapes ``note`` refers to."""
    if x.dim() != len(expected) or any(e is not None and e != d for e, d in zip(expected, x.shape)):
        dims = ", ".join(lab if e is None else f"{lab}{e}" for e, lab in zip(expected, labels))
        src = ", ".join(f"{n} {shape_str(t)}" for n, t in sources)
        raise ValueError(f"{name}: expected shape [{dims}] ({note}{src}), got {shape_str(x)}")


def check_raw_heads(
    stacks: list[dict[str, Any]], boxes: Any, keypoints: Any, opts: CenterNetPoseOptions
) -> None:
    """The heads read, checked against raw ``boxes`` [B, N, 4] and ``keypoints`` [B, N, J, 3]
    before any target is built: each a floating tensor on the boxes' device; stack 0's ``hm``
    [B, K, H, W] sets K and the map size (K, H, W in [1, 65536], H W <= 2^30); in every stack
    ``hm`` [B, K, H, W], ``wh``, ``reg``, ``hp_offset`` [B, 2, H, W], ``hps`` [B, 2J, H, W] and
    ``hm_hp`` [B, J, H, W] (J in [1, 65536])."""
    check_tensor("boxes", boxes)
    check_shape("boxes", boxes, [None, None, 4], "[B, N, 4] (x1, y1, x2, y2)")
    check_tensor("keypoints", keypoints)
    check_shape("keypoints", keypoints, [None, None, None, 3], "[B, N, J, 3]")
    b, nj = boxes.shape[0], keypoints.shape[2]
    if not 0 < nj <= INT_LIMIT:
        raise ValueError(
            f"keypoints: expected [B, N, J, 3] with J in [1, {INT_LIMIT}], "
            f"got {shape_str(keypoints)}"
        )
    channels = {"wh": (2, ""), "reg": (2, ""), "hp_offset": (2, ""), "hps": (2 * nj, "2J = "),
                "hm_hp": (nj, "J = ")}  # fmt: skip
    from_boxes, hm0 = ("boxes", boxes), ("outputs[0]['hm']", stacks[0].get("hm"))
    need = _heads_read(opts)
    for s, out in enumerate(stacks):
        _check_present(s, out, need)
        for head in need:
            name, x = f"outputs[{s}]['{head}']", out[head]
            check_tensor(name, x)
            check_floating(name, x)
            if head == "hm" and s == 0:
                _expect_shape(name, x, [b, None, None, None], ["", "K", "H", "W"], "B from ",
                              from_boxes)  # fmt: skip
                k, h, w = x.shape[1:]
                if not (0 < k <= INT_LIMIT and 0 < h <= INT_LIMIT and 0 < w <= INT_LIMIT) or (
                    h * w > AREA_LIMIT
                ):
                    raise ValueError(
                        f"{name}: expected K, H, W in [1, {INT_LIMIT}] with H * W <= 2^30 (the "
                        f"classes and map size of the targets), got {shape_str(x)}"
                    )
            elif head == "hm":
                _expect_shape(name, x, [b, k, h, w], [""] * 4, "like ", hm0)
            else:
                c, what = channels[head]
                _expect_shape(name, x, [b, c, h, w], ["", what, "", ""], "B, J, H, W from ",
                              from_boxes, ("keypoints", keypoints), hm0)  # fmt: skip
            if x.device != boxes.device:
                raise ValueError(
                    f"{name}: expected a tensor on {boxes.device} (like boxes), got one on "
                    f"{x.device}"
                )


def check_pose_inputs(
    outputs: Any, targets: Any, opts: CenterNetPoseOptions
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """(the stacks, the targets used), every tensor checked before any kernel runs. Only the
    heads and target keys that the terms which run read are checked (others are ignored).

    Stack 0's ``hm`` [B, K, H, W] sets the map. The targets are checked against it and against
    each other, each error naming the target: ``targets['hm']`` [B, K, H, W], ``ind`` [B, M],
    ``reg_mask`` [B, M], ``wh``, ``reg`` [B, M, 2], ``hps``, ``hps_mask`` [B, M, 2J], ``hm_hp``
    [B, J, H, W], ``hp_ind``, ``hp_mask`` [B, MJ], ``hp_offset`` [B, MJ, 2], ``dense_hps``,
    ``dense_hps_mask`` [B, 2J, H, W] (2J and J as the targets have them), each a constant (no
    grad, :func:`check_constant`) on ``targets['hm']``'s device. Then every head read, in every
    stack, against those shapes and that device, each error naming the head with its stack
    (``outputs[s]['wh']``): all heads share ``hm``'s map size [B, C, H, W], since ``ind`` and
    ``hp_ind`` index that map."""
    stacks = _stacks(outputs)
    if not isinstance(targets, dict):
        raise TypeError(f"targets: expected a dict, got {type(targets).__name__}")
    runs = opts.runs()
    missing = [k for k in _target_keys(opts) if k not in targets]
    if missing:
        raise ValueError(f"targets: missing keys {missing} (for the options given)")
    t = {k: targets[k] for k in _target_keys(opts)}
    need = _heads_read(opts)
    for s, out in enumerate(stacks):
        _check_present(s, out, need)
    hm0 = ("outputs[0]['hm']", stacks[0]["hm"])
    check_tensor(*hm0)
    check_floating(*hm0)
    check_shape(*hm0, [None, None, None, None], "[B, K, H, W]")
    b, k, h, w = hm0[1].shape

    def named(key: str) -> tuple[str, Any]:
        return f"targets['{key}']", t[key]

    def target(key: str, expected: list, labels: list[str], note: str, *sources: Any):
        name, x = named(key)
        check_tensor(name, x)
        (check_integer if key in ("ind", "hp_ind") else check_real)(name, x)
        _expect_shape(name, x, expected, labels, note, *sources)
        check_constant(name, x)
        return x.shape

    target("hm", [b, k, h, w], [""] * 4, "like ", hm0)
    m = target("ind", [b, None], ["", "M"], "B from ", hm0)[1]
    if runs["wh"] or runs["off"]:
        target("reg_mask", [b, m], ["", ""], "B, M from ", hm0, named("ind"))
    for key, term in (("wh", "wh"), ("reg", "off")):
        if runs[term]:
            target(key, [b, m, 2], ["", "", ""], "B, M from ", hm0, named("ind"))
    if opts.dense_hp:
        hps_key = "dense_hps"
        c_hps = target(hps_key, [b, None, h, w], ["", "2J", "", ""], "B, H, W from ", hm0)[1]
        target("dense_hps_mask", [b, c_hps, h, w], [""] * 4, "like ", named(hps_key))
    else:
        hps_key = "hps"
        c_hps = target(hps_key, [b, m, None], ["", "", "2J"], "B, M from ", hm0, named("ind"))[2]
        target("hps_mask", [b, m, c_hps], [""] * 3, "like ", named(hps_key))
    if runs["hm_hp"]:
        target("hm_hp", [b, None, h, w], ["", "J", "", ""], "B, H, W from ", hm0)
    if runs["hp_offset"]:
        mj = target("hp_ind", [b, None], ["", "MJ"], "B from ", hm0)[1]
        target("hp_mask", [b, mj], ["", ""], "B, MJ from ", hm0, named("hp_ind"))
        target("hp_offset", [b, mj, 2], ["", "", ""], "B, MJ from ", hm0, named("hp_ind"))
    device = check_same_device({f"targets['{key}']": x for key, x in t.items()})  # hm's

    # The heads of every stack, against hm's map and the targets' channels.
    expect = {
        "hm": ([b, k, h, w], [""] * 4, "like ", hm0),
        "wh": ([b, 2, h, w], [""] * 4, "B, H, W from ", hm0),
        "reg": ([b, 2, h, w], [""] * 4, "B, H, W from ", hm0),
        "hp_offset": ([b, 2, h, w], [""] * 4, "B, H, W from ", hm0),
        "hps": ([b, c_hps, h, w], ["", "2J = ", "", ""], "B, H, W, 2J from ", hm0,
                named(hps_key)),
    }  # fmt: skip
    if runs["hm_hp"]:
        expect["hm_hp"] = ([b, t["hm_hp"].shape[1], h, w], ["", "J = ", "", ""],
                           "B, J, H, W from ", named("hm_hp"))  # fmt: skip
    for s, out in enumerate(stacks):
        for head in need:
            name, x = f"outputs[{s}]['{head}']", out[head]
            check_tensor(name, x)
            check_floating(name, x)
            if s > 0 or head != "hm":
                _expect_shape(name, x, *expect[head])
            if x.device != device:
                raise ValueError(
                    f"{name}: expected a tensor on {device} (like targets['hm']), got one on "
                    f"{x.device}"
                )
    return stacks, t


def _dense_l1_share(hps: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, group: Any):
    """sum |hps M - target M| / (sum M + 1e-4) (``sync``: sum M over the ranks)."""
    sync = denominator_sync(group)
    cdt = torch.float64 if hps.dtype == torch.float64 else torch.float32
    m = mask.to(cdt)
    msum = m.sum()
    denom = (sync(msum) if sync is not None else msum) + REG_EPS
    return ((hps.to(cdt) - target.to(cdt)) * m).abs().sum() / denom


def _mse_share(pred: torch.Tensor, target: torch.Tensor, group: Any):
    """mean((pred - target)^2) over every element (n: the count over the ranks; an empty map
    gives 0), as sum(((pred - target) / sqrt(n))^2): no square overflows where the mean is
    finite in float32 (each term is at most the mean), and plain autograd keeps it exact to
    second order."""
    sync = denominator_sync(group)
    cdt = torch.float64 if pred.dtype == torch.float64 else torch.float32
    n = torch.full((), float(pred.numel()), dtype=cdt, device=pred.device)  # (no H2D copy)
    root = (sync(n) if sync is not None else n).clamp_min(1).sqrt()
    return ((pred.to(cdt) - target.to(cdt)) / root).square().sum()


def centernet_pose_loss(
    outputs: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
    targets: dict[str, torch.Tensor] | None = None,
    *,
    boxes: torch.Tensor | None = None,
    keypoints: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    return_components: bool = False,
    options: CenterNetPoseOptions | None = None,
    **overrides: Any,
):
    """Functional form of :class:`CenterNetPoseLoss`: the same inputs; the options as keywords
    (the fields of :class:`CenterNetPoseOptions`) or as a built ``options`` object."""
    opts = CenterNetPoseOptions.build(options, overrides)
    check_bool("return_components", return_components)
    if (targets is None) == (boxes is None):
        raise ValueError("targets, boxes: give exactly one of them (a target dict or raw boxes)")
    if targets is None:
        if keypoints is None:
            raise ValueError("keypoints: required with boxes")
        stacks = _stacks(outputs)
        check_raw_heads(stacks, boxes, keypoints, opts)  # before any target is built
        k, h, w = stacks[0]["hm"].shape[1:]
        targets = centernet_pose_targets(
            boxes, keypoints, labels, box_mask, num_classes=k, num_joints=keypoints.shape[2],
            output_size=(h, w), down_ratio=opts.down_ratio, dense_hp=opts.dense_hp,
            mse_loss=opts.mse_loss, hm_gauss=opts.hm_gauss, backend=opts.backend,
        )  # fmt: skip
    elif labels is not None or box_mask is not None or keypoints is not None:
        raise ValueError("keypoints, labels, box_mask: only with boxes, not with targets")
    stacks, t = check_pose_inputs(outputs, targets, opts)
    group = active_group(opts)
    runs = opts.runs()
    backend, smooth = opts.backend, opts.reg_loss == "sl1"
    focal = CENTERNET_FOCAL.replace(backend=backend)
    terms: dict[str, torch.Tensor] = {}
    for out in stacks:
        parts = {"hm": focal_share(out["hm"], t["hm"], None, focal, group)}
        if runs["wh"]:
            parts["wh"] = _reg_loss(out["wh"], t["reg_mask"], t["ind"], t["wh"], False, backend,
                                    group, smooth)  # fmt: skip
        if runs["off"]:
            parts["off"] = _reg_loss(out["reg"], t["reg_mask"], t["ind"], t["reg"], False,
                                     backend, group, smooth)  # fmt: skip
        if opts.dense_hp:
            parts["hp"] = _dense_l1_share(out["hps"], t["dense_hps"], t["dense_hps_mask"], group)
        else:
            parts["hp"] = _reg_loss(out["hps"], t["hps_mask"], t["ind"], t["hps"], True, backend,
                                    group)  # fmt: skip
        if runs["hm_hp"]:
            if opts.mse_loss:
                parts["hm_hp"] = _mse_share(out["hm_hp"], t["hm_hp"], group)
            else:
                parts["hm_hp"] = focal_share(out["hm_hp"], t["hm_hp"], None, focal, group)
        if runs["hp_offset"]:
            parts["hp_offset"] = _reg_loss(out["hp_offset"], t["hp_mask"], t["hp_ind"],
                                           t["hp_offset"], False, backend, group, smooth)  # fmt: skip
        for name, value in parts.items():
            value = value / len(stacks) if len(stacks) > 1 else value
            terms[name] = terms[name] + value if name in terms else value
    like = terms["hm"]
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    weights = {
        "hm": opts.hm_weight, "wh": opts.wh_weight, "off": opts.off_weight,
        "hp": opts.hp_weight, "hm_hp": opts.hm_hp_weight, "hp_offset": opts.off_weight,
    }  # fmt: skip
    total = sum(weights[name] * value for name, value in terms.items())
    comps = torch.stack([terms[n].detach() if n in terms else zero for n in POSE_COMPONENTS])
    total, comps = global_loss(total, group, comps)
    if not return_components:
        return total
    return total, dict(zip(POSE_COMPONENTS, comps.unbind(0)))


class CenterNetPoseLoss(LossModule):
    """CenterNet's multi-pose loss (``MultiPoseLoss``), fused term by term.

    ``CenterNetPoseLoss(**options)`` with the fields of :class:`CenterNetPoseOptions`
    (``hm_weight=1.0, wh_weight=0.1, off_weight=1.0, hp_weight=1.0, hm_hp_weight=1.0, hm_hp=True,
    reg_offset=True, reg_hp_offset=True, dense_hp=False, mse_loss=False, reg_loss="l1",
    down_ratio=4, hm_gauss=None, backend="auto", reduce_across_ranks=False,
    process_group=None``), called as
    ``criterion(outputs, targets=None, *, boxes=None, keypoints=None, labels=None,
    box_mask=None, return_components=False)``: ``outputs`` a dict of heads or a
    list of them, one per stack: ``hm`` [B,K,H,W] and (focal mode) ``hm_hp`` [B,J,H,W] as
    clamped-sigmoid probabilities (:func:`clamped_sigmoid`), ``hm_hp`` raw with ``mse_loss``;
    ``wh``, ``reg``, ``hp_offset`` [B,2,H,W]; ``hps`` [B,2J,H,W]. ``targets``: CenterNet's batch
    dict (``hm wh reg ind reg_mask hps hps_mask hm_hp hp_offset hp_ind hp_mask``, with
    ``dense_hp`` ``dense_hps dense_hps_mask`` instead of ``hps hps_mask``; extra keys ignored;
    constants: a target that requires grad is refused; checked against stack 0's ``hm``, then
    every head read against them, all heads of ``hm``'s map size, see :func:`check_pose_inputs`),
    or raw ``boxes`` [B,N,4], ``keypoints`` [B,N,J,3] (x, y, v) input pixels, ``labels`` and
    ``box_mask`` [B,N], from which :func:`centernet_pose_targets` builds them on the device
    (the heads read are checked against the boxes and keypoints first: floating, on the boxes'
    device, stack 0's ``hm`` setting B = the boxes' batch, K, H, W, every other head read
    [B,C,H,W] with C as above; a head that no running term reads is ignored). The weights are
    numbers in [-1e30, 1e30], ``hm_gauss`` one in [1e-6, 1e4] (the msra sigma of the targets
    built with ``mse_loss``; ``down_ratio``: input pixels per map cell, for raw boxes). Returns
    the total, and with ``return_components=True`` ``(total, {"hm", "wh", "off", "hp", "hm_hp",
    "hp_offset"})`` with detached 0-dim terms (0 for a term that does not run).
    """

    Options = CenterNetPoseOptions

    def forward(
        self,
        outputs: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
        targets: dict[str, torch.Tensor] | None = None,
        *,
        boxes: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        return_components: bool = False,
    ):
        return centernet_pose_loss(
            outputs, targets, boxes=boxes, keypoints=keypoints, labels=labels,
            box_mask=box_mask, return_components=return_components, options=self.options,
        )  # fmt: skip
