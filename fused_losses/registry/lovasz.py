"""Lovasz losses of the registry (SPEC 10.3, note S2): Berman et al.'s convex surrogates of the
Jaccard loss, with mmseg's semantics (``lovasz_loss.py`` @13bd768), without host synchronisation
or data-dependent shapes, so that they trace with ``torch.compile(fullgraph=True)``. The torch
backend is tensor ops (gradients by autograd); the triton one (``kernels/lovasz.py``) writes the
sort keys in one kernel, sorts them with ``torch.sort`` and forms the values and the gradient's
weights in one pass over the sorted rows, keeping one [B, C, M] tensor for the backward.

    LovaszLoss       p = softmax(x) over dim 1; class c: e_c = abs(t_c - p_c) over the valid
                     pixels sorted descending (pi), l_c = <e_c[pi], g(t_c[pi])>;
                     l = sum_c s_c w_c l_c / sum_c s_c (0 if no class is selected),
                     s_c = 1 for the classes "present" among the valid pixels, "all", or the
                     number of times c is listed in ``classes``
                     x [N,C,*], y [N,*] -> 0-dim over the batch, or [N] with ``per_image``
    LovaszHingeLoss  e = 1 - x (2t - 1) sorted descending, l = <relu(e[pi]), g(t[pi])>
                     x [N,*] or [N,1,*], y [N,*] in {0,1} -> 0-dim, or [N] with ``per_image``

``g`` is the gradient of the Lovasz extension of the Jaccard loss at the sorted labels (Berman,
Alg. 1): ``J_i = 1 - I_i/U_i`` for the first i+1 sorted pixels (I the foreground left out, U the
union), ``g_i = J_i - J_(i-1)``. It is computed in closed form from integer prefix counts,
``g_i = 1/U_i`` at a foreground pixel and ``I_(i-1)/(U_i U_(i-1))`` at a background one
(``1`` for the first pixel of a class with no foreground), which equals Berman's differences but
has no cancellation in float32.

No boolean indexing: every class is sorted over all the pixels at once (a [B,C,M] device sort
along the last axis, B = N per image or 1). Ignored pixels are foreground of no class and get the
sort key -1 (Lovasz-Softmax errors lie in [0, 1]) or -inf (hinge errors), so they come last, and
their error is 0: the value is exactly that of removing them (mmseg), and their gradient is 0
(the torch backend replaces their logits by 0, the kernels select them out and write a zero
gradient: a NaN/inf there changes nothing). An image of weight 0
(``per_image``; or the batch under a weight of 0) has its logits replaced by 0 before the formula
(docs/spec.md 12.2 rule 1).
An image (or batch) with no valid pixel, or no selected class, gives 0 with a zero gradient.
Labels other than ``ignore_index`` outside [0, C) are valid pixels of no class (mmseg). The
hinge's positives are the labels equal to 1. float16/bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..backend import compute_dtype, resolve_backend
from ..validation import check_bool, check_floating, check_tensor, shape_str
from .base_loss import BaseLoss
from .builder import LOSSES
from .classification import check_class_weight, check_ignore_index
from .dense import check_index_target, check_logits
from .segmentation import mask_zero_weight_images

KIND_SOFTMAX, KIND_HINGE = 0, 1  # kernels/lovasz.py

__all__ = ["LovaszHingeLoss", "LovaszLoss", "lovasz_grad", "lovasz_hinge", "lovasz_softmax"]


def lovasz_grad(fg_sorted: Tensor, dtype: torch.dtype) -> Tensor:
    """g [..., M] (``dtype``) of bool labels fg [..., M] sorted by decreasing error, along the last
    axis: ``g_i = J_i - J_(i-1)``, ``J_i = 1 - I_i/U_i = (i+1)/U_i``, ``I_i = G - F_i``,
    ``U_i = G + (i+1) - F_i`` (F the inclusive prefix count of fg, G its total), i.e.
    ``1/U_i`` where fg, else ``I_(i-1)/(U_i U_(i-1))`` (1 where ``U_(i-1) = 0``: the first
    pixel of a class with no foreground)."""
    m = fg_sorted.shape[-1]
    if m == 0:
        return torch.zeros(fg_sorted.shape, dtype=dtype, device=fg_sorted.device)
    count = torch.int64 if m >= 2**31 - 1 else torch.int32
    cf = torch.cumsum(fg_sorted, dim=-1, dtype=count)
    total = cf[..., -1:]
    rank = torch.arange(1, m + 1, dtype=count, device=fg_sorted.device)
    fg = fg_sorted.to(count)
    union = (total + rank - cf).to(dtype)  # U_i >= 1
    union_prev = union - (1 - fg).to(dtype)  # U_(i-1); 0 only at i = 0 when G = 0
    left_prev = (total - cf + fg).to(dtype)  # I_(i-1)
    first_empty = union_prev == 0
    bg = left_prev / (union * torch.where(first_empty, 1.0, union_prev))
    bg = torch.where(first_empty, 1.0, bg)
    return torch.where(fg_sorted, 1.0 / union, bg)


def _lovasz_sorted(key: Tensor, fg: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(errors sorted descending along the last axis, g of the labels in that order)."""
    key_sorted, perm = torch.sort(key, dim=-1, descending=True)
    return key_sorted, lovasz_grad(fg.gather(-1, perm), dtype)


