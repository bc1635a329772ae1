"""gaussian_heatmap and padding_weight against their float64 reference twins (spec 3.2 and 4)."""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch
from conftest import DEVICE, assert_grad_close, pairwise
from hypothesis import given, settings
from hypothesis import strategies as st

import fused_losses as fl
from fused_losses import reference as R

TOL = 1e-5


def assert_map_close(out: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    out64 = out.detach().to("cpu", torch.float64)
    assert (out64 - ref).abs().max().item() <= tol
    assert_grad_close(out64, ref, tol, "map")


# --------------------------------------------------------------------------- gaussian_heatmap


def random_centers(b: int, n: int, size, stride: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    hf, wf = size
    extent = torch.tensor([wf * stride, hf * stride], dtype=torch.float64)
    return (torch.rand(b, n, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1) * extent


def make_sigma(kind: str, b: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "float":
        return 1.5
    if kind == "bn":
        return 0.6 + 2.5 * torch.rand(b, n, generator=g, dtype=torch.float64)
    return 0.6 + 2.5 * torch.rand(b, n, 2, generator=g, dtype=torch.float64)


def make_mask(b: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 2)
    return torch.rand(b, n, generator=g) > 0.3


def check_heatmap(backend, size, *, b=2, n=3, center, sigma_kind, masked, merge, dt, stride=4):
    seed = zlib.crc32(repr((size, center, sigma_kind, masked, merge, dt, stride)).encode()) % 1000
    centers = random_centers(b, n, size, stride, seed)
    sigma = make_sigma(sigma_kind, b, n, seed)
    mask = make_mask(b, n, seed) if masked else None
    opts = dict(stride=stride, center=center, merge=merge)
    ref = R.gaussian_heatmap(
        centers.to(dt).double(),
        size,
        sigma=sigma if isinstance(sigma, float) else sigma.to(dt).double(),
        mask=mask,
        dtype=torch.float64,
        **opts,
    )
    out = fl.gaussian_heatmap(
        centers.to(dt).to(DEVICE),
        size,
        sigma=sigma if isinstance(sigma, float) else sigma.to(dt).to(DEVICE),
        mask=None if mask is None else mask.to(DEVICE),
        backend=backend,
        **opts,
    )
    assert out.dtype == dt
    assert out.shape == (b, 1, *size)
    assert_map_close(out, ref)
    return out, ref


HEATMAP_FACTORS = {
    "center": ["cell", "exact"],
    "sigma_kind": ["float", "bn", "bn2"],
    "masked": [False, True],
    "merge": ["max", "sum"],
    "dt": [torch.float32, torch.float64],
}
HEATMAP_FULL = list(itertools.product(*HEATMAP_FACTORS.values()))


def heatmap_id(center, sigma_kind, masked, merge, dt) -> str:
    mask = "mask" if masked else "nomask"
    return f"{center}-sigma_{sigma_kind}-{mask}-{merge}-{str(dt)[6:]}"


@pytest.mark.parametrize(
    "center,sigma_kind,masked,merge,dt", HEATMAP_FULL, ids=[heatmap_id(*p) for p in HEATMAP_FULL]
)
def test_gaussian_heatmap_torch(center, sigma_kind, masked, merge, dt):
    for size in ((17, 33), (64, 128)):
        check_heatmap(
            "torch", size, center=center, sigma_kind=sigma_kind, masked=masked, merge=merge, dt=dt
        )


HEATMAP_ROWS = pairwise(HEATMAP_FACTORS)


@pytest.mark.parametrize(
    "row", HEATMAP_ROWS, ids=["triton-" + heatmap_id(*r.values()) for r in HEATMAP_ROWS]
)
def test_gaussian_heatmap_triton(row):
    check_heatmap("triton", (17, 33), **row)


@pytest.mark.parametrize("stride", [1, 2, 8])
def test_gaussian_heatmap_strides(backend, stride):
    for center in ("cell", "exact"):
        check_heatmap(
            backend,
            (16, 32),
            center=center,
            sigma_kind="bn2",
            masked=True,
            merge="max",
            dt=torch.float32,
            stride=stride,
        )


@pytest.mark.parametrize("merge", ["max", "sum"])
def test_gaussian_heatmap_no_centres(backend, merge):
    centers = torch.zeros(3, 0, 2, device=DEVICE)
    out = fl.gaussian_heatmap(centers, (5, 7), merge=merge, backend=backend)
    assert out.shape == (3, 1, 5, 7)
    assert out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0
    ref = R.gaussian_heatmap(centers.double().cpu(), (5, 7), merge=merge)
    assert_map_close(out, ref)
    # All centres masked out: zero too.
    centers = torch.full((2, 2, 2), 10.0, device=DEVICE)
    mask = torch.zeros(2, 2, dtype=torch.bool, device=DEVICE)
    out = fl.gaussian_heatmap(centers, (5, 7), mask=mask, merge=merge, backend=backend)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("merge", ["max", "sum"])
@pytest.mark.parametrize("e", [0.025, 0.2, 0.5])
def test_gaussian_heatmap_label_smoothing(backend, merge, e):
    """label_smoothing e: Y (1 - 2 e) + e on both backends (the design document's Y * 0.95 +
    0.025 at e = 0.025), against the unsmoothed float64 reference; no centre gives e everywhere."""
    g = torch.Generator().manual_seed(3)
    centers = (torch.rand(2, 3, 2, generator=g) * torch.tensor([40.0, 24.0])).to(DEVICE)
    mask = torch.tensor([[True, True, False], [True, False, True]], device=DEVICE)
    kw = dict(merge=merge, mask=mask, sigma=1.5)
    out = fl.gaussian_heatmap(centers, (6, 10), label_smoothing=e, backend=backend, **kw)
    y = R.gaussian_heatmap(centers.double().cpu(), (6, 10), **{**kw, "mask": mask.cpu()})
    assert_map_close(out, y * (1 - 2 * e) + e)
    assert_map_close(
        out,
        R.gaussian_heatmap(
            centers.double().cpu(), (6, 10), label_smoothing=e, **{**kw, "mask": mask.cpu()}
        ),
    )
    empty = fl.gaussian_heatmap(centers[:, :0], (6, 10), label_smoothing=e, backend=backend)
    assert torch.equal(empty, torch.full_like(empty, e))
    for bad in (-0.1, 0.6, float("nan")):
        with pytest.raises(ValueError, match=r"^label_smoothing"):
            fl.gaussian_heatmap(centers, (6, 10), label_smoothing=bad, backend=backend)


def test_gaussian_heatmap_sum_overlaps_and_max_peak(backend):
    centers = torch.tensor([[[10.0, 10.0], [10.5, 9.0], [36.0, 20.0]]], device=DEVICE)
    y_sum = fl.gaussian_heatmap(centers, (6, 10), merge="sum", backend=backend)
    y_max = fl.gaussian_heatmap(centers, (6, 10), merge="max", backend=backend)
    # Two centres in cell (2, 2): the sum reaches 2 there, the max 1.
    assert abs(y_sum[0, 0, 2, 2].item() - 2.0) < 1e-5
    assert abs(y_max[0, 0, 2, 2].item() - 1.0) < 1e-6
    assert (y_sum >= y_max - 1e-7).all()
    for merge, y in (("sum", y_sum), ("max", y_max)):
        assert_map_close(y, R.gaussian_heatmap(centers.double().cpu(), (6, 10), merge=merge))


def test_gaussian_heatmap_matches_closed_form(backend):
    """Spot values from the spec's formula (independent of the reference)."""
    centers = torch.tensor([[[13.0, 7.0]]], dtype=torch.float64, device=DEVICE)  # u=3.25, v=1.75
    sigma = 1.5
    cell = fl.gaussian_heatmap(centers, (4, 6), sigma=sigma, center="cell", backend=backend)
    exact = fl.gaussian_heatmap(centers, (4, 6), sigma=sigma, center="exact", backend=backend)
    for i, j in itertools.product(range(4), range(6)):
        want_cell = math.exp(-((i - 1) ** 2 + (j - 3) ** 2) / (2 * sigma**2))
        want_exact = math.exp(-((i - 1.75) ** 2 + (j - 3.25) ** 2) / (2 * sigma**2))
        assert abs(cell[0, 0, i, j].item() - want_cell) < 1e-12
        assert abs(exact[0, 0, i, j].item() - want_exact) < 1e-12
    # Anisotropic: sigma [B,N,2] = (sigma_x, sigma_y).
    sig = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64, device=DEVICE)
    an = fl.gaussian_heatmap(centers, (4, 6), sigma=sig, center="cell", backend=backend)
    want = math.exp(-((0 - 1) ** 2) / (2 * 9.0) - (5 - 3) ** 2 / (2 * 1.0))
    assert abs(an[0, 0, 0, 5].item() - want) < 1e-12


def test_gaussian_heatmap_integer_centres(backend):
    centers = torch.tensor([[[13, 7], [40, 20]]], dtype=torch.int64, device=DEVICE)
    out = fl.gaussian_heatmap(centers, (8, 12), center="exact", backend=backend)
    assert out.dtype == torch.float32
    assert_map_close(out, R.gaussian_heatmap(centers.cpu().double(), (8, 12), center="exact"))


def test_gaussian_heatmap_non_contiguous(backend):
    centers = random_centers(3, 4, (17, 33), 4, 5).float()
    sigma = make_sigma("bn2", 3, 4, 5).float()
    mask = make_mask(3, 4, 5)
    c_v = centers.transpose(0, 1).contiguous().transpose(0, 1)
    s_v = sigma.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    m_v = mask.t().contiguous().t()
    assert not (c_v.is_contiguous() or s_v.is_contiguous() or m_v.is_contiguous())
    out = fl.gaussian_heatmap(
        c_v.to(DEVICE), (17, 33), sigma=s_v.to(DEVICE), mask=m_v.to(DEVICE), backend=backend
    )
    ref = R.gaussian_heatmap(centers.double(), (17, 33), sigma=sigma.double(), mask=mask)
    assert_map_close(out, ref)


@settings(max_examples=40, deadline=None)
@given(
    hf=st.integers(2, 20),
    wf=st.integers(2, 40),
    fx=st.floats(0, 0.999),
    fy=st.floats(0, 0.999),
    stride=st.sampled_from([1, 2, 4, 8]),
)
def test_cell_mode_peak_is_one_and_single_positive(hf, wf, fx, fy, stride):
    """center="cell": Y = 1 at the centre's cell, and with sigma=1.5 exactly one Y >= 0.9."""
    centers = torch.tensor([[[fx * wf * stride, fy * hf * stride]]], dtype=torch.float32)
    x, y = centers[0, 0].tolist()
    i, j = math.floor(y / stride), math.floor(x / stride)
    assert 0 <= i < hf and 0 <= j < wf
    for out in (
        fl.gaussian_heatmap(centers, (hf, wf), stride=stride, backend="torch"),
        R.gaussian_heatmap(centers.double(), (hf, wf), stride=stride),
    ):
        assert out[0, 0, i, j].item() == 1.0
        assert out.max().item() == 1.0
        assert int((out >= 0.9).sum()) == 1


def test_cell_mode_one_positive_per_visible_object(backend):
    g = torch.Generator().manual_seed(3)
    b, n, hf, wf = 2, 5, 17, 33
    # Objects 6 cells apart (x = 8 + 24 k pixels, plus jitter) so their peaks stay apart.
    x = 8.0 + 24.0 * torch.arange(n).float()[None, :] + 3 * torch.rand(b, n, generator=g)
    y = 10.0 + 50 * torch.rand(b, n, generator=g)
    centers = torch.stack([x, y], dim=-1)
    mask = torch.tensor([[True, True, False, True, True], [True, False, False, True, True]])
    out = fl.gaussian_heatmap(centers.to(DEVICE), (hf, wf), mask=mask.to(DEVICE), backend=backend)
    assert ((out >= 0.9).sum(dim=(1, 2, 3)).cpu() == mask.sum(1)).all()


def test_gaussian_heatmap_bad_input():
    c = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match=r"centers.*\[2, 3\]"):
        fl.gaussian_heatmap(torch.zeros(2, 3), (4, 4))
    with pytest.raises(ValueError, match=r"centers.*\[2, 3, 3\]"):
        fl.gaussian_heatmap(torch.zeros(2, 3, 3), (4, 4))
    with pytest.raises(TypeError, match="centers"):
        fl.gaussian_heatmap([[0.0, 0.0]], (4, 4))
    with pytest.raises(ValueError, match=r"sigma.*\[2, 4\]"):
        fl.gaussian_heatmap(c, (4, 4), sigma=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"sigma.*\[2, 3, 3\]"):
        fl.gaussian_heatmap(c, (4, 4), sigma=torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match=r"sigma.*\[3\]"):
        fl.gaussian_heatmap(c, (4, 4), sigma=torch.ones(3))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            fl.gaussian_heatmap(c, (4, 4), sigma=bad)
    with pytest.raises(ValueError, match=r"mask.*\[2, 2\]"):
        fl.gaussian_heatmap(c, (4, 4), mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="center"):
        fl.gaussian_heatmap(c, (4, 4), center="middle")
    with pytest.raises(ValueError, match="merge"):
        fl.gaussian_heatmap(c, (4, 4), merge="mean")
    with pytest.raises(ValueError, match="stride"):
        fl.gaussian_heatmap(c, (4, 4), stride=0)
    with pytest.raises(ValueError, match="size"):
        fl.gaussian_heatmap(c, (0, 4))
    with pytest.raises(ValueError, match="backend"):
        fl.gaussian_heatmap(c, (4, 4), backend="cpu")
    with pytest.raises(ValueError, match=r"mask.*meta"):
        fl.gaussian_heatmap(c, (4, 4), mask=torch.ones(2, 3, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match=r"sigma.*meta"):
        fl.gaussian_heatmap(c, (4, 4), sigma=torch.ones(2, 3, device="meta"))


# --------------------------------------------------------------------------- padding_weight


def letterbox_mask(b: int, size, stride: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = size[0] * stride, size[1] * stride
    m = torch.ones(b, 1, h, w, dtype=torch.bool)
    for i in range(b):
        top, left = (int(v) for v in torch.randint(0, h // 3, (2,), generator=g))
        bottom = h - int(torch.randint(0, h // 3, (1,), generator=g))
        right = w - int(torch.randint(0, w // 3, (1,), generator=g))
        m[i, :, top:bottom, left:right] = False
    return m


@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.int32, torch.float32])
@pytest.mark.parametrize("size", [(17, 33), (16, 32)])
def test_padding_weight_mask(backend, rank, mask_dtype, size):
    m = letterbox_mask(3, size, 4, seed=size[0])
    m = m.to(mask_dtype)
    if rank == 3:
        m = m[:, 0]
    out = fl.padding_weight(m.to(DEVICE), size=size, backend=backend)
    assert out.shape == (3, 1, *size) and out.dtype == torch.float32
    ref = R.padding_weight(m, size=size, dtype=torch.float64)
    assert_map_close(out, ref)
    assert ((out >= 0) & (out <= 1)).all()


def test_padding_weight_soft_float_mask(backend):
    g = torch.Generator().manual_seed(1)
    m = torch.rand(2, 1, 68, 132, generator=g, dtype=torch.float64)
    out = fl.padding_weight(m.to(DEVICE), size=(17, 33), backend=backend)
    assert out.dtype == torch.float64
    assert_map_close(out, R.padding_weight(m, size=(17, 33), dtype=torch.float64), 1e-12)
    out = fl.padding_weight(m.float().to(DEVICE), size=(17, 33), backend=backend)
    assert out.dtype == torch.float32
    assert_map_close(out, R.padding_weight(m.float().double(), size=(17, 33), dtype=torch.float64))


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_padding_weight_fractional_box(backend, stride):
    size = (17, 33) if stride <= 4 else (9, 16)
    h, w = size[0] * stride, size[1] * stride
    box = torch.tensor(
        [
            [1.3, 2.75, w - 3.5, h - 0.2],
            [-5.0, -1.0, w + 10.0, h + 3.0],  # covers everything
            [w * 0.4, h * 0.3, w * 0.4, h * 0.9],  # zero width
            [7.0, 5.0, 3.0, 9.0],  # inverted
            [0.5, 0.5, 1.25, 1.75],  # inside one cell (or a few, stride 1)
        ],
        dtype=torch.float64,
    )
    for dt in (torch.float32, torch.float64):
        out = fl.padding_weight(
            valid_box=box.to(dt).to(DEVICE), size=size, stride=stride, backend=backend
        )
        assert out.dtype == dt and out.shape == (5, 1, *size)
        ref = R.padding_weight(
            valid_box=box.to(dt).double(), size=size, stride=stride, dtype=torch.float64
        )
        assert_map_close(out, ref)
        assert torch.allclose(out[1], torch.ones_like(out[1]), rtol=0, atol=1e-6)
        assert torch.count_nonzero(out[2]) == 0 and torch.count_nonzero(out[3]) == 0


def test_padding_weight_integer_box_equals_mask(backend):
    box = torch.tensor([[4, 8, 100, 60], [0, 0, 132, 68], [-3, 5, 20, 70]])
    mask = torch.ones(3, 1, 68, 132, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(box.tolist()):
        mask[i, :, max(y0, 0) : y1, max(x0, 0) : x1] = False
    w_box = fl.padding_weight(valid_box=box.to(DEVICE), size=(17, 33), backend=backend)
    w_mask = fl.padding_weight(mask.to(DEVICE), size=(17, 33), backend=backend)
    assert w_box.dtype == torch.float32
    assert torch.allclose(w_box.cpu(), w_mask.cpu(), rtol=0, atol=1e-6)


def test_padding_weight_neither_given(backend):
    out = fl.padding_weight(size=(5, 7), backend=backend)
    assert out.shape == (1, 1, 5, 7) and out.dtype == torch.float32
    assert torch.all(out == 1)
    assert_map_close(out, R.padding_weight(size=(5, 7), dtype=torch.float64))


def test_padding_weight_non_contiguous(backend):
    m = letterbox_mask(3, (17, 33), 4, seed=9)
    m_v = m.transpose(2, 3).contiguous().transpose(2, 3)
    box = torch.tensor([[1.5, 2.5, 100.25, 60.0], [0.0, 3.0, 50.0, 68.0], [9.0, 9.0, 90.0, 40.0]])
    b_v = box.t().contiguous().t()
    assert not (m_v.is_contiguous() or b_v.is_contiguous())
    out = fl.padding_weight(m_v.to(DEVICE), size=(17, 33), backend=backend)
    assert_map_close(out, R.padding_weight(m, size=(17, 33), dtype=torch.float64))
    out = fl.padding_weight(valid_box=b_v.to(DEVICE), size=(17, 33), backend=backend)
    assert_map_close(out, R.padding_weight(valid_box=box.double(), size=(17, 33)))


coord = st.floats(-20, 150, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    box=st.lists(st.tuples(coord, coord, coord, coord), min_size=1, max_size=3),
    hf=st.integers(1, 12),
    wf=st.integers(1, 20),
    stride=st.sampled_from([1, 2, 4]),
)
def test_padding_weight_box_equals_materialised_mask(box, hf, wf, stride):
    """W of a valid_box equals W of the reference's full-resolution mask for the same box."""
    vb = torch.tensor(box, dtype=torch.float64)
    size = (hf, wf)
    mask = R.valid_box_padding_mask(vb, (hf * stride, wf * stride))
    w_box = fl.padding_weight(valid_box=vb, size=size, stride=stride, backend="torch")
    w_mask = fl.padding_weight(mask, size=size, stride=stride, backend="torch")
    assert torch.allclose(w_box, w_mask, rtol=0, atol=1e-12)
    assert ((w_box >= 0) & (w_box <= 1)).all()


@settings(max_examples=60, deadline=None)
@given(
    edges=st.lists(
        st.tuples(
            st.integers(-8, 70), st.integers(-8, 70), st.integers(-8, 70), st.integers(-8, 70)
        ),
        min_size=1,
        max_size=3,
    ),
    stride=st.sampled_from([1, 2, 4]),
)
def test_padding_weight_integer_box_equals_bool_mask(edges, stride):
    hf, wf = 64 // (4 * stride) + 3, 64 // (2 * stride) + 1
    h, w = hf * stride, wf * stride
    mask = torch.ones(len(edges), h, w, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(edges):
        mask[i, max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = False
    box = torch.tensor(edges, dtype=torch.float32)
    w_box = fl.padding_weight(valid_box=box, size=(hf, wf), stride=stride, backend="torch")
    w_mask = fl.padding_weight(mask, size=(hf, wf), stride=stride, backend="torch")
    assert torch.allclose(w_box, w_mask, rtol=0, atol=1e-6)


def test_padding_weight_bad_input():
    m = torch.zeros(2, 1, 68, 132, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"padding_mask.*\[2, 1, 68, 131\]"):
        fl.padding_weight(m[..., :131], size=(17, 33))
    with pytest.raises(ValueError, match=r"padding_mask.*\[2, 68\]"):
        fl.padding_weight(m[:, 0, :, 0], size=(17, 33))
    with pytest.raises(ValueError, match=r"valid_box.*\[2, 3\]"):
        fl.padding_weight(valid_box=torch.zeros(2, 3), size=(17, 33))
    with pytest.raises(ValueError, match=r"padding_mask.*valid_box|valid_box.*padding_mask"):
        fl.padding_weight(m, torch.zeros(2, 4), size=(17, 33))
    with pytest.raises(ValueError, match="stride"):
        fl.padding_weight(m, size=(17, 33), stride=-4)
    with pytest.raises(ValueError, match="size"):
        fl.padding_weight(m, size=(0, 33))
    with pytest.raises(TypeError, match="padding_mask"):
        fl.padding_weight(m.to(torch.complex64), size=(17, 33))
    with pytest.raises(ValueError, match="backend"):
        fl.padding_weight(m, size=(17, 33), backend="gpu")


def test_padding_weight_unknown_backend_without_padding():
    """Spec 3.5: an unknown option value raises, also when there is nothing to pool."""
    with pytest.raises(ValueError, match="backend"):
        fl.padding_weight(size=(17, 33), backend="gpu")


def test_size_and_extreme_options_are_named_errors():
    """size must be two positive ints (a TypeError / ValueError naming it, never a raw Python
    error); sigma outside [1e-6, 1e6] and strides beyond 2**16 are rejected with their range."""
    centers = torch.zeros(1, 1, 2)
    with pytest.raises(TypeError, match=r"size: expected a pair"):
        fl.gaussian_heatmap(centers, 8)
    with pytest.raises(ValueError, match=r"size: expected a pair .* got 3 values"):
        fl.gaussian_heatmap(centers, (8, 16, 3))
    with pytest.raises(TypeError, match=r"size: expected a pair"):
        fl.padding_weight(valid_box=torch.tensor([[0.0, 0, 8, 8]]), size=8)
    for sigma in (1e-30, 1e30):
        with pytest.raises(ValueError, match=r"sigma: expected a number in \[1e-06, 1e\+06\]"):
            fl.gaussian_heatmap(centers, (8, 16), sigma=sigma)
        with pytest.raises(ValueError, match=r"sigma: expected a number in"):
            fl.GapDetectionLoss(sigma=sigma)
    for stride in (2**70, 2**17, 0):
        with pytest.raises(ValueError, match=r"stride: expected an int in \[1, 65536\]"):
            fl.gaussian_heatmap(centers, (8, 16), stride=stride)
        with pytest.raises(ValueError, match=r"stride: expected an int in"):
            fl.GapDetectionLoss(stride=stride)


@pytest.mark.parametrize("sigma", [1e-6, 1e6])
def test_sigma_at_the_ends_of_its_range(backend, sigma):
    """The extreme valid widths stay finite and match the reference (a delta, a flat map)."""
    centers = torch.tensor([[[13.0, 9.0], [40.5, 22.25]]])
    for center in ("cell", "exact"):
        y = fl.gaussian_heatmap(
            centers.to(DEVICE), (8, 16), sigma=sigma, center=center, backend=backend
        )
        ref = R.gaussian_heatmap(centers.double(), (8, 16), sigma=sigma, center=center)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y.double().cpu(), ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- boundary label


def blob_mask(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    """A random 0/1 mask with a filled rectangle and a one-block-wide stripe per image."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, h, w, generator=g) > 0.7
    m[:, h // 4 : h // 2, w // 5 : w // 2] = True
    m[:, :, -5:-1] = True
    return m


@pytest.mark.parametrize("stride,kernel_size", [(4, 3), (1, 3), (2, 5), (3, 1), (4, 7)])
@pytest.mark.parametrize(
    "dtype,rank",
    [(torch.bool, 4), (torch.uint8, 3), (torch.int32, 4), (torch.float32, 3), (torch.float64, 4)],
)
def test_boundary_label_matches_reference(backend, stride, kernel_size, dtype, rank):
    """boundary_label against the float64 reference for 0/1 masks of every dtype, both ranks,
    sizes that are not multiples of the stride (trailing pixels ignored, as by AvgPool2d)."""
    m = blob_mask(2, 33, 46, seed=stride * 10 + kernel_size).to(dtype)
    m = m[:, None] if rank == 4 else m
    out = fl.boundary_label(m.to(DEVICE), stride=stride, kernel_size=kernel_size, backend=backend)
    ref = R.boundary_label(m, stride=stride, kernel_size=kernel_size)
    assert out.shape == (2, 1, 33 // stride, 46 // stride) and out.dtype == torch.float32
    assert torch.equal(out.cpu(), ref)
    if kernel_size > 1:  # (k = 1: dilation = erosion, no boundary)
        assert 0 < out.sum() < out.numel()
    else:
        assert out.sum() == 0


def test_boundary_label_closed_form(backend):
    """Independent of the reference: an 8x8-pixel square (2x2 cells at stride 4) gives a 4x4 ring
    of ones (the dilation minus the erosion, which is empty); a one-cell-wide stripe keeps all
    three columns around it (the order AvgPool -> gradient keeps thin edges); fractional masks
    use mean > 0.5 (exactly 0.5 is background)."""
    m = torch.zeros(1, 1, 32, 32)
    m[..., 8:16, 8:16] = 1
    out = fl.boundary_label(m.to(DEVICE), backend=backend).cpu()[0, 0]
    expected = torch.zeros(8, 8)
    expected[1:5, 1:5] = 1
    assert torch.equal(out, expected)
    stripe = torch.zeros(1, 24, 24, dtype=torch.bool)
    stripe[:, :, 12:16] = True
    out = fl.boundary_label(stripe.to(DEVICE), backend=backend).cpu()[0, 0]
    assert torch.equal(out.sum(0), torch.tensor([0, 0, 6, 6, 6, 0.0]))
    soft = torch.zeros(1, 8, 8)
    soft[:, :4, :4] = 0.5  # mean 0.5: background
    soft[:, 4:, 4:] = 0.75  # mean 0.75: object
    out = fl.boundary_label(soft.to(DEVICE), backend=backend).cpu()
    assert torch.equal(out[0, 0], torch.ones(2, 2))  # every window holds both values
    assert torch.equal(
        fl.boundary_label(soft.to(DEVICE), kernel_size=1, backend=backend).cpu(),
        torch.zeros(1, 1, 2, 2),
    )


def test_boundary_label_nan_block_is_background(backend):
    """A block whose mean is NaN is not > 0.5: background, on both backends as in the
    reference (mask values are not checked: that would cost a device synchronisation)."""
    m = torch.ones(1, 1, 4, 12)
    m[..., 4:8] = float("nan")
    out = fl.boundary_label(m.to(DEVICE), backend=backend).cpu()
    assert torch.equal(out, R.boundary_label(m))
    assert torch.equal(out[0, 0, 0], torch.ones(3))


def test_boundary_label_dtype_layouts_and_empty(backend):
    m = blob_mask(3, 20, 28, seed=1)
    ref = R.boundary_label(m, stride=4)
    views = {
        "non-contiguous": m.transpose(1, 2).contiguous().transpose(1, 2),
        "channels_last": m[:, None].float().contiguous(memory_format=torch.channels_last),
        "expanded": m[:1].expand(3, 20, 28),
    }
    for name, v in views.items():
        want = ref if name != "expanded" else ref[:1].expand(3, 1, 5, 7)
        out = fl.boundary_label(v.to(DEVICE), backend=backend)
        assert torch.equal(out.cpu(), want), name
    out = fl.boundary_label(m.to(DEVICE), dtype=torch.uint8, backend=backend)
    assert out.dtype == torch.uint8 and torch.equal(out.cpu(), ref.to(torch.uint8))
    empty = fl.boundary_label(torch.zeros(0, 1, 8, 8, device=DEVICE), backend=backend)
    assert empty.shape == (0, 1, 2, 2)


@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        (dict(mask=torch.zeros(8, 8)), ValueError, "mask"),
        (dict(mask=torch.zeros(1, 2, 8, 8)), ValueError, "mask"),
        (dict(mask=torch.zeros(1, 1, 3, 8)), ValueError, "mask"),
        (dict(mask=torch.zeros(1, 8, 8, dtype=torch.complex64)), TypeError, "mask"),
        (dict(mask=[[0, 1]]), TypeError, "mask"),
        (dict(kernel_size=4), ValueError, "kernel_size"),
        (dict(kernel_size=0), ValueError, "kernel_size"),
        (dict(stride=0), ValueError, "stride"),
        (dict(stride=2.0), ValueError, "stride"),
        (dict(dtype="float32"), TypeError, "dtype"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_boundary_label_bad_input(kwargs, exc, name):
    args = {"mask": torch.zeros(1, 8, 8), **kwargs}
    with pytest.raises(exc, match=rf"^{name}"):
        fl.boundary_label(args.pop("mask"), **args)
