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
  still contributing 0. An integer y is compared with ignore_index in int64 (as both backends): a
  value its dtype cannot hold equals none of its elements (a uint8 156 is not -100).
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
  SPEC 12.4's "a dense target is invalid where it equals ignore_index" makes a position whose
  target equals it in any class invalid (l = 0, v false: l is per position), v [N,*].
- Focal powers ((1 - p_t)^gamma, (1 - p)^gamma, ASL's (1 - pt)^g) are exp(g log u) with log u
  computed without rounding u to 1 (logsigmoid, log1p of the complement): the same values where
  float64 has the digits, and the exact ones at saturated logits for exponents up to 1e30 (SPEC
  8), where ``(1 - p_t) ** gamma`` is 1^gamma = 1. gamma = 0 gives 1 (0^0 = 1); a base below 0
  (a target outside [0, 1]) gives NaN for gamma != 0.
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


def _not_ignored(y: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """y != ignore_index, an integer y compared in int64: a value its dtype cannot hold differs
    from every element (uint8 156 is not -100; ``y != -100`` would wrap -100 to 156)."""
    return (y if y.is_floating_point() else y.long()) != ignore_index


def _validity(y: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    """v = y != ignore_index (None when ignore_index is None)."""
    return None if ignore_index is None else _not_ignored(y, ignore_index)


def _index_validity(
    y: torch.Tensor, ignore_index: int | None, high: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ok, v) of index labels: ok = (0 <= y < high) & (y != ignore_index), the labels that
    contribute; v = ok, or None when ignore_index is None (no mask for "mean")."""
    ok = (y >= 0) & (y < high)
    if ignore_index is not None:
        ok = ok & _not_ignored(y, ignore_index)
    return ok, (ok if ignore_index is not None else None)


def _log_one_minus(p: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """log(o), o = 1 - p, from p and o each computed accurately: log1p(-p) where p < 1/2,
    log(o) elsewhere, so that an o that rounds to 1 keeps its logarithm; -inf (a constant) at
    o = 0. The branches not taken get harmless inputs: their gradients are exact 0s, not 0 * inf
    (so the derivative of o^gamma is 0 where o = 0)."""
    small = p < 0.5
    zero = o == 0
    log_o = torch.where(zero, -torch.inf, torch.log(torch.where(small | zero, 1.0, o)))
    return torch.where(small, torch.log1p(-torch.where(small, p, 0.0)), log_o)


def _pow(log_u: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """u^gamma from log u, as exp(gamma log u): the focal powers for every gamma in [0, 1e30]
    (``(1 - p_t) ** gamma`` rounds 1 - p_t to 1 at a saturated logit, 1^gamma = 1). gamma = 0:
    1 (0^0 = 1, as torch.pow, also for a NaN or a negative u); u = 0: 0 for gamma > 0."""
    if isinstance(gamma, torch.Tensor):
        safe = torch.where(gamma == 0, 0.0, log_u)  # (no 0 * -inf in the untaken branch)
        return torch.where(gamma == 0, 1.0, torch.exp(gamma * safe))
    if gamma == 0:
        return torch.ones_like(log_u)
    return torch.exp(gamma * log_u)


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
    t = convert_to_one_hot(y, c, dtype=x.dtype)  # [N,C,*] (rows not ok: masked below)
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
    a_t = alpha t + (1 - alpha)(1 - t) (RetinaNet, mmdet).

    (1 - p_t)^gamma = exp(gamma log(1 - p_t)), log(1 - p_t) = logsigmoid(x) at t = 0,
    logsigmoid(-x) at t = 1, else from p_t = t sig(x) + (1 - t) sig(-x) and 1 - p_t = (1 - t)
    sig(x) + t sig(-x) (no cancellation for t in [0, 1]): exact at a saturated logit for every
    gamma in [0, 1e30] (SPEC 8), where float64's 1 - p_t has no digits left."""
    s, sn = torch.sigmoid(x), torch.sigmoid(-x)
    p_t = t * s + (1 - t) * sn
    u = (1 - t) * s + t * sn
    log_u = torch.where(
        t == 0, F.logsigmoid(x), torch.where(t == 1, F.logsigmoid(-x), _log_one_minus(p_t, u))
    )
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return bce_with_logits(x, t) * a_t * _pow(log_u, gamma)


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
                 (a target of x's shape: -sum_c t_c w_c alpha_c (1 - p_c)^gamma log p_c; a
                 position whose target equals ignore_index in any class is invalid, v [N,*]).
    alpha: a float or C values (dim 1). (1 - p)^gamma = exp(gamma log(1 - p)), log(1 - p) as
    log1p(-p) where p < 1/2 and log(-expm1(log p)) elsewhere (softmax; sigmoid: see
    ``_sigmoid_focal_term``), exact for every gamma in [0, 1e30].
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
            t = convert_to_one_hot(y, c, dtype=x.dtype)  # [N,C,*] (rows not ok: masked below)
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
        focus = _pow(_log_one_minus(p_y, -torch.expm1(log_p_y)), gamma)  # (1 - p_y)^gamma
        loss = -a_y * focus * log_p_y * w_y
        return torch.where(ok, loss, zero), v
    t = y.to(x.dtype)
    if v is not None:  # a position is invalid where its target equals ignore_index anywhere
        v = v.all(dim=1)
        t = torch.where(v.unsqueeze(1), t, zero)
    focus = _pow(_log_one_minus(p, -torch.expm1(log_p)), gamma)  # (1 - p_c)^gamma
    loss = -(t * w * a * focus * log_p).sum(dim=1)
    if v is not None:
        loss = torch.where(v, loss, zero)
    return loss, v


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

    Without cancellation (SPEC 8's exponents up to 1e30 at saturated logits): 1 - q_m =
    sig(-x) + clip where q >= clip (torch.clamp's gradient there), else 1; (1 - pt)^g =
    exp(g log(1 - pt)), 1 - pt = y sig(-x) + (1 - y) q_m, its log logsigmoid(-x) at y = 1, else
    from pt = y q + (1 - y)(1 - q_m) (a sum of terms >= 0 for y in [0, 1]).
    """
    y = y.to(x.dtype)
    q, qn = torch.sigmoid(x), torch.sigmoid(-x)
    clipped = clip is not None and clip > 0
    q_m = torch.clamp(q - clip, min=0) if clipped else q
    one_m_qm = torch.where(q - clip >= 0, qn + clip, 1.0) if clipped else qn  # 1 - q_m
    log_pos = y * torch.log(torch.clamp(q, min=eps))
    log_neg = (1 - y) * torch.log(torch.clamp(one_m_qm, min=eps))
    loss = log_pos + log_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt = q * y + one_m_qm * (1 - y)
        b = y * qn + (1 - y) * q_m  # 1 - pt
        log_b = torch.where(y == 1, F.logsigmoid(-x), _log_one_minus(pt, b))
        g = gamma_pos * y + gamma_neg * (1 - y)
        focus = _pow(log_b, g)  # (1 - pt)^g
        if disable_torch_grad_focal:
            focus = focus.detach()
        loss = loss * focus
    return -loss
