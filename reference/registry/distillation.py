"""Reference distillation losses of the registry (SPEC 10.4): the elementwise loss ``l`` of each
row, literal (per-sample loops, per-pair sums, convolutions written out), in the dtype given
(float64 in the tests), gradients by autograd. Written from the formulas and the source papers /
mdistiller / mmrazor / RepDistiller, never from the library's code.

``pred`` = student ``s``, ``target`` = teacher ``t`` (detached; CRD's teacher embedding keeps its
gradient, see ``crd_loss``); P = softmax(s/T), Q = softmax(t/T) over dim 1;
KL(Q||P) = sum_c Q_c (log Q_c - log P_c), whose terms with Q_c = 0 are 0, also where P_c = 0 (a
class at -inf in both models; torch ``kl_div`` gives NaN there); a NaN anywhere gives NaN. Cosines
are torch's: <a / max(|a|, eps), b / max(|b|, eps)>.

Choices where the spec is silent (shared with the library): RKD's mu is 1 when no distance is
positive (N = 1: a 0 loss); AT pools a map larger along an axis to (min H, min W); the learnable
layers (Feature align, MGD's align and generation) are passed in as weights; MGD's mask is given;
CRD's Z is computed from the given inputs unless passed (the frozen value of a later call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "adaptive_avg_pool2d",
    "attention_loss",
    "conv3x3",
    "crd_loss",
    "crd_normalizer",
    "dist_loss",
    "dkd_loss",
    "feature_align",
    "feature_cosine_loss",
    "feature_l1_loss",
    "feature_mse_loss",
    "knowledge_distillation_loss",
    "mgd_loss",
    "pkt_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
]


def knowledge_distillation_loss(
    s: torch.Tensor, t: torch.Tensor, *, temperature: float = 4.0
) -> torch.Tensor:
    """l = T^2 KL(Q||P) (Hinton); s, t [N,C,*] -> l [N,*] (the class axis summed). The registry's
    default reduction is "batchmean" (mmrazor: sum / N, also for dense maps). A term with
    Q_c = 0 is 0 (selected, not multiplied: 0 (log 0 - log 0) would be NaN where the student is
    -inf too); a NaN Q_c is not 0 and gives NaN."""
    log_p = F.log_softmax(s / temperature, dim=1)
    log_q = F.log_softmax(t.detach() / temperature, dim=1)
    q = F.softmax(t.detach() / temperature, dim=1)
    terms = torch.where(q == 0, torch.zeros((), dtype=q.dtype), q * (log_q - log_p))
    return temperature**2 * terms.sum(dim=1)


# ---------------------------------------------------------------------------- helpers (literal)


def _norm(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of a vector, sqrt(sum v^2)."""
    return torch.sqrt((v * v).sum())


