"""Reference classification losses of the registry (SPEC 10.1): the elementwise loss ``l`` of each
row (no reduction: :func:`..utils.reduce_with_validity` applies SPEC 9.2's rules).

Notation (SPEC 10): x logits [N,C,*] (class axis dim 1), y index targets [N,*], p = softmax(x) over
dim 1, t the one-hot of y, BCE(x, y) = -y log sig(x) - (1 - y) log(1 - sig(x)) with logsigmoid,
w_c the class weight (1 when absent, on dim 1). The losses that have an ``ignore_index`` return
``(l, v)`` with v the validity mask; the others return ``l``. A masked element of ``l`` is set to
an exact 0 here too (``torch.where``), so ``"none"`` of ``l`` alone already matches torch.

Choices where SPEC 10.1 is silent or ambiguous:

- Validity: ``v = y != ignore_index`` in y's shape ([N,*] for index targets: the rules insert the
  class axis, so an [N,C,*] loss counts C per valid position), and for index targets also
  ``0 <= y < C`` (softmax: CE, label smoothing, softmax focal) or ``0 <= y <= C`` (sigmoid: BCE
  with C > 1, sigmoid focal; label C is the background, a zero row), as both backends: a label
  outside its range contributes 0 and is not counted. ``ignore_index=None`` -> ``v`` is None (no
  mask: "mean" is then sum / numel, ``F.cross_entropy``'s unweighted mean), an out-of-range label
  still contributing 0.
- Sigmoid losses (BCE, sigmoid FocalLoss, BinaryFocalLoss) with a target of x's shape ignore
  elementwise, ``v = y != ignore_index`` (mmdet 3.x / mmseg 1.x ``binary_cross_entropy``; mmseg
  also drops ``y < 0``, not done here: SPEC 9.2 says ``target != ignore_index``). The target of an
  invalid element is replaced by 0 before the formula so that ``l`` is finite there.
- BCE index targets y [N,*]: C > 1 -> t = one-hot (label C gives a zero row, mmseg's
  ``_expand_onehot_labels``; labels outside [0, C] are invalid, see Validity); C = 1 -> t = y
  itself (binary label map, no range). ``pos_weight``
  also applies with ``with_logits=False``: -pw y clamp(log x, -100) - (1-y) clamp(log(1-x), -100).
- Sigmoid FocalLoss index targets y in [0, C] use the one-hot t (label C = background, a zero row:
  mmdet), also for C = 1 (label 0 is then the foreground, label 1 the background).
- FocalLoss alpha: a float or C values on the class axis. Sigmoid: a_t = alpha_c t + (1 -
  alpha_c)(1 - t) (mmseg's list alpha). Softmax: alpha_y multiplies the true class's term (a float
  alpha is a constant factor, as kornia's softmax focal loss); a one-hot/soft target of x's shape
  gives -sum_c t_c w_c alpha_c (1 - p_c)^gamma log p_c (kornia), which is the row for a one-hot t;
  such a target has no index to ignore, so v is None (ignore through ``weight``).
- Softmax FocalLoss and CrossEntropy multiply by w_y (the class weight of the true class).
- AsymmetricLoss follows timm: the clamps are ``torch.clamp`` (their gradient at the bound as
  torch's), and the focusing weight is applied only when gamma_neg > 0 or gamma_pos > 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .utils import bce_with_logits, convert_to_one_hot, on_dim1

__all__ = [
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_focal_loss",
    "cross_entropy",
    "focal_loss",
    "label_smooth_loss",
    "multi_label_focal_loss",
    "soft_cross_entropy",
]


def _class_weight(class_weight, x: torch.Tensor) -> torch.Tensor:
    """w_c on x's class axis ([1,C,1,...]), or 1."""
    if class_weight is None:
        return torch.ones((), dtype=x.dtype, device=x.device)
    return on_dim1(class_weight, x)


