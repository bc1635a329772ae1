"""Benchmark cases shared by the pytest benchmarks (``pytest bench/``) and ``python -m bench.report``.

A case is one (op, mode, batch, variant) on one device. Each op is one :class:`BenchCase` in the
registry ``CASES`` (``@register(op, family, ...)`` on the function that builds its inputs): its
family (``GAP``: problems from ``fused_losses.reference.cases.gap_case``, the same random problems
the tests use; ``CENTERNET``: random valid boxes from ``centernet_boxes``, some masked; ``CASS``:
patch logits and random boxes in pixels, ``CassProblem``; ``POSE``: CenterNet multi-pose heads,
boxes and keypoints, ``PoseProblem``), the
builder of its inputs, how to call the fused op and its eager reference, and whether it is
forward only. ``make_case`` returns a ``Case`` whose ``setup()`` clears gradients and whose
``step()`` runs one forward (under ``torch.no_grad()``) or one forward+backward and synchronises
the device, so that wall-clock timing of ``step`` is the device time of one iteration. Adding an op
is adding one registered builder (and a ``bench/test_<family>.py`` benchmark).

Variants: ``eager`` (the literal reference, ``fused_losses.reference``, float32), ``compile``
(``torch.compile`` of that reference function), ``torch`` and ``triton`` (the library with
``backend="torch"`` / ``backend="triton"``).

Environment overrides (also used by the pytest benchmarks): ``BENCH_DEVICE`` (``cuda`` or ``cpu``;
default cuda when available), ``BENCH_BATCHES`` (e.g. ``8,64``), ``BENCH_SIZE`` (e.g. ``64x128``; the
map size of every op, CenterNet ops included),
``BENCH_CPU_COMPILE=1`` (also benchmark ``torch.compile`` on CPU; off by default because Inductor's
C++ compile is slow on small CI machines).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache
from types import ModuleType
from typing import Any, NamedTuple

import fused_losses.reference as ref
import torch
from fused_losses.reference.cases import GapCase, gap_case

import fused_losses

MODES = ("forward", "forward+backward")
VARIANTS = ("eager", "compile", "torch", "triton")

STRIDE = 4
CONFUSERS = 4
DTYPE = torch.float32
CUDA_BATCHES = (8, 64, 256, 1024)
CPU_BATCHES = (2, 8)
DEFAULT_SIZE = (64, 128)


@dataclass(frozen=True)
class CenterNetShape:
    """Default CenterNet problem on one device type: ``boxes`` box slots per image (a random
    number between boxes // 4 and boxes of them valid, the rest masked)."""

    classes: int
    size: tuple[int, int]
    boxes: int
    batches: tuple[int, ...]


CENTERNET_SHAPES = {
    "cuda": CenterNetShape(classes=80, size=(128, 128), boxes=128, batches=(8, 64)),
    # Small: the reference centernet_targets is a per-box Python loop.
    "cpu": CenterNetShape(classes=20, size=(64, 64), boxes=16, batches=(2,)),
}
DOWN_RATIO = 4


def centernet_shape(device: str) -> CenterNetShape:
    return CENTERNET_SHAPES["cuda" if torch.device(device).type == "cuda" else "cpu"]


def default_device() -> str:
    dev = os.environ.get("BENCH_DEVICE", "").strip()
    if dev:
        return dev
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_batches(device: str, op: str | None = None) -> tuple[int, ...]:
    env = os.environ.get("BENCH_BATCHES", "").strip()
    if env:
        return tuple(int(b) for b in env.split(","))
    return _family(op).batches(device)


def default_size(op: str | None = None, device: str | None = None) -> tuple[int, int]:
    env = os.environ.get("BENCH_SIZE", "").strip().lower()
    if env:
        h, w = env.split("x")
        return int(h), int(w)
    return _family(op).size(device or default_device())


def modes_for(op: str) -> tuple[str, ...]:
    return ("forward",) if op in FORWARD_ONLY else MODES


def skip_reason(variant: str, device: str, op: str | None = None) -> str | None:
    """Why ``variant`` of ``op`` is not benchmarked on ``device`` (None when it is)."""
    if variant == "compile" and op in CASES and CASES[op].no_compile:
        return CASES[op].no_compile
    is_cuda = _is_cuda(device)
    if variant == "triton" and not is_cuda:
        return "triton variant needs a CUDA device"
    if variant == "compile" and not is_cuda and os.environ.get("BENCH_CPU_COMPILE") != "1":
        return (
            "torch.compile is CUDA-only by default (set BENCH_CPU_COMPILE=1 to include it on CPU)"
        )
    return None


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Case:
    """One benchmarkable (op, mode, batch, variant): call ``setup()`` then ``step()``."""

    op: str
    mode: str
    batch: int
    variant: str
    device: str
    size: tuple[int, int]
    run: Callable[[], torch.Tensor]  # the op's forward: returns the 0-dim loss or the label map
    leaves: tuple[torch.Tensor, ...]  # inputs that receive gradients (forward+backward)
    inputs: tuple[torch.Tensor, ...]  # every tensor the op reads
    extra: dict = field(default_factory=dict)

    @property
    def backward(self) -> bool:
        return self.mode == "forward+backward"

    def setup(self) -> None:
        for x in self.leaves:
            x.grad = None

    def step(self) -> None:
        if self.backward:
            self.run().backward()
        else:
            with torch.no_grad():
                self.run()
        sync(self.device)

    @property
    def input_bytes(self) -> int:
        return nbytes(*self.inputs)

    @property
    def grad_bytes(self) -> int:
        return nbytes(*self.leaves) if self.backward else 0

    @property
    def output_bytes(self) -> int:
        """Bytes of a label map the op writes (0 for losses: their output is a scalar)."""
        return self.extra.get("output_bytes", 0)

    @property
    def floor_bytes(self) -> int:
        """Minimum traffic: every input read once, label maps and gradients written once."""
        return self.input_bytes + self.output_bytes + self.grad_bytes

    def peak_memory(self) -> dict:
        """Peak allocated memory of one ``setup(); step()`` above what was allocated before it.

        CUDA only (``torch.cuda.max_memory_allocated``); on other devices the values are None.
        ``peak_above_inputs`` counts the gradients the step leaves behind; ``peak_extra`` is the
        part above inputs and gradients.
        """
        info = {"peak_above_inputs": None, "peak_extra": None}
        if torch.device(self.device).type != "cuda":
            return info
        self.setup()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.step()
        peak = torch.cuda.max_memory_allocated() - base
        self.setup()
        info["peak_above_inputs"] = peak
        info["peak_extra"] = peak - self.grad_bytes
        return info

    def info(self) -> dict:
        """What the report needs, recorded in pytest-benchmark's ``extra_info``."""
        return {
            "op": self.op,
            "mode": self.mode,
            "batch": self.batch,
            "variant": self.variant,
            "device": self.device,
            "size": f"{self.size[0]}x{self.size[1]}",
            "input_bytes": self.input_bytes,
            "grad_bytes": self.grad_bytes,
            "floor_bytes": self.floor_bytes,
            **{k: self.extra[k] for k in ("classes", "boxes") if k in self.extra},
        }


@cache
def _compiled(fn: Callable) -> Callable:
    """One ``torch.compile`` wrapper per reference function (Dynamo caches per code object)."""
    cfg = torch._dynamo.config
    # Every (batch, grad mode) is a recompile; keep them all instead of falling back to eager.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 64))
    return torch.compile(fn, dynamic=False)


# ----------------------------------------------------------------------------------------------
# Problems: the data a family's cases share, built on first use (untimed).


@dataclass
class Problem:
    """One case's problem as its builder sees it: batch, map size, device, seed and whether the
    inputs that receive gradients require them. Subclasses add their family's data."""

    batch: int
    size: tuple[int, int]
    device: str
    seed: int
    grad: bool

    def extra(self) -> dict:
        """Recorded with every case of the family (``Case.extra``)."""
        return {}

    @property
    def map_bytes(self) -> int:
        """Bytes of one float32 [B,H,W] map."""
        return self.batch * self.size[0] * self.size[1] * DTYPE.itemsize


@lru_cache(maxsize=4)
def _gap_problem(batch: int, size: tuple[int, int], seed: int):
    """The float64 CPU problem of a gap case, shared by its ops, variants and modes (generating one
    at B=1024 takes seconds; it holds about 0.7 GB). ``GapCase.to(float32, ...)`` copies every
    floating tensor, so no case sees another's tensors except the read-only bool masks on CPU."""
    return gap_case(batch, size, confusers=CONFUSERS, padding="mask", stride=STRIDE, seed=seed)


class GapLabels(NamedTuple):
    """Labels and weights of a gap problem for its component ops (the reference's, untimed)."""

    centers: torch.Tensor  # [B, 2, 2]: gap and piece centres
    weight: torch.Tensor  # padding weight [B, 1, H, W]
    y_gap: torch.Tensor  # Gaussian heatmap of the gap centre
    m_gap: torch.Tensor  # regression mask: y_gap > 0.7, weighted
    offset: torch.Tensor  # offset target [B, 4, 1, 1]


class GapProblem(Problem):
    """A ``gap_case`` problem (``_gap_problem``) in float32 on the device."""

    @cached_property
    def case(self) -> GapCase:
        return _gap_problem(self.batch, self.size, self.seed).to(
            DTYPE, self.device, requires_grad=self.grad
        )

    @cached_property
    def labels(self) -> GapLabels:
        c, size = self.case, self.size
        with torch.no_grad():
            centers = torch.stack([c.gap_center, c.piece_center], dim=1)
            w = ref.padding_weight(c.padding_mask, size=size, stride=STRIDE, dtype=DTYPE)
            y_gap = ref.gaussian_heatmap(c.gap_center[:, None], size, stride=STRIDE, dtype=DTYPE)
            m_gap = (y_gap > 0.7).to(DTYPE) * w
            t = ref.offset_target(centers, stride=STRIDE).reshape(self.batch, 4, 1, 1)
        return GapLabels(centers, w, y_gap, m_gap, t)


def centernet_boxes(
    batch: int, n: int, size: tuple[int, int], *, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ctdet boxes on the CPU: boxes [B,N,4] float32 (x1 < x2, y1 < y2, inside the input
    image of ``size * DOWN_RATIO`` pixels, sides log-uniform between 8 px and 60% of the image),
    labels [B,N] int64 in [0, num_classes), box_mask [B,N] bool with the first k_b slots of image
    b valid, k_b uniform in [max(1, n // 4), n] (the masked slots hold boxes too)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.tensor([size[1], size[0]], dtype=torch.float64) * DOWN_RATIO  # (W, H) pixels
    lo = torch.log(torch.tensor(8.0, dtype=torch.float64))
    u = torch.rand(batch, n, 2, generator=g, dtype=torch.float64)
    side = torch.exp(lo + u * (torch.log(0.6 * img) - lo))
    x1y1 = torch.rand(batch, n, 2, generator=g, dtype=torch.float64) * (img - side)
    boxes = torch.cat([x1y1, x1y1 + side], dim=-1).float()
    labels = torch.randint(0, num_classes, (batch, n), generator=g)
    k = torch.randint(max(1, n // 4), n + 1, (batch, 1), generator=g)
    box_mask = torch.arange(n)[None, :] < k
    return boxes, labels, box_mask


@lru_cache(maxsize=4)
def _centernet_reference_targets(
    batch: int, n: int, size: tuple[int, int], num_classes: int, seed: int
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """CPU boxes and their reference targets (float32), shared by the cases of one problem."""
    boxes = centernet_boxes(batch, n, size, num_classes=num_classes, seed=seed)
    targets = ref.centernet.centernet_targets(
        *boxes, num_classes=num_classes, output_size=size, down_ratio=DOWN_RATIO
    )
    return boxes, targets


class CenterNetProblem(Problem):
    """A CenterNet problem: ``centernet_shape(device)`` classes and box slots, heads [B,K,H,W]
    (clamped-sigmoid probabilities) and [B,2,H,W] (wh, reg). The reference builds its targets on
    the CPU (CenterNet's data loader), so ``eager``/``compile`` read CPU copies of the boxes and
    their timed call includes moving the targets to the device (``ref_targets``)."""

    @cached_property
    def shape(self) -> CenterNetShape:
        return centernet_shape(self.device)

    def extra(self) -> dict:
        return {"classes": self.shape.classes, "boxes": self.shape.boxes}

    @cached_property
    def _cpu(self) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        k, n = self.shape.classes, self.shape.boxes
        return _centernet_reference_targets(self.batch, n, self.size, k, self.seed)

    @cached_property
    def boxes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(boxes, labels, box_mask) on the device."""
        return tuple(x.to(self.device) for x in self._cpu[0])

    @cached_property
    def targets(self) -> dict[str, torch.Tensor]:
        """The reference targets, on the device."""
        return {key: v.to(self.device) for key, v in self._cpu[1].items()}

    @cached_property
    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed + 1)

    def head(self, channels: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn`` of a random head [B,channels,H,W] (heads drawn in call order)."""
        shape = (self.batch, channels, *self.size)
        x = torch.randn(shape, generator=self._generator, device=self.device, dtype=DTYPE)
        return fn(x).detach().requires_grad_(self.grad)

    def heatmap(self) -> torch.Tensor:
        """Head biased like CenterNet's (-2.19: p about 0.1), then its clamped sigmoid."""
        return self.head(self.shape.classes, lambda x: ref.centernet.clamped_sigmoid(x - 2.19))

    def ref_targets(self) -> dict[str, torch.Tensor]:
        """The reference's targets built from the CPU boxes and moved to the device (timed)."""
        t = ref.centernet.centernet_targets(
            *self._cpu[0],
            num_classes=self.shape.classes,
            output_size=self.size,
            down_ratio=DOWN_RATIO,
        )
        return {key: v.to(self.device) for key, v in t.items()}


CASS_STRIDE = 32  # pixels per feature cell (RT-DETR S5)
CASS_SIZE = (20, 20)  # feature map (h, w): 640 px images; BENCH_SIZE=40x40 for 1280 px


class CassProblem(Problem):
    """A CASS problem: patch logits [B, Hp*Wp] (patch 4) of a feature map ``size`` and random
    boxes in pixels (``boxes(n)``: n slots, some masked; sides log-uniform between 8 px and 60%
    of the image)."""

    @cached_property
    def grid(self) -> tuple[int, int]:
        h, w = self.size
        return -(-h // min(4, h)), -(-w // min(4, w))

    def scores(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        hp, wp = self.grid
        x = torch.randn(self.batch, hp * wp, generator=g) * 2 - 1
        return x.to(self.device).requires_grad_(self.grad)

    def boxes(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + 1)
        img = torch.tensor([self.size[1], self.size[0]], dtype=torch.float64) * CASS_STRIDE
        lo = torch.log(torch.tensor(8.0, dtype=torch.float64))
        u = torch.rand(self.batch, n, 2, generator=g, dtype=torch.float64)
        side = torch.exp(lo + u * (torch.log(0.6 * img) - lo))
        x1y1 = torch.rand(self.batch, n, 2, generator=g, dtype=torch.float64) * (img - side)
        boxes = torch.cat([x1y1, x1y1 + side], dim=-1).float()
        mask = torch.rand(self.batch, n, generator=g) > 0.2
        return boxes.to(self.device), mask.to(self.device)


POSE_SHAPES = {  # (people slots, joints, map size, batches) per device type
    "cuda": (32, 17, (128, 128), (32,)),
    # Small: the reference builds its targets with a per-person, per-joint Python loop.
    "cpu": (8, 17, (64, 64), (2,)),
}


class PoseProblem(Problem):
    """A CenterNet multi-pose problem: up to ``POSE_SHAPES`` people (boxes and 17 keypoints in
    input pixels, some masked, some joints unlabelled), the six heads, one class. The reference
    builds the targets from CPU copies inside its timed call (CenterNet's loader loop)."""

    @cached_property
    def shape(self) -> tuple:
        return POSE_SHAPES["cuda" if _is_cuda(self.device) else "cpu"]

    @cached_property
    def _cpu(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, j = self.shape[:2]
        boxes, _, box_mask = centernet_boxes(self.batch, n, self.size, num_classes=1,
                                             seed=self.seed)  # fmt: skip
        g = torch.Generator().manual_seed(self.seed + 2)
        span = boxes[..., None, 2:] - boxes[..., None, :2]
        xy = boxes[..., None, :2] + torch.rand(self.batch, n, j, 2, generator=g) * span
        v = torch.randint(0, 3, (self.batch, n, j, 1), generator=g).float()
        return boxes, torch.cat([xy, v], -1), box_mask

    @cached_property
    def raw(self) -> dict[str, torch.Tensor]:
        boxes, kp, box_mask = (x.to(self.device) for x in self._cpu)
        return {"boxes": boxes, "keypoints": kp, "box_mask": box_mask}

    def heads(self) -> dict[str, torch.Tensor]:
        g = torch.Generator(device=self.device).manual_seed(self.seed + 3)
        j = self.shape[1]
        b, (h, w) = self.batch, self.size

        def head(c, fn):
            x = torch.randn(b, c, h, w, generator=g, device=self.device, dtype=DTYPE)
            return fn(x).detach().requires_grad_(self.grad)

        sig = lambda x: ref.centernet.clamped_sigmoid(x - 2.19)
        return {"hm": head(1, sig), "wh": head(2, lambda x: x.abs() * 8),
                "reg": head(2, torch.sigmoid), "hps": head(2 * j, lambda x: x * 4),
                "hm_hp": head(j, sig), "hp_offset": head(2, torch.sigmoid)}  # fmt: skip

    def ref_targets(self) -> dict[str, torch.Tensor]:
        boxes, kp, box_mask = self._cpu
        t = ref.centernet_pose.centernet_pose_targets(
            boxes, kp, None, box_mask, num_joints=self.shape[1], output_size=self.size
        )
        return {k: v.to(self.device) for k, v in t.items()}


RORD_STRIDE = 8  # pixels per cell (VGG16 features[:23])
RORD_CHANNELS = 128


class RordProblem(Problem):
    """A RoRD problem: detection maps (sigmoid probabilities) and descriptor maps (C = 128,
    per-channel normalised like the head's InstanceNorm) of an image and its rotated copy, and
    per image a dataset H (a multiple of 90 degrees about the centre, maybe mirrored, plus a small
    jitter); 196 grid anchors, 400 R2 candidates (the defaults)."""

    def maps(self) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(self.seed)
        b, (h, w) = self.batch, self.size
        det = torch.sigmoid(torch.randn(2, b, 1, h, w, generator=g) * 2)
        desc = torch.randn(2, b, RORD_CHANNELS, h, w, generator=g)
        desc = (desc - desc.mean((-2, -1), keepdim=True)) / desc.std((-2, -1), keepdim=True)
        return tuple(
            x.to(self.device).requires_grad_(self.grad) for x in (*det.unbind(0), *desc.unbind(0))
        )

    def homographies(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 1)
        h, w = (n * RORD_STRIDE for n in self.size)
        k = torch.randint(0, 4, (self.batch,), generator=g)
        t = k * (torch.pi / 2) + (torch.rand(self.batch, generator=g) - 0.5) * 0.2
        c, s = torch.cos(t), torch.sin(t)
        mirror = torch.where(torch.rand(self.batch, generator=g) < 0.5, -1.0, 1.0)
        cx, cy = w / 2, h / 2
        rows = [c * mirror, -s, cx - c * mirror * cx + s * cy,
                s * mirror, c, cy - s * mirror * cx - c * cy]  # fmt: skip
        return torch.stack(rows, -1).view(self.batch, 2, 3).to(self.device)


# ----------------------------------------------------------------------------------------------
# Families and the case registry.


@dataclass(frozen=True)
class Family:
    """What the ops of one family share: their problem, where their eager references live (a
    function named as the op) and their default batches and map size per device."""

    name: str
    problem: type[Problem]
    reference: ModuleType | Any
    batches: Callable[[str], tuple[int, ...]]
    size: Callable[[str], tuple[int, int]]
    library: Any = None  # where the fused ops live (fused_losses when None)


GAP = Family(
    "gap",
    GapProblem,
    ref,
    batches=lambda device: CUDA_BATCHES if _is_cuda(device) else CPU_BATCHES,
    size=lambda device: DEFAULT_SIZE,
)
# CenterNet (ctdet) family; "centernet_loss" is the full total from raw boxes (targets inside).
CENTERNET = Family(
    "centernet",
    CenterNetProblem,
    ref.centernet,
    batches=lambda device: centernet_shape(device).batches,
    size=lambda device: centernet_shape(device).size,
)


# CASS soft-target loss (docs/spec.md 10): patch logits against the soft mask of the boxes.
CASS = Family(
    "cass",
    CassProblem,
    ref.cass,
    batches=lambda device: (8, 64) if _is_cuda(device) else (2, 8),
    size=lambda device: CASS_SIZE,
)


# CenterNet multi-pose: the full loss from raw boxes and keypoints.
POSE = Family(
    "centernet_pose",
    PoseProblem,
    ref.centernet_pose,
    batches=lambda device: POSE_SHAPES["cuda" if _is_cuda(device) else "cpu"][3],
    size=lambda device: POSE_SHAPES["cuda" if _is_cuda(device) else "cpu"][2],
)


class RegistryProblem(Problem):
    """Dense classification problems of the registry: logits [N, C, *] in float32 (bf16 where the
    op says) with index labels (10% ignored, 255) or dense targets. ``batch`` is N of the maps;
    the [N, C] ops take 8192 rows per unit of batch on CUDA (65536 at the default 8)."""

    def logits(self, shape, dtype=DTYPE) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        x = torch.randn(shape, generator=g, device=self.device, dtype=DTYPE) * 2
        return x.to(dtype).requires_grad_(self.grad)

    def labels(self, shape, classes: int) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        y = torch.randint(0, classes, shape, generator=g, device=self.device)
        ignore = torch.rand(shape, generator=g, device=self.device) < 0.1
        return torch.where(ignore, 255, y)

    def sparse_targets(self, shape) -> torch.Tensor:
        """A soft target with about one positive class per row (IoU-like scores), else 0."""
        g = torch.Generator(device=self.device).manual_seed(self.seed + 2)
        n, c = shape
        cls = torch.randint(0, c, (n,), generator=g, device=self.device)
        score = torch.rand(n, generator=g, device=self.device)
        keep = torch.rand(n, generator=g, device=self.device) < 0.3
        t = torch.zeros(shape, device=self.device)
        t[torch.arange(n, device=self.device), cls] = torch.where(keep, score, 0.0)
        return t

    @property
    def rows(self) -> int:
        return self.batch * (8192 if _is_cuda(self.device) else 128)

    def boxes(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Matched xyxy boxes (pred, target) [n, 4] in pixels: targets of 8-136 px in a 1024-px
        image, predictions within a few pixels (most overlap, some are disjoint)."""
        g = torch.Generator(device=self.device).manual_seed(self.seed + 3)
        xy = torch.rand(n, 2, generator=g, device=self.device) * 1024
        wh = 8 + torch.rand(n, 2, generator=g, device=self.device) * 128
        target = torch.cat([xy, xy + wh], dim=1)
        shift = torch.randn(n, 4, generator=g, device=self.device) * 6
        return (target + shift).requires_grad_(self.grad), target


# The registry's fused dense losses (docs/spec.md 12.4): segmentation maps and [N, C] logits.
def _registry_family():
    from . import registry_ops

    return Family(
        "registry",
        RegistryProblem,
        registry_ops.EAGER,
        batches=lambda device: (8,) if _is_cuda(device) else (2,),
        size=lambda device: (512, 1024) if _is_cuda(device) else (64, 128),
        library=registry_ops.LIBRARY,
    )


REGISTRY = _registry_family()


# RoRD (docs/spec.md 11): the total of both parts, maps at 1/8 of the image.
RORD = Family(
    "rord",
    RordProblem,
    ref.rord,
    batches=lambda device: (2, 8) if _is_cuda(device) else (2,),
    size=lambda device: (64, 64) if _is_cuda(device) else (32, 32),
)


@dataclass
class Inputs:
    """What a case's builder returns: the positional and keyword arguments of the op, the
    arguments that receive gradients (forward+backward), and what ``Case.extra`` records."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    leaves: tuple[torch.Tensor, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def reads(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the op reads: the tensors among the arguments, positional first."""
        values = (*self.args, *self.kwargs.values())
        return tuple(x for x in values if isinstance(x, torch.Tensor))


# call(fn, inputs, problem) -> the op's output (0-dim loss or label maps), where fn is the library
# op with its backend bound, or the reference function (eager or compiled).
Call = Callable[[Callable, Inputs, Problem], Any]


def call_args(fn: Callable, x: Inputs, p: Problem) -> Any:
    """The default call: ``fn(*args, **kwargs)``."""
    return fn(*x.args, **x.kwargs)


@dataclass(frozen=True)
class BenchCase:
    """One benchmarked op: ``build(problem)`` makes its inputs (untimed); ``fused`` calls the
    library op (``backend="torch"``/``"triton"``), ``reference`` the eager or compiled reference
    ``family.reference.<op>``. Forward-only ops (label generation, no gradient) have no
    forward+backward mode; ``no_compile`` says why the ``compile`` variant is not benchmarked."""

    op: str
    family: Family
    build: Callable[[Any], Inputs]
    fused: Call = call_args
    reference: Call = call_args
    forward_only: bool = False
    no_compile: str | None = None
    function_name: str | None = None  # the library/reference function, when not ``op``

    def function(self, variant: str) -> Callable:
        """The function ``fused``/``reference`` calls for ``variant``."""
        name = self.function_name or self.op
        if variant in ("eager", "compile"):
            fn = getattr(self.family.reference, name)
            return _compiled(fn) if variant == "compile" else fn
        if variant in ("torch", "triton"):
            fn = getattr(self.family.library or fused_losses, name)
            return lambda *a, **k: fn(*a, **k, backend=variant)
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")

    def call(self, variant: str) -> Call:
        return self.reference if variant in ("eager", "compile") else self.fused


CASES: dict[str, BenchCase] = {}


def register(
    op: str,
    family: Family,
    *,
    fused: Call = call_args,
    reference: Call | None = None,
    forward_only: bool = False,
    no_compile: str | None = None,
    function_name: str | None = None,
) -> Callable[[Callable[[Any], Inputs]], Callable[[Any], Inputs]]:
    """Decorator: register the decorated builder of ``op``'s inputs as its benchmark case
    (``reference`` defaults to ``fused``)."""

    def decorate(build: Callable[[Any], Inputs]) -> Callable[[Any], Inputs]:
        if op in CASES:
            raise ValueError(f"benchmark case {op!r} registered twice")
        CASES[op] = BenchCase(
            op, family, build, fused, reference or fused, forward_only, no_compile, function_name
        )
        return build

    return decorate


def _family(op: str | None) -> Family:
    """The family of ``op`` (the gap family's defaults for None or an unknown op)."""
    return CASES[op].family if op in CASES else GAP


# ----------------------------------------------------------------------------------------------
# The cases, one per op. Gap component ops read labels and weights precomputed once with the
# reference (not timed).


@register("gap_detection_loss", GAP)
def _gap_detection_loss(p: GapProblem) -> Inputs:
    args = p.case.args()
    # extra["args"]: the positional arguments, for callers that call the loss another way
    # (bench.gpu_probe profiles ``GapDetectionLoss()(*args)``).
    return Inputs(args, leaves=p.case.predictions(), extra={"args": args})


@register(
    "gap_detection_loss_per_image",
    GAP,
    fused=lambda fn, x, p: fn(*x.args, return_per_image=True)[0],
    reference=call_args,
    no_compile="the reference has no per-image form: its eager variant is gap_detection_loss's",
    function_name="gap_detection_loss",
)
def _gap_detection_loss_per_image(p: GapProblem) -> Inputs:
    """The full loss with the per-image totals (hard-sample mining): against gap_detection_loss,
    the cost of the per-image sums in the total kernel."""
    return _gap_detection_loss(p)


@register("gaussian_heatmap", GAP, forward_only=True)
def _gaussian_heatmap(p: GapProblem) -> Inputs:
    return Inputs(
        (p.labels.centers, p.size), {"stride": STRIDE}, extra={"output_bytes": p.map_bytes}
    )


@register("padding_weight", GAP, forward_only=True)
def _padding_weight(p: GapProblem) -> Inputs:
    kwargs = {"size": p.size, "stride": STRIDE}
    return Inputs((p.case.padding_mask,), kwargs, extra={"output_bytes": p.map_bytes})


@register("boundary_label", GAP, forward_only=True)
def _boundary_label(p: GapProblem) -> Inputs:
    kwargs = {"stride": STRIDE}
    return Inputs((p.case.padding_mask,), kwargs, extra={"output_bytes": p.map_bytes})


@register("masked_focal_loss", GAP)
def _masked_focal_loss(p: GapProblem) -> Inputs:
    pred = p.case.heatmap_gap
    return Inputs((pred, p.labels.y_gap, p.labels.weight), leaves=(pred,))


@register("masked_smooth_l1_loss", GAP)
def _masked_smooth_l1_loss(p: GapProblem) -> Inputs:
    pred = p.case.offset
    return Inputs((pred, p.labels.offset, p.labels.m_gap), leaves=(pred,))


@register("masked_cosine_loss", GAP)
def _masked_cosine_loss(p: GapProblem) -> Inputs:
    pred = p.case.angle
    return Inputs((pred, p.case.gap_angle, p.labels.m_gap), leaves=(pred,))


@register("hard_negative_margin_loss", GAP)
def _hard_negative_margin_loss(p: GapProblem) -> Inputs:
    c = p.case
    args = (c.heatmap_gap, c.gap_center, c.confusers, c.confuser_mask, p.labels.weight)
    return Inputs(args, {"stride": STRIDE}, leaves=(c.heatmap_gap,))


@register(
    "centernet_loss",
    CENTERNET,
    # The reference takes a target dict: built from the CPU boxes inside the timed call.
    reference=lambda fn, x, p: fn(*x.args, p.ref_targets())[0],
)
def _centernet_loss(p: CenterNetProblem) -> Inputs:
    hm = p.heatmap()
    wh = p.head(2, lambda x: x.abs() * 8)
    reg = p.head(2, torch.sigmoid)
    boxes, labels, box_mask = p.boxes
    kwargs = {"boxes": boxes, "labels": labels, "box_mask": box_mask}
    return Inputs((hm, wh, reg), kwargs, leaves=(hm, wh, reg))


@register("centernet_focal_loss", CENTERNET)
def _centernet_focal_loss(p: CenterNetProblem) -> Inputs:
    pred = p.heatmap()
    return Inputs((pred, p.targets["hm"]), leaves=(pred,))


@register("reg_l1_loss", CENTERNET)
def _reg_l1_loss(p: CenterNetProblem) -> Inputs:
    """On the wh head."""
    out = p.head(2, lambda x: x.abs() * 8)
    t = p.targets
    return Inputs((out, t["reg_mask"], t["ind"], t["wh"]), leaves=(out,))


@register(
    "centernet_targets",
    CENTERNET,
    reference=lambda fn, x, p: p.ref_targets(),
    forward_only=True,
    no_compile="the reference centernet_targets is a per-box Python loop: nothing to compile",
)
def _centernet_targets(p: CenterNetProblem) -> Inputs:
    kwargs = {"num_classes": p.shape.classes, "output_size": p.size, "down_ratio": DOWN_RATIO}
    extra = {"output_bytes": nbytes(*p.targets.values())}
    return Inputs(p.boxes, kwargs, extra=extra)


@register(
    "centernet_pose_loss",
    POSE,
    # The reference takes CenterNet's batch dict: built from the CPU boxes and keypoints by the
    # literal per-person loop inside the timed call (``compile`` compiles the loss part only).
    reference=lambda fn, x, p: fn(x.args[0], p.ref_targets()),
)
def _centernet_pose_loss(p: PoseProblem) -> Inputs:
    heads = p.heads()
    extra = {"people": p.shape[0], "joints": p.shape[1]}
    return Inputs((heads,), dict(p.raw), leaves=tuple(heads.values()), extra=extra)


def _cass(p: CassProblem, n: int) -> Inputs:
    scores = p.scores()
    boxes, mask = p.boxes(n)
    kwargs = {"feat_size": p.size, "stride": CASS_STRIDE}
    return Inputs((scores, boxes, mask), kwargs, leaves=(scores,), extra={"boxes": n})


@register("cass_loss", CASS)
def _cass_loss(p: CassProblem) -> Inputs:
    """100 box slots per image (the issue's large case)."""
    return _cass(p, 100)


@register("cass_loss_n10", CASS, function_name="cass_loss")
def _cass_loss_n10(p: CassProblem) -> Inputs:
    """10 box slots per image."""
    return _cass(p, 10)


@register("rord_loss", RORD, reference=lambda fn, x, p: fn(*x.args, **x.kwargs)[0])
def _rord_loss(p: RordProblem) -> Inputs:
    """64x64 maps on CUDA (``BENCH_SIZE=128x128`` for the larger), C = 128, N = 196, K = 400."""
    maps = p.maps()
    extra = {"channels": RORD_CHANNELS, "anchors": 196, "candidates": 400}
    return Inputs((*maps, p.homographies()), leaves=maps, extra=extra)


@register("registry_ce_seg", REGISTRY)
def _registry_ce_seg(p: RegistryProblem) -> Inputs:
    """CrossEntropyLoss (ignore 255, label smoothing 0.1) on [B, 19, H, W] (8x19x512x1024)."""
    x = p.logits((p.batch, 19, *p.size))
    return Inputs((x, p.labels((p.batch, *p.size), 19)), leaves=(x,))


@register("registry_ce_seg_bf16", REGISTRY)
def _registry_ce_seg_bf16(p: RegistryProblem) -> Inputs:
    """The same in bfloat16."""
    x = p.logits((p.batch, 19, *p.size), torch.bfloat16)
    return Inputs((x, p.labels((p.batch, *p.size), 19)), leaves=(x,))


@register("registry_ce_logits", REGISTRY)
def _registry_ce_logits(p: RegistryProblem) -> Inputs:
    """CrossEntropyLoss on [N, 1000] logits (N = 8192 B on CUDA)."""
    x = p.logits((p.rows, 1000))
    return Inputs((x, p.labels((p.rows,), 1000)), leaves=(x,))


@register("registry_sigmoid_focal", REGISTRY)
def _registry_sigmoid_focal(p: RegistryProblem) -> Inputs:
    """Sigmoid focal loss (MultiLabelFocalLoss, alpha 0.25, gamma 2) on [N, 80] (N = 65536)."""
    x = p.logits((p.rows, 80))
    return Inputs((x, p.sparse_targets((p.rows, 80))), leaves=(x,))


@register("registry_qfl", REGISTRY)
def _registry_qfl(p: RegistryProblem) -> Inputs:
    """QualityFocalLoss on [N, 80] with a dense quality target."""
    x = p.logits((p.rows, 80))
    return Inputs((x, p.sparse_targets((p.rows, 80))), leaves=(x,))


@register("registry_vfl", REGISTRY)
def _registry_vfl(p: RegistryProblem) -> Inputs:
    """VariFocalLoss on [N, 80] with IoU targets."""
    x = p.logits((p.rows, 80))
    return Inputs((x, p.sparse_targets((p.rows, 80))), leaves=(x,))


@register("registry_kd", REGISTRY)
def _registry_kd(p: RegistryProblem) -> Inputs:
    """Dense (pixel-wise) KD of segmentation logits, T = 4: student and teacher [B, 19, H/4, W/4]
    (8x19x128x256 on CUDA)."""
    shape = (p.batch, 19, p.size[0] // 4, p.size[1] // 4)
    s = p.logits(shape)
    return Inputs((s, (p.logits(shape) * 1.5).detach()), leaves=(s,))


@register("registry_dice", REGISTRY)
def _registry_dice(p: RegistryProblem) -> Inputs:
    """DiceLoss (ignore 255, smooth 1, exponent 2) on [B, 19, H, W] (8x19x512x1024)."""
    x = p.logits((p.batch, 19, *p.size))
    return Inputs((x, p.labels((p.batch, *p.size), 19)), leaves=(x,))


@register("registry_ohem_ce", REGISTRY)
def _registry_ohem_ce(p: RegistryProblem) -> Inputs:
    """OHEMCrossEntropyLoss (thresh 0.7, min_kept 100000, ignore 255) on [B, 19, H, W]."""
    x = p.logits((p.batch, 19, *p.size))
    return Inputs((x, p.labels((p.batch, *p.size), 19)), leaves=(x,))


@register("registry_lovasz", REGISTRY)
def _registry_lovasz(p: RegistryProblem) -> Inputs:
    """LovaszLoss (Lovasz-Softmax over the batch, classes "present", ignore 255) on
    [B, 19, H, W] (8x19x512x1024): one device sort of 19 rows of B H W errors."""
    x = p.logits((p.batch, 19, *p.size))
    return Inputs((x, p.labels((p.batch, *p.size), 19)), leaves=(x,))


@register("registry_giou", REGISTRY)
def _registry_giou(p: RegistryProblem) -> Inputs:
    """GIoULoss ("mean") of matched boxes [N, 4] (N = 32768 B on CUDA: 262144 at the default 8)
    against the textbook formulas in eager PyTorch."""
    pred, target = p.boxes(4 * p.rows)
    return Inputs((pred, target), leaves=(pred,), extra={"boxes": pred.shape[0]})


@register("registry_ciou", REGISTRY)
def _registry_ciou(p: RegistryProblem) -> Inputs:
    """CIoULoss ("mean") of the same boxes."""
    pred, target = p.boxes(4 * p.rows)
    return Inputs((pred, target), leaves=(pred,), extra={"boxes": pred.shape[0]})


@register(
    "registry_distance_transform",
    REGISTRY,
    forward_only=True,
    no_compile="the baseline is SciPy's distance_transform_edt on the CPU: nothing to compile",
)
def _registry_distance_transform(p: RegistryProblem) -> Inputs:
    """The exact distance transform of [B, H, W] masks (8x512x1024): blobs of 32x32 cells."""
    g = torch.Generator(device=p.device).manual_seed(p.seed + 3)
    h, w = p.size
    cells = torch.rand((p.batch, -(-h // 32), -(-w // 32)), generator=g, device=p.device) < 0.5
    mask = cells.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :h, :w].contiguous()
    return Inputs((mask,), extra={"output_bytes": mask.numel() * 4})


OPS = tuple(CASES)
GAP_OPS = tuple(op for op, case in CASES.items() if case.family is GAP)
CENTERNET_OPS = tuple(op for op, case in CASES.items() if case.family is CENTERNET)
# Ops without a gradient (label generation) are benchmarked forward only.
FORWARD_ONLY = frozenset(op for op, case in CASES.items() if case.forward_only)


def make_case(
    op: str,
    mode: str,
    batch: int,
    variant: str,
    *,
    device: str | None = None,
    size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Case:
    """Build the inputs (float32 on ``device``) and the call for one benchmark case."""
    device = device or default_device()
    size = size or default_size(op, device)
    if op not in CASES:
        raise ValueError(f"op: expected one of {list(OPS)}, got {op!r}")
    if mode not in modes_for(op):
        raise ValueError(f"mode: {op} supports {list(modes_for(op))}, got {mode!r}")
    bench = CASES[op]
    fn = bench.function(variant)
    call = bench.call(variant)
    grad = mode == "forward+backward"
    p = bench.family.problem(batch, size, device, seed, grad)
    x = bench.build(p)
    extra = {**p.extra(), **x.extra}
    leaves = x.leaves if grad else ()
    run = lambda: call(fn, x, p)
    return Case(op, mode, batch, variant, device, size, run, leaves, x.reads, extra)


def copy_bandwidth(device: str, mib: int | None = None, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s: a large ``clone`` moves 2x its bytes.

    CUDA: timed with CUDA events (256 MiB tensor); CPU: wall clock (64 MiB). Best of ``repeats``.
    """
    is_cuda = torch.device(device).type == "cuda"
    mib = mib or (256 if is_cuda else 64)
    x = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    x.clone()  # warm the allocator
    best = float("inf")
    for _ in range(repeats):
        if is_cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            x.clone()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            x.clone()
            dt = time.perf_counter() - t0
        best = min(best, dt)
    return 2 * x.numel() * x.element_size() / best