def _cos(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """torch's cosine similarity of two vectors: <a / max(|a|, eps), b / max(|b|, eps)>."""
    na = torch.clamp(_norm(a), min=eps)
    nb = torch.clamp(_norm(b), min=eps)
    return ((a / na) * (b / nb)).sum()


def _l2_normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """v / max(|v|, eps) (``F.normalize``)."""
    return v / torch.clamp(_norm(v), min=eps)


def _smooth_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """0.5 d^2 if d < 1 else d - 0.5, d = |a - b| (beta 1), elementwise."""
    d = (a - b).abs()
    return torch.where(d < 1, 0.5 * d * d, d - 0.5)


def _kl(q: list[torch.Tensor], p: list[torch.Tensor]) -> torch.Tensor:
    """sum_i q_i (log q_i - log p_i), the terms with q_i = 0 being 0; a NaN q_i or p_i is kept
    (the sum is then NaN: a NaN input is never read as "no mass")."""
    total = torch.zeros((), dtype=p[0].dtype)
    for qi, pi in zip(q, p):
        if float(qi) != 0:
            total = total + qi * (torch.log(qi) - torch.log(pi))
    return total


# ---------------------------------------------------------------------------------------- rows


def dkd_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> torch.Tensor:
    """DKD (Zhao et al.; mdistiller): per sample n with label y, P = softmax(s_n/T),
    Q = softmax(t_n/T); TCKD = T^2 KL((Q_y, 1 - Q_y) || (P_y, 1 - P_y)); NCKD = T^2 KL of the
    softmaxes of s_n/T and t_n/T restricted to the classes != y; l_n = alpha TCKD + beta NCKD.
    NCKD is 0 when the teacher has no mass off y (all -inf there: Q' undefined). A NaN or +inf
    logit gives NaN (the softmax of +inf is NaN). s, t [N,C], labels [N] in [0, C) -> l [N]."""
    t = t.detach()
    n_cls = s.shape[1]
    out = []
    for n in range(s.shape[0]):
        y = int(labels[n])
        p = torch.softmax(s[n] / temperature, 0)
        q = torch.softmax(t[n] / temperature, 0)
        tckd = _kl([q[y], 1 - q[y]], [p[y], 1 - p[y]])
        others = [c for c in range(n_cls) if c != y]
        p_o = torch.softmax(torch.stack([s[n, c] for c in others]) / temperature, 0)
        t_o = torch.stack([t[n, c] for c in others])
        if bool((t_o == float("-inf")).all()):  # no teacher mass off y: Q' undefined, NCKD 0
            nckd = torch.zeros((), dtype=s.dtype)
        else:
            q_o = torch.softmax(t_o / temperature, 0)
            nckd = _kl(list(q_o), list(p_o))
        out.append(temperature**2 * (alpha * tckd + beta * nckd))
    return torch.stack(out) if out else s.new_zeros(0)


def dist_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al.; mmrazor): P = softmax(s/T), Q = softmax(t/T);
    r(a, b) = cos(a - mean a, b - mean b) (eps 1e-8); inter = 1 - mean_n r(P_n, Q_n),
    intra = 1 - mean_c r(P_:c, Q_:c); l = T^2 (beta inter + gamma intra). s, t [N,C] -> 0-dim."""
    p = torch.softmax(s / temperature, 1)
    q = torch.softmax(t.detach() / temperature, 1)

    def r(a, b):
        return _cos(a - a.mean(), b - b.mean(), 1e-8)

    n, c = p.shape
    inter = 1 - sum(r(p[i], q[i]) for i in range(n)) / n
    intra = 1 - sum(r(p[:, j], q[:, j]) for j in range(c)) / c
    return temperature**2 * (beta * inter + gamma * intra)


def feature_align(
    s: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """f(s): the 1x1 convolution f(s)[n,o,*] = b_o + sum_i W[o,i] s[n,i,*] (weight [Ct,Cs] or
    [Ct,Cs,1,1], bias [Ct]); the identity without a weight."""
    if weight is None:
        return s
    w = weight.reshape(weight.shape[0], weight.shape[1])
    cols = []
    for o in range(w.shape[0]):
        acc = sum(w[o, i] * s[:, i] for i in range(w.shape[1]))
        cols.append(acc + (bias[o] if bias is not None else 0))
    return torch.stack(cols, 1)


def _channel_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / max(sqrt(sum_c x_c^2), eps) at each position (``F.normalize(x, dim=1)``)."""
    norm = torch.sqrt((x * x).sum(1, keepdim=True))
    return x / torch.clamp(norm, min=eps)


def _feature_pair(s, t, weight, bias, normalize):
    f = feature_align(s, weight, bias)
    t = t.detach()
    if normalize:
        f, t = _channel_normalize(f), _channel_normalize(t)
    return f, t


def feature_mse_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """l = (f(s) - t)^2 (``feature_align``; both L2-normalised over channels when
    ``normalize``). s [N,Cs,*], t [N,Ct,*] -> [N,Ct,*]."""
    f, t = _feature_pair(s, t, weight, bias, normalize)
    return (f - t) ** 2


def feature_l1_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """l = abs(f(s) - t). s [N,Cs,*], t [N,Ct,*] -> [N,Ct,*]."""
    f, t = _feature_pair(s, t, weight, bias, normalize)
    return (f - t).abs()


def feature_cosine_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """l = 1 - cos(f(s), t) over the channels at each position (eps 1e-8). -> [N,*]."""
    f, t = _feature_pair(s, t, weight, bias, normalize)
    fl = f.reshape(f.shape[0], f.shape[1], -1)
    tl = t.reshape(t.shape[0], t.shape[1], -1)
    out = torch.stack(
        [
            torch.stack([1 - _cos(fl[n, :, k], tl[n, :, k], 1e-8) for k in range(fl.shape[2])])
            for n in range(fl.shape[0])
        ]
    )
    return out.reshape(f.shape[0], *f.shape[2:])


