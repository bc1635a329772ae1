"""Argument checks shared by every public op: shapes, dtypes, devices and option values.

All checks look at metadata only (shape, dtype, device), so they never synchronise with the GPU.
Each error names the argument, what was expected and what was received.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch


def shape_str(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in x.shape) + "]"


def check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_floating(name: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def check_real(name: str, x: torch.Tensor) -> None:
    if x.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got dtype {x.dtype}")


def check_coordinates(name: str, x: torch.Tensor) -> None:
    """Coordinates (boxes, points, H): a floating or integer tensor; complex or bool (read as
    0/1 pixels) is a TypeError naming the argument."""
    check_real(name, x)
    if x.dtype == torch.bool:
        raise TypeError(f"{name}: expected a floating or integer tensor of coordinates, got dtype "
                        "torch.bool")  # fmt: skip


def check_integer(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {x.dtype}")


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int | None], pretty: str) -> None:
    """``expected`` holds one entry per dim, ``None`` for "any size"."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        raise ValueError(f"{name}: expected shape {pretty}, got {shape_str(x)}")


def check_broadcastable(name: str, x: torch.Tensor, like: torch.Tensor) -> None:
    """``x`` broadcasts to the shape of ``like`` (without growing it)."""
    try:
        ok = torch.broadcast_shapes(x.shape, like.shape) == like.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: expected a shape broadcastable to {shape_str(like)}, got {shape_str(x)}"
        )


def check_same_device(named: dict[str, torch.Tensor | None]) -> torch.device:
    devices = {k: v.device for k, v in named.items() if v is not None}
    first_name, first = next(iter(devices.items()))
    for k, d in devices.items():
        if d != first:
            raise ValueError(
                f"{k}: expected a tensor on {first} (like {first_name}), got one on {d}"
            )
    return first


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


INT_LIMIT = 2**16  # strides and map sizes: kernels index with int32 and loop over stride^2 pixels


def check_positive_int(name: str, value: object, limit: int = INT_LIMIT) -> int:
    """A positive int no larger than ``limit`` (a ValueError naming the range otherwise). A
    numpy integer is taken as its int."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        value = int(value)  # numpy integers
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise ValueError(f"{name}: expected an int in [1, {limit}], got {value!r}")
    return value


def check_size(name: str, size: object) -> tuple[int, int]:
    """(Hf, Wf) from a sequence of two positive ints."""
    if isinstance(size, (str, bytes)) or not isinstance(size, (tuple, list, torch.Size)):
        raise TypeError(f"{name}: expected a pair (Hf, Wf) of ints, got {type(size).__name__}")
    if len(size) != 2:
        raise ValueError(f"{name}: expected a pair (Hf, Wf) of ints, got {len(size)} values")
    return check_positive_int(f"{name}[0]", size[0]), check_positive_int(f"{name}[1]", size[1])


def check_number(
    name: str, value: object, *, positive: bool = False, nonneg: bool = False
) -> float:
    """A finite real number as a float: an int, a float, or a numpy number (np.float32,
    np.int64; not a numpy bool); a TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        value = int(value) if isinstance(value, numbers.Integral) else float(value)  # numpy
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if isinstance(value, int):
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int too large for a float
            finite = False
    else:
        # not math.isfinite: under torch.compile(dynamic=True) a float option can be symbolic,
        # and x - x == 0 (False for NaN and +-inf) is arithmetic that Dynamo traces
        finite = value - value == 0
    if not finite:
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if nonneg and not value >= 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
    return float(value)


def check_range(name: str, value: object, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] (a ValueError naming the option and the range otherwise)."""
    v = check_number(name, value)
    if not lo <= v <= hi:
        raise ValueError(f"{name}: expected a number in [{lo:g}, {hi:g}], got {value!r}")
    return v


FLOAT32_TINY = 2.0**-126  # float32's smallest normal number


EXPONENT_MAX = 1e30  # float32-finite: an exponent that is inf in float32 makes 1^a = NaN


def check_exponent(name: str, value: object, limit: float = EXPONENT_MAX) -> float:
    """A non-negative exponent a of x^a, at most ``limit`` (an a that overflows float32 makes
    1^a = NaN). A positive a below float32's normal range is raised to ``FLOAT32_TINY``:
    float32 arithmetic would flush it to 0 and turn 0^a = 0 into 0^0 = 1; in float32 and float64
    alike x^a is then 1 for x > 0 and 0 at x = 0, as for the exact a."""
    v = check_range(name, value, 0, limit)
    return FLOAT32_TINY if 0 < v < FLOAT32_TINY else v


SIGMA_RANGE = (1e-6, 1e6)  # grid units: 2 sigma^2 and d^2 / (2 sigma^2) stay normal float32


def check_label_smoothing(name: str, value: object) -> float:
    """A label smoothing e in [0, 1/2]: Y (1 - 2 e) + e maps [0, 1] onto [e, 1 - e]."""
    v = check_number(name, value)
    if not 0 <= v <= 0.5:
        raise ValueError(f"{name}: expected a number in [0, 0.5], got {value!r}")
    return v


def check_sigma(name: str, value: object) -> float:
    """A Gaussian width in ``SIGMA_RANGE``: narrower is a delta, wider is flat, and beyond it
    2 sigma^2 under- or overflows in float32."""
    v = check_number(name, value, positive=True)
    lo, hi = SIGMA_RANGE
    if not lo <= v <= hi:
        raise ValueError(f"{name}: expected a number in [{lo:g}, {hi:g}], got {value!r}")
    return v


def check_bool(name: str, value: object) -> bool:
    """A Python bool (a NumPy bool is refused by its full name: "numpy.bool", not "bool")."""
    if isinstance(value, bool):
        return value
    kind = type(value)
    where = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    raise TypeError(f"{name}: expected a bool, got {where}{kind.__qualname__}")


def check_mask_dtype(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name}: expected a bool (or integer) tensor, got dtype {x.dtype}")


def check_padding(
    padding_mask: torch.Tensor | None,
    valid_box: torch.Tensor | None,
    batch: int | None,
    size: tuple[int, int],
    stride: int,
) -> None:
    """padding_mask [B,1,H,W] or [B,H,W] with H = Hf * stride, W = Wf * stride; valid_box [B,4]."""
    hf, wf = size
    if padding_mask is not None and valid_box is not None:
        raise ValueError("padding_mask, valid_box: give at most one of them, got both")
    if padding_mask is not None:
        check_tensor("padding_mask", padding_mask)
        check_real("padding_mask", padding_mask)
        h, w = hf * stride, wf * stride
        if padding_mask.dim() == 3:
            check_shape(
                "padding_mask", padding_mask, [batch, h, w], f"[B, {h}, {w}] or [B, 1, {h}, {w}]"
            )
        else:
            check_shape(
                "padding_mask", padding_mask, [batch, 1, h, w], f"[B, 1, {h}, {w}] or [B, {h}, {w}]"
            )
    if valid_box is not None:
        check_tensor("valid_box", valid_box)
        check_real("valid_box", valid_box)
        check_shape("valid_box", valid_box, [batch, 4], "[B, 4] (x0, y0, x1, y1)")
