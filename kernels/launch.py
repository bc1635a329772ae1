"""Kernel launching shared by every launcher in this package: one place that counts launches.

Every launcher in ``kernels/`` starts its Triton kernels through :func:`launch`, which

* wraps the kernel with ``torch.library.wrap_triton`` so that a launcher called inside a
  ``torch.library.triton_op`` is traced by ``torch.compile`` (eagerly it just runs the kernel);
* increments a module-level counter, so tests can assert how many launches an op costs
  (``reset_launch_count()``, run, ``launch_count()``). Under ``torch.compile`` the counter moves
  while tracing, not on every replay.
"""

from __future__ import annotations

import struct

import torch
import triton

_LAUNCHES = 0


def launch_count() -> int:
    """Number of Triton kernel launches issued through :func:`launch` since the last reset."""
    return _LAUNCHES


def reset_launch_count() -> None:
    global _LAUNCHES
    _LAUNCHES = 0


@triton.jit
def _mode_probe():
    pass


def interpreting() -> bool:
    """Whether this process's kernels run under Triton's interpreter.

    ``@triton.jit`` decides when a kernel is defined (``TRITON_INTERPRET=1`` then gives an
    interpreted function, not a ``JITFunction``), so a later change of the variable changes
    nothing: the kernels themselves are asked.
    """
    from triton.runtime.jit import JITFunction

    return not isinstance(_mode_probe, JITFunction)


def _wrap(kernel):
    try:
        from torch.library import wrap_triton
        from triton.runtime.jit import JITFunction
    except ImportError:  # torch < 2.6: eager only
        return kernel
    if not isinstance(kernel, JITFunction):  # Triton's interpreter: torch 2.11 refuses to wrap it
        return kernel
    return wrap_triton(kernel)


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, counted."""
    global _LAUNCHES
    _LAUNCHES += 1
    _wrap(kernel)[grid](*args, **kwargs)


def f64_bits(x: float) -> int:
    """A float option as the int64 bit pattern of its float64 value, for a kernel argument.

    Triton types a Python float argument as fp32, which would round e.g. w_angle = 0.2 to
    0.20000000298 in the float64 path; an int argument keeps every bit, and the kernel rebuilds the
    exact value with ``primitives.option(bits, cdt)`` (no allocation, no sync). Kernels list these
    arguments in ``do_not_specialize`` (Triton would otherwise specialise on their values).
    """
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any given tensor is float64, else float32 (the arithmetic dtype inside)."""
    f64 = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if f64 else torch.float32


def mask_view(x: torch.Tensor | None) -> torch.Tensor | None:
    """A bool tensor viewed as uint8 (no copy); other dtypes unchanged.

    While torch.compile traces a ``triton_op`` (fake tensors), a cast instead: Inductor cannot
    lower a bool-to-uint8 dtype view (torch 2.11), and fuses the cast into the producer anyway.
    """
    if x is not None and x.dtype == torch.bool:
        from torch._subclasses.fake_tensor import is_fake

        return x.to(torch.uint8) if is_fake(x) else x.view(torch.uint8)
    return x


def option_arg(x: float, cdt: torch.dtype) -> int | float:
    """A float option as a kernel argument for arithmetic in ``cdt``: float64, its bit pattern
    (:func:`f64_bits`, exact); otherwise the float itself, which Triton passes as float32 rounded
    to nearest, the value ``primitives.option`` would rebuild from the bits. torch.compile's
    Inductor (torch 2.11) fails on an int argument above 2**31, i.e. on any bit pattern of a
    positive float, so the ``triton_op`` path of float32 losses needs the plain float."""
    return f64_bits(x) if cdt == torch.float64 else float(x)


def class_tiles(n: int, c: int, s: int, max_classes: int = 1024) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_C, ITERS, P) of a kernel that reads every class of a tile of positions of
    logits [N, C, S] at once (the softmax of a tile in one load): BLOCK_C = C rounded up to a power
    of two (at most ``max_classes``: a ValueError naming ``pred``), tiles of 1024 elements (8192
    under the interpreter), about 1024 programs in all, each a span of ITERS blocks of one image."""
    block_c = triton.next_power_of_2(max(c, 1))
    if block_c > max_classes:
        raise ValueError(f"pred: at most {max_classes} classes on the triton backend, got {c}")
    tile = 8192 if interpreting() else 1024
    block_r = max(tile // block_c, 1)
    nblocks = triton.cdiv(max(s, 1), block_r)
    want = max(1, min(nblocks, triton.cdiv(1024, max(n, 1))))
    iters = triton.cdiv(nblocks, want)
    return block_r, block_c, iters, triton.cdiv(nblocks, iters)