def adaptive_avg_pool2d(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch's adaptive average pooling, literal: output cell (i, j) of (h, w) averages the
    rows floor(i H / h) .. ceil((i + 1) H / h) - 1 and the same columns of W / w."""
    h_in, w_in = x.shape[-2:]
    h, w = size
    rows = []
    for i in range(h):
        r0, r1 = (i * h_in) // h, -((-(i + 1) * h_in) // h)
        cols = []
        for j in range(w):
            c0, c1 = (j * w_in) // w, -((-(j + 1) * w_in) // w)
            cols.append(x[..., r0:r1, c0:c1].mean(dim=(-2, -1)))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def attention_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    p: float = 2.0,
    normalize: bool = True,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """AT (Zagoruyko & Komodakis; mdistiller): maps pooled to (min H, min W) where larger;
    a(F)_n = (mean_c abs(F_nc)^p) flattened, divided by max(|.|, 1e-12) over the positions when
    ``normalize``; l = (a(s) - a(t))^2. s [N,Cs,H,W], t [N,Ct,H',W'] -> [N,h*w]. ``keep``
    ([N, h*w] bool; spec 12.2 rule 1): the pooled s and t of a position where it is False are
    replaced by 0 (in every channel) before the maps."""
    t = t.detach()
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    if tuple(s.shape[2:]) != size:
        s = adaptive_avg_pool2d(s, size)
    if tuple(t.shape[2:]) != size:
        t = adaptive_avg_pool2d(t, size)
    if keep is not None:
        k = keep.reshape(s.shape[0], 1, *size)
        s, t = torch.where(k, s, 0.0), torch.where(k, t, 0.0)

    def a(x):
        rows = []
        for n in range(x.shape[0]):
            m = (x[n].abs() ** p).mean(0).reshape(-1)
            rows.append(_l2_normalize(m) if normalize else m)
        return torch.stack(rows)

    return (a(s) - a(t)) ** 2


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution with zero padding 1, literal: out[n,o,y,x] = b_o +
    sum_{i,dy,dx} W[o,i,dy,dx] xpad[n,i,y+dy,x+dx]. x [N,Ci,H,W], weight [Co,Ci,3,3] ->
    [N,Co,H,W]."""
    n, ci, h, w = x.shape
    xp = torch.cat([torch.zeros(n, ci, 1, w, dtype=x.dtype), x,
                    torch.zeros(n, ci, 1, w, dtype=x.dtype)], 2)  # fmt: skip
    xp = torch.cat([torch.zeros(n, ci, h + 2, 1, dtype=x.dtype), xp,
                    torch.zeros(n, ci, h + 2, 1, dtype=x.dtype)], 3)  # fmt: skip
    out = []
    for o in range(weight.shape[0]):
        acc = bias[o] + torch.zeros(n, h, w, dtype=x.dtype)
        for i in range(ci):
            for dy in range(3):
                for dx in range(3):
                    acc = acc + weight[o, i, dy, dx] * xp[:, i, dy : dy + h, dx : dx + w]
        out.append(acc)
    return torch.stack(out, 1)


def mgd_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    mask: torch.Tensor,
    gen_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    align_weight: torch.Tensor | None = None,
    align_bias: torch.Tensor | None = None,
    alpha_mgd: float = 7e-5,
) -> torch.Tensor:
    """MGD (Yang et al.; mmrazor): l = alpha_mgd sum (G(f(s) M) - t)^2 / N with f the 1x1 align
    (``feature_align``), M [N,1,H,W] the given 0/1 mask, G = conv3x3 -> ReLU -> conv3x3
    (``gen_weights`` = (W1, b1, W2, b2)). s [N,Cs,H,W], t [N,Ct,H,W] -> 0-dim."""
    w1, b1, w2, b2 = gen_weights
    f = feature_align(s, align_weight, align_bias)
    hidden = conv3x3(f * mask, w1, b1)
    hidden = torch.where(hidden > 0, hidden, torch.zeros((), dtype=hidden.dtype))
    new = conv3x3(hidden, w2, b2)
    return alpha_mgd * ((new - t.detach()) ** 2).sum() / s.shape[0]


def _rkd_distance_matrix(e: torch.Tensor, eps: float, squared: bool) -> torch.Tensor:
    n = e.shape[0]
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            if i == j:
                row.append(torch.zeros((), dtype=e.dtype))
                continue
            d2 = ((e[i] - e[j]) ** 2).sum()
            d2 = torch.clamp(d2, min=eps)
            row.append(d2 if squared else torch.sqrt(d2))
        rows.append(torch.stack(row))
    d = torch.stack(rows)
    positive = [d[i, j] for i in range(n) for j in range(n) if float(d[i, j].detach()) > 0]
    mu = sum(positive) / len(positive) if positive else 1.0  # no positive distance: mu = 1
    return d / mu


def rkd_distance_loss(
    s: torch.Tensor, t: torch.Tensor, *, eps: float = 1e-12, squared: bool = False
) -> torch.Tensor:
    """RKD distance (Park et al.; mmrazor): e = rows flattened; d_ij = sqrt(max(|e_i - e_j|^2,
    eps)) (no sqrt if squared), d_ii = 0, divided by mu = mean of the d > 0 (1 if there is none);
    l_ij = smoothL1(d_s,ij, d_t,ij). s, t [N,*] -> [N,N]."""
    es = s.reshape(s.shape[0], -1)
    et = t.detach().reshape(t.shape[0], -1)
    return _smooth_l1(
        _rkd_distance_matrix(es, eps, squared), _rkd_distance_matrix(et, eps, squared)
    )