def _validity(y: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    """v = y != ignore_index (None when ignore_index is None)."""
    return None if ignore_index is None else y != ignore_index


def _index_validity(
    y: torch.Tensor, ignore_index: int | None, high: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ok, v) of index labels: ok = (0 <= y < high) & (y != ignore_index), the labels that
    contribute; v = ok, or None when ignore_index is None (no mask for "mean")."""
    ok = (y >= 0) & (y < high)
    if ignore_index is not None:
        ok = ok & (y != ignore_index)
    return ok, (ok if ignore_index is not None else None)


def _gather_dim1(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[n, index[n, *], *]: [N,C,*] at an [N,*] index -> [N,*]."""
    return values.gather(1, index.unsqueeze(1)).squeeze(1)


def cross_entropy(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    class_weight=None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """l = (1 - e) w_y (-log p_y) + (e/C) sum_c w_c (-log p_c); x [N,C,*], y [N,*] -> l [N,*].

    torch ``cross_entropy(reduction="none")`` elementwise (label smoothing e with class weights as
    aten's formula); ignored positions (v false) have l = 0.
    """
    num_classes = x.shape[1]
    e = label_smoothing
    ok, v = _index_validity(y, ignore_index, num_classes)
    y_safe = torch.where(ok, y, 0)
    log_p = F.log_softmax(x, dim=1)  # [N,C,*]
    w = _class_weight(class_weight, x).expand_as(x)  # [N,C,*]
    w_y = _gather_dim1(w, y_safe)  # [N,*]
    nll_y = -_gather_dim1(log_p, y_safe)  # -log p_y
    loss = (1 - e) * w_y * nll_y
    if e != 0:  # as torch: no smoothing term without smoothing (a -inf logit stays finite)
        smooth = (w * -log_p).sum(dim=1)  # sum_c w_c (-log p_c)
        loss = loss + (e / num_classes) * smooth
    loss = torch.where(ok, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return loss, v


def label_smooth_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    smoothing: float = 0.1,
    num_classes: int | None = None,
    class_weight=None,
    ignore_index: int | None = -100,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """l = -sum_c w_c q_c log p_c with the smoothed target q = (1 - e) t + e/C (the seed's
    "original" smoothing), which equals :func:`cross_entropy` with label_smoothing = e;
    x [N,C,*], y [N,*] -> l [N,*]. ``num_classes`` other than None or C -> ValueError."""
    c = x.shape[1]
    if num_classes is not None and num_classes != c:
        raise ValueError(f"num_classes={num_classes} but the logits have C={c} classes")
    e = smoothing
    ok, v = _index_validity(y, ignore_index, c)
    t = convert_to_one_hot(y, c, ignore_index, dtype=x.dtype)  # [N,C,*]
    q = (1 - e) * t + e / c
    w = _class_weight(class_weight, x)
    loss = -(w * q * F.log_softmax(x, dim=1)).sum(dim=1)
    loss = torch.where(ok, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return loss, v


def soft_cross_entropy(x: torch.Tensor, y: torch.Tensor, *, class_weight=None) -> torch.Tensor:
    """l = -sum_c w_c y_c log p_c; x, y [N,C,*] (y probabilities) -> l [N,*]."""
    w = _class_weight(class_weight, x)
    return -(w * y.to(x.dtype) * F.log_softmax(x, dim=1)).sum(dim=1)


def binary_cross_entropy(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    pos_weight=None,
    with_logits: bool = True,
    class_weight=None,
    ignore_index: int | None = -100,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """l = w_c (-pw_c y log sig(x) - (1 - y) log(1 - sig(x))) -> [N,C,*].

    x [N,C,*]; y of x's shape (0/1 or soft), or index targets y [N,*] (C > 1: one-hot; C = 1: y
    itself). ``with_logits=False``: x is a probability and each log is clamped at -100 (torch).
    pos_weight, class_weight: a float or C values on dim 1.
    """
    one_hot = y.dim() == x.dim() - 1 and x.shape[1] > 1
    if one_hot:  # labels in [0, C] (C: a zero row); ok masks l even without ignore_index
        ok, v = _index_validity(y, ignore_index, x.shape[1] + 1)
    else:
        ok = v = _validity(y, ignore_index)
    y_safe = (
        y if ok is None else torch.where(ok, y, torch.zeros((), dtype=y.dtype, device=y.device))
    )
    if one_hot:
        t = convert_to_one_hot(y_safe, x.shape[1], dtype=x.dtype)  # [N,C,*]
    elif y.dim() == x.dim() - 1:
        t = y_safe.unsqueeze(1).to(x.dtype)  # C = 1: y itself, [N,1,*]
    else:
        t = y_safe.to(x.dtype)
    pw = (
        torch.ones((), dtype=x.dtype, device=x.device)
        if pos_weight is None
        else on_dim1(pos_weight, x)
    )
    if with_logits:
        log_q, log_1mq = F.logsigmoid(x), F.logsigmoid(-x)
    else:
        log_q = torch.clamp(torch.log(x), min=-100)
        log_1mq = torch.clamp(torch.log(1 - x), min=-100)
    loss = _class_weight(class_weight, x) * (-pw * t * log_q - (1 - t) * log_1mq)
    if ok is not None:
        v_l = ok.unsqueeze(1) if y.dim() == x.dim() - 1 else ok
        loss = torch.where(v_l, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return loss, v


def _sigmoid_focal_term(
    x: torch.Tensor, t: torch.Tensor, alpha: float | torch.Tensor, gamma: float
) -> torch.Tensor:
    """BCE(x, t) a_t (1 - p_t)^gamma, p_t = sig t + (1 - sig)(1 - t),
    a_t = alpha t + (1 - alpha)(1 - t) (RetinaNet, mmdet)."""
    s = torch.sigmoid(x)
    p_t = s * t + (1 - s) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return bce_with_logits(x, t) * a_t * (1 - p_t) ** gamma


def focal_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float | list[float] | torch.Tensor = 0.25,
    gamma: float = 2.0,
    use_sigmoid: bool = True,
    class_weight=None,
    ignore_index: int | None = -100,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FocalLoss of x [N,C,*]; y [N,*] in [0, C] (C = background, sigmoid only) or one-hot/soft
    of x's shape.

    use_sigmoid: l = BCE(x_c, t_c) a_t (1 - p_t)^gamma w_c -> [N,C,*];
    softmax:     l = -alpha_y (1 - p_y)^gamma log p_y w_y -> [N,*]
                 (a target of x's shape: -sum_c t_c w_c alpha_c (1 - p_c)^gamma log p_c, v None).
    alpha: a float or C values (dim 1).
    """
    c = x.shape[1]
    index = y.dim() == x.dim() - 1
    v = _validity(y, ignore_index)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    a = on_dim1(alpha, x)
    w = _class_weight(class_weight, x)
    if use_sigmoid:
        if index:  # labels in [0, C] (C: the background, a zero row)
            ok, v = _index_validity(y, ignore_index, c + 1)
            t = convert_to_one_hot(y, c, ignore_index, dtype=x.dtype)  # [N,C,*]
            loss = torch.where(ok.unsqueeze(1), _sigmoid_focal_term(x, t, a, gamma) * w, zero)
            return loss, v
        t = y.to(x.dtype) if v is None else torch.where(v, y.to(x.dtype), zero)
        loss = _sigmoid_focal_term(x, t, a, gamma) * w
        if v is not None:
            loss = torch.where(v, loss, zero)
        return loss, v
    log_p = F.log_softmax(x, dim=1)
    p = torch.exp(log_p)
    if index:  # labels in [0, C)
        ok, v = _index_validity(y, ignore_index, c)
        y_safe = torch.where(ok, y, 0)
        a_y = _gather_dim1(a.expand_as(x), y_safe)
        w_y = _gather_dim1(w.expand_as(x), y_safe)
        p_y = _gather_dim1(p, y_safe)
        log_p_y = _gather_dim1(log_p, y_safe)
        loss = -a_y * (1 - p_y) ** gamma * log_p_y * w_y
        return torch.where(ok, loss, zero), v
    t = y.to(x.dtype)
    loss = -(t * w * a * (1 - p) ** gamma * log_p).sum(dim=1)
    return loss, None


def binary_focal_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    ignore_index: int | None = -100,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sigmoid focal term on one logit: x [N,*] or [N,1,*]; y of x's shape (soft allowed) or
    [N,*] (for x [N,1,*]) -> l of x's shape; v = y != ignore_index in y's shape."""
    v = _validity(y, ignore_index)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    t = y.to(x.dtype) if v is None else torch.where(v, y.to(x.dtype), zero)
    t = t.reshape(x.shape)
    loss = _sigmoid_focal_term(x, t, alpha, gamma)
    if v is not None:
        loss = torch.where(v.reshape(x.shape), loss, zero)
    return loss, v


def multi_label_focal_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    class_weight=None,
) -> torch.Tensor:
    """l = BCE(x_c, y_c) a_t (1 - p_t)^gamma w_c; x, y [N,C,*] (multi-hot or soft) -> [N,C,*]."""
    return _sigmoid_focal_term(x, y.to(x.dtype), alpha, gamma) * _class_weight(class_weight, x)


def asymmetric_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    gamma_neg: float = 4,
    gamma_pos: float = 1,
    clip: float = 0.05,
    eps: float = 1e-8,
    disable_torch_grad_focal: bool = True,
) -> torch.Tensor:
    """ASL (timm, Ridnik et al.): x, y [N,C,*] (multi-hot, soft allowed) -> l [N,C,*].

    q = sig(x), q_m = max(q - clip, 0), pt = q y + (1 - q_m)(1 - y), g = g+ y + g- (1 - y);
    l = -(y log max(q, eps) + (1 - y) log max(1 - q_m, eps)) (1 - pt)^g, the focusing weight
    (1 - pt)^g detached when ``disable_torch_grad_focal``. The registry's default reduction is
    "sum" (timm).
    """
    y = y.to(x.dtype)
    q = torch.sigmoid(x)
    q_m = torch.clamp(q - clip, min=0) if clip is not None and clip > 0 else q
    log_pos = y * torch.log(torch.clamp(q, min=eps))
    log_neg = (1 - y) * torch.log(torch.clamp(1 - q_m, min=eps))
    loss = log_pos + log_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt = q * y + (1 - q_m) * (1 - y)
        g = gamma_pos * y + gamma_neg * (1 - y)
        focus = (1 - pt) ** g
        if disable_torch_grad_focal:
            focus = focus.detach()
        loss = loss * focus
    return -loss