def _rows_torch(
    x3: Tensor, lab: Tensor, *, kind: int, per_image: bool, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """(l [B, C]: the value of each class's row, G [B, C]: its foreground pixels) with tensor ops
    (autograd gives the gradient): logits x3 [N, C, S] (hinge: C = 1), labels lab [N, S]."""
    n, c, s = x3.shape
    dt = compute_dtype(x3.dtype)
    valid = (
        lab != ignore_index if ignore_index is not None else torch.ones_like(lab, dtype=torch.bool)
    )
    # an ignored pixel's logits are replaced by 0: a NaN/inf there reaches neither the value
    # nor the gradient (docs/spec.md 12.2 rule 1)
    x3 = torch.where(valid[:, None, :], x3, torch.zeros((), dtype=x3.dtype, device=x3.device))
    if kind == KIND_SOFTMAX:
        z = torch.softmax(x3.to(dt), dim=1)
        cls = torch.arange(c, device=x3.device).view(1, c, 1)
    else:
        z = x3.to(dt)
        cls = torch.ones((1, 1, 1), dtype=lab.dtype, device=x3.device)
    if not per_image:
        z = z.transpose(0, 1).reshape(1, c, n * s)
        lab, valid = lab.reshape(1, n * s), valid.reshape(1, n * s)
    fg = (lab[:, None, :] == cls) & valid[:, None, :]  # [B,C,M]
    if kind == KIND_SOFTMAX:
        err = (fg.to(dt) - z).abs()
        low = -1.0  # ignored: error 0, sorted last
    else:
        err = 1.0 - z * (2.0 * fg.to(dt) - 1.0)
        low = -math.inf  # ignored: sorted last, relu(-inf) = 0
    key = torch.where(valid[:, None, :], err, low)
    key_sorted, g = _lovasz_sorted(key, fg, dt)
    if kind == KIND_SOFTMAX:
        key_sorted = key_sorted.clamp_min(0.0)
    else:
        key_sorted = torch.relu(key_sorted)
    return (key_sorted * g).sum(-1), fg.sum(-1)


def lovasz_rows(
    x3: Tensor, lab: Tensor, *, kind: int, per_image: bool, ignore_index: int | None, backend: str
) -> tuple[Tensor, Tensor]:
    """(l [B, C], G [B, C]) on ``backend`` (``_rows_torch``; the triton one: one device sort and
    three passes, ``kernels/lovasz.py``)."""
    if resolve_backend(backend, x3.device) == "triton":
        from ..triton_lovasz import lovasz_rows_triton

        return lovasz_rows_triton(x3, lab, kind=kind, per_image=per_image,
                                  ignore_index=ignore_index)  # fmt: skip
    return _rows_torch(x3, lab, kind=kind, per_image=per_image, ignore_index=ignore_index)


def lovasz_softmax(
    x: Tensor,
    y: Tensor,
    *,
    classes: str | Sequence[int] | Tensor = "present",
    per_image: bool = False,
    class_weight: Tensor | None = None,
    ignore_index: int | None = 255,
    backend: str = "torch",
) -> Tensor:
    """Lovasz-Softmax of logits x [N,C,*] and labels y [N,*] (checked by the caller) -> 0-dim, or
    [N] with ``per_image`` (module docstring). ``classes``: "present", "all", or a [C] tensor of
    class multiplicities s_c; ``class_weight``: a [C] tensor or None."""
    n, c = x.shape[0], x.shape[1]
    s = math.prod(x.shape[2:])
    dt = compute_dtype(x.dtype)
    per_class, count = lovasz_rows(
        x.reshape(n, c, s), y.reshape(n, s), kind=KIND_SOFTMAX, per_image=per_image,
        ignore_index=ignore_index, backend=backend,
    )  # fmt: skip
    if isinstance(classes, Tensor):
        sel = classes.to(dt).view(1, c)
    elif classes == "present":
        sel = (count > 0).to(dt)
    else:  # "all"
        sel = torch.ones(1, c, dtype=dt, device=x.device)
    if class_weight is not None:
        per_class = per_class * class_weight.to(dt).view(1, c)
    den = sel.sum(-1).expand(per_class.shape[0])
    num = (sel * per_class).sum(-1)
    out = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return out if per_image else out.reshape(())


def lovasz_hinge(
    x: Tensor,
    y: Tensor,
    *,
    per_image: bool = False,
    ignore_index: int | None = 255,
    backend: str = "torch",
) -> Tensor:
    """Lovasz hinge of logits x [N,*] and labels y [N,*] (the same shape; positives y = 1) ->
    0-dim, or [N] with ``per_image`` (module docstring)."""
    n = x.shape[0]
    s = math.prod(x.shape[1:])
    out, _ = lovasz_rows(
        x.reshape(n, 1, s), y.reshape(n, s), kind=KIND_HINGE, per_image=per_image,
        ignore_index=ignore_index, backend=backend,
    )  # fmt: skip
    return out[:, 0] if per_image else out.reshape(())


def check_classes(value: Any) -> str | tuple[int, ...]:
    """ "present", "all", or a non-empty list of class indices (ints >= 0) -> a tuple."""
    if isinstance(value, str):
        if value not in ("present", "all"):
            raise ValueError(
                f"classes: expected 'present', 'all' or a list of class indices, got {value!r}"
            )
        return value
    if isinstance(value, Tensor):
        if value.dim() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise ValueError(
                f"classes: expected a 1-D integer tensor of class indices, got "
                f"{shape_str(value)} {value.dtype}"
            )
        value = value.tolist()
    if not isinstance(value, (list, tuple, range)):
        raise ValueError(
            f"classes: expected 'present', 'all' or a list of class indices, got "
            f"{type(value).__name__}"
        )
    if len(value) == 0:
        raise ValueError("classes: expected at least one class index, got an empty list")
    for i, k in enumerate(value):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"classes[{i}]: expected a class index (an int >= 0), got {k!r}")
    return tuple(value)