def rkd_angle_loss(s: torch.Tensor, t: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """RKD angle (Park et al.; mmrazor): A_ijk = <n(e_j - e_i), n(e_k - e_i)>, n(v) =
    v / max(|v|, eps); l_ijk = smoothL1(A_s,ijk, A_t,ijk). s, t [N,*] -> [N,N,N]."""

    def angles(e):
        n = e.shape[0]
        zero = torch.zeros(e.shape[1], dtype=e.dtype)  # n(e_i - e_i) = n(0) = 0, a constant
        units = [
            [zero if j == i else _l2_normalize(e[j] - e[i], eps) for j in range(n)]
            for i in range(n)
        ]
        return torch.stack(
            [
                torch.stack(
                    [
                        torch.stack([(units[i][j] * units[i][k]).sum() for k in range(n)])
                        for j in range(n)
                    ]
                )
                for i in range(n)
            ]
        )

    es = s.reshape(s.shape[0], -1)
    et = t.detach().reshape(t.shape[0], -1)
    return _smooth_l1(angles(es), angles(et))


def crd_normalizer(
    f: torch.Tensor,
    bank: torch.Tensor,
    *,
    temperature: float = 0.07,
    n_data: int,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Z = mean over n, k of exp(<bank_nk, normalize(f_n)>/T), times n_data (RepDistiller's
    ``Z_v = out.mean() * n_data`` of its first batch), without gradient. ``keep`` ([N] bool;
    spec 12.2 rule 1): only the samples where it is True are averaged."""
    with torch.no_grad():
        values = [
            torch.exp((bank[n, k] * _l2_normalize(f[n])).sum() / temperature)
            for n in range(f.shape[0])
            if keep is None or bool(keep[n])
            for k in range(bank.shape[1])
        ]
        return sum(values) / len(values) * n_data


def crd_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    bank_t: torch.Tensor,
    bank_s: torch.Tensor,
    *,
    n_data: int,
    temperature: float = 0.07,
    eps: float = 1e-7,
    z_s: torch.Tensor | float | None = None,
    z_t: torch.Tensor | float | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """CRD NCE (Tian et al.; RepDistiller ``ContrastLoss``, ``Pn = 1/n_data``), per side with
    h_k = exp(<bank_k, normalize(f)>/T) / Z, K = bank rows - 1, c = K/n_data:
    side = -(log(h_0/(h_0 + c + eps)) + sum_{k>=1} log(c/(h_k + c + eps)));
    l_n = side(s_n, bank_t,n; z_s) + side(t_n, bank_s,n; z_t). Z None: ``crd_normalizer`` of
    these inputs (the first call). The banks get no gradient; t keeps its gradient (the teacher
    head's output). s, t [N,D], banks [N,K+1,D] -> [N]. ``keep`` ([N] bool; spec 12.2 rule 1):
    a sample where it is False is left out of Z and its l is 0 (not computed)."""
    if z_s is None:
        z_s = crd_normalizer(s, bank_t, temperature=temperature, n_data=n_data, keep=keep)
    if z_t is None:
        z_t = crd_normalizer(t, bank_s, temperature=temperature, n_data=n_data, keep=keep)
    k_neg = bank_t.shape[1] - 1
    c = k_neg / n_data

    def side(f, bank, z):
        u = _l2_normalize(f)
        h = [torch.exp((bank[k].detach() * u).sum() / temperature) / z for k in range(k_neg + 1)]
        total = torch.log(h[0] / (h[0] + c + eps))
        for k in range(1, k_neg + 1):
            total = total + torch.log(c / (h[k] + c + eps))
        return -total

    out = [
        side(s[n], bank_t[n], z_s) + side(t[n], bank_s[n], z_t)
        if keep is None or bool(keep[n])
        else torch.zeros((), dtype=s.dtype)
        for n in range(s.shape[0])
    ]
    return torch.stack(out)


def pkt_loss(s: torch.Tensor, t: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """PKT (Passalis & Tefas; mdistiller ``cosine_similarity_loss``): u_i = e_i/(|e_i| + eps),
    K_ij = (<u_i, u_j> + 1)/2, K_ij /= sum_j K_ij, for s and t; l_ij = K_t,ij log((K_t,ij + eps)/
    (K_s,ij + eps)). s [N,D], t [N,D'] -> [N,N]."""

    def kernel(e):
        n = e.shape[0]
        u = [e[i] / (_norm(e[i]) + eps) for i in range(n)]
        k = [[((u[i] * u[j]).sum() + 1) / 2 for j in range(n)] for i in range(n)]
        return torch.stack([torch.stack([k[i][j] / sum(k[i]) for j in range(n)]) for i in range(n)])

    ks, kt = kernel(s), kernel(t.detach())
    return kt * torch.log((kt + eps) / (ks + eps))