def _hinge_inputs(pred: Any, target: Any) -> tuple[Tensor, Tensor]:
    """(x [N,*], y [N,*]) from x [N,*] or [N,1,*] and labels of x's shape or [N,*]."""
    x = check_tensor("pred", pred)
    check_floating("pred", x)
    if x.dim() < 1:
        raise ValueError(f"pred: expected shape [N, *] or [N, 1, *], got {shape_str(x)}")
    y = check_tensor("target", target)
    if y.is_floating_point() or y.is_complex():
        raise TypeError(f"target: expected integer (or bool) labels in {{0, 1}}, got {y.dtype}")
    if y.shape != x.shape:
        squeezable = x.dim() >= 2 and x.shape[1] == 1
        if not (squeezable and y.shape == (x.shape[0], *x.shape[2:])):
            want = f"{shape_str(x)}" + (
                f" or [{', '.join(map(str, (x.shape[0], *x.shape[2:])))}]" if squeezable else ""
            )
            raise ValueError(f"target: expected shape {want} (pred's), got {shape_str(y)}")
        x = x.squeeze(1)
    if y.device != x.device:
        raise ValueError(f"target: expected a tensor on {x.device}, got one on {y.device}")
    return x, y


class _LovaszBase(BaseLoss):
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._vectors: dict[tuple, Tensor] = {}

    def _mask_inputs(self, pred: Any, target: Any, weight: Any) -> tuple[Any, Any]:
        """An image of weight 0 (``per_image``; else the batch, under a 0-dim weight of 0) has
        its logits replaced by 0 before the formula (docs/spec.md 12.2 rule 1)."""
        return mask_zero_weight_images(pred, target, weight, bool(self.options["per_image"]))

    def _vector(self, name: str, values: Sequence[float], like: Tensor) -> Tensor:
        """A per-class option as a tensor on ``like``'s device, cached (no copy per call) under
        its values (the class counts of ``classes`` depend on the call's C)."""
        dt = compute_dtype(like.dtype)
        key = (name, like.device, dt, tuple(float(u) for u in values))
        vec = self._vectors.get(key)
        if vec is None:
            vec = torch.tensor([float(u) for u in values], dtype=dt, device=like.device)
            self._vectors[key] = vec
        return vec


@LOSSES.register_module(name=["LovaszLoss"])
class LovaszLoss(_LovaszBase):
    """Lovasz-Softmax (Berman et al., mmseg): x [N,C,*] logits, y [N,*] labels -> 0-dim, or [N]
    with ``per_image`` (one value per image, 0 for an image with no valid pixel). Options:
    per_image False, classes "present" ("all" or a list of class indices), ignore_index 255
    (also per call), class_weight None (C numbers)."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "per_image": False, "classes": "present", "ignore_index": 255, "class_weight": None,
    }  # fmt: skip

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_bool("per_image", options["per_image"])
        options["classes"] = check_classes(options["classes"])
        options["ignore_index"] = check_ignore_index(options["ignore_index"])
        check_class_weight(options)

    def _forward(self, pred: Tensor, target: Any, **options: Any) -> tuple[Tensor, None]:
        x = check_logits(pred)
        y = check_index_target(target, x)
        ig = check_ignore_index(options["ignore_index"])
        c = x.shape[1]
        classes = options["classes"]
        if not isinstance(classes, str):
            bad = [k for k in classes if k >= c]
            if bad:
                raise ValueError(f"classes: expected class indices in [0, {c}), got {bad[0]}")
            counts = [0.0] * c
            for k in classes:
                counts[k] += 1.0
            classes = self._vector("classes", counts, x)
        cw = options["class_weight"]
        if cw is not None:
            n_cw = cw.numel() if isinstance(cw, Tensor) else len(cw)
            if n_cw != c:
                raise ValueError(f"class_weight: expected {c} values (one per class), got {n_cw}")
            if isinstance(cw, Tensor):
                if cw.device != x.device:
                    raise ValueError(
                        f"class_weight: expected a tensor on {x.device}, got one on {cw.device}"
                    )
                cw = cw.detach()
            else:
                cw = self._vector("class_weight", cw, x)
        loss = lovasz_softmax(
            x, y, classes=classes, per_image=options["per_image"], class_weight=cw,
            ignore_index=ig, backend=self.backend,
        )  # fmt: skip
        return loss, None


@LOSSES.register_module(name=["LovaszHingeLoss"])
class LovaszHingeLoss(_LovaszBase):
    """Lovasz hinge (Berman et al., mmseg ``loss_type="binary"``): x [N,*] or [N,1,*] logits,
    y [N,*] labels in {0,1} -> 0-dim, or [N] with ``per_image``. Options: per_image False,
    ignore_index 255 (also per call)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"per_image": False, "ignore_index": 255}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_bool("per_image", options["per_image"])
        options["ignore_index"] = check_ignore_index(options["ignore_index"])

    def _forward(self, pred: Tensor, target: Any, **options: Any) -> tuple[Tensor, None]:
        x, y = _hinge_inputs(pred, target)
        ig = check_ignore_index(options["ignore_index"])
        loss = lovasz_hinge(
            x, y, per_image=options["per_image"], ignore_index=ig, backend=self.backend
        )
        return loss, None
