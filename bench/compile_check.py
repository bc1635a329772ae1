"""Compile every Triton kernel for real GPUs without a GPU, and report what each one costs.

Triton's interpreter (how CI runs the kernels on CPU) accepts code that the compiler rejects, e.g. a
``@triton.jit`` function reading a plain module global. This module compiles each kernel, in each
specialisation its launchers really produce, for sm_80 (A100) and sm_90 (H100) through Triton's
compiler API (``triton.compile(ASTSource(...), target=GPUTarget(...))``; ptxas ships inside the
triton wheel, so no GPU and no CUDA toolkit are needed) and reads ptxas's resource report.

How the specialisations are found: the public ops run on small CPU tensors with the triton backend,
with ``kernels.launch`` patched to *record* each launch instead of running it (nothing executes, so
the interpreter is not involved); each recorded launch is bound exactly as ``JITFunction.run`` binds
it for a CUDA device (argument types, 16-byte alignment, integer specialisation, constexprs,
``num_warps``), deduplicated, then compiled.

    python -m bench.compile_check                 # table for sm_80 and sm_90, every dtype
    python -m bench.compile_check --arch 90 --markdown

Must run in a process where ``TRITON_INTERPRET`` is unset or 0 (``@triton.jit`` builds interpreter
objects instead of compilable ones otherwise); ``tests/test_compile.py`` starts one.

Budget (issue 7): every kernel compiles; float32/float16/bfloat16 specialisations use at most
``REG_BUDGET`` registers per thread and spill nothing; float64 must compile (spills reported).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

REG_BUDGET = 128
# Map sizes of the recorded calls: block sizes follow the map size, so these are the benchmark's.
GAP_SIZE = (64, 128)
CENTERNET_SIZE = (128, 128)
ARCHS = (80, 90)
DTYPES = ("float32", "float16", "bfloat16", "float64")

# Per-SM limits used for the occupancy column (the same on A100 and H100 except shared memory).
_SM = {
    80: {"regs": 65536, "warps": 64, "blocks": 32, "smem": 164 * 1024},
    90: {"regs": 65536, "warps": 64, "blocks": 32, "smem": 228 * 1024},
}


@dataclass(frozen=True)
class Launch:
    """One recorded launch: the kernel, its arguments and launch options, and the call it came from."""

    kernel: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict
    op: str
    dtype: str
    grid: tuple = ()


@dataclass
class Report:
    kernel: str
    op: str
    dtype: str
    arch: int
    num_warps: int
    regs: int | None = None
    spill_bytes: int | None = None
    shared: int | None = None
    error: str | None = None
    one_program: bool = False  # a single-program kernel (finalize): not a pass over the maps

    @property
    def occupancy(self) -> float | None:
        """Resident warps per SM / maximum, from registers, shared memory and the block limit."""
        if self.regs is None:
            return None
        sm = _SM[self.arch]
        regs_per_warp = -(-max(self.regs, 1) * 32 // 256) * 256  # allocation unit: 256 per warp
        by_regs = (sm["regs"] // regs_per_warp) // self.num_warps
        by_smem = sm["smem"] // max(self.shared + 1024, 1)  # 1 KiB reserved per block
        blocks = min(by_regs, by_smem, sm["blocks"], sm["warps"] // self.num_warps)
        return blocks * self.num_warps / sm["warps"]

    def budget_error(self) -> str | None:
        """Why this specialisation breaks the budget (None when it keeps it). Every kernel must
        compile; the register and spill budget holds for the passes over the maps (not for the
        one-program finalize kernels, whose few scalar divisions and sin/cos slow paths ptxas may
        keep in local memory) in float32/float16/bfloat16."""
        if self.error is not None:
            return f"does not compile: {self.error}"
        if self.dtype == "float64" or self.one_program:
            return None
        if self.spill_bytes:
            return f"spills {self.spill_bytes} bytes"
        if self.regs is not None and self.regs > REG_BUDGET:
            return f"{self.regs} registers per thread > {REG_BUDGET}"
        return None


# ------------------------------------------------------------------------------------- recording


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _gap_scenarios(dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    """(op, thunk) pairs covering the gap family's launcher specialisations for one dtype."""
    import torch
    from fused_losses.reference.cases import gap_case

    import fused_losses as fl

    f64 = dtype == torch.float64

    def gap(padding, from_logits, confusers, center="cell", per_image=False):
        def run():
            c = gap_case(
                2, GAP_SIZE, confusers=confusers, padding=padding, from_logits=from_logits
            ).to(dtype, "cpu", requires_grad=True)
            loss = fl.gap_detection_loss(
                *c.args(), from_logits=from_logits, center=center, backend="triton",
                return_per_image=per_image,
            )  # fmt: skip
            (loss[0] if per_image else loss).backward()

        return run

    yield "gap_detection_loss[mask]", gap("mask", False, 2)
    yield "gap_detection_loss[box,logits]", gap("box", True, 2, "exact")
    yield "gap_detection_loss[mask,per_image]", gap("mask", False, 2, per_image=True)
    yield "gap_detection_loss[none,K=0]", gap(None, False, 0)

    def components():
        c = gap_case(2, GAP_SIZE, confusers=2, padding="mask").to(dtype, "cpu", requires_grad=True)
        size = GAP_SIZE
        centers = torch.stack([c.gap_center, c.piece_center], dim=1).detach()
        w = fl.padding_weight(c.padding_mask, size=size, backend="triton")
        fl.padding_weight(
            valid_box=torch.tensor([[0.0, 0, 30, 20]] * 2), size=size, backend="triton"
        )
        y = fl.gaussian_heatmap(centers, size, backend="triton").to(dtype)
        fl.gaussian_heatmap(centers, size, sigma=torch.full((2, 2, 2), 1.5), backend="triton")
        fl.boundary_label(c.padding_mask, backend="triton")
        fl.boundary_label(c.padding_mask.double(), stride=2, kernel_size=5, backend="triton")
        wp = w.to(dtype) if not f64 else w.double()
        for normalize in ("weight", "num_pos", "mean"):
            fl.masked_focal_loss(
                c.heatmap_gap, y, wp, normalize=normalize, backend="triton"
            ).backward()
        fl.masked_focal_loss(c.heatmap_gap, y, from_logits=True, backend="triton").backward()
        t = torch.zeros(2, 4, 1, 1, dtype=dtype)
        m = (y > 0.7).to(dtype) * wp
        fl.masked_smooth_l1_loss(c.offset, t, m, backend="triton").backward()
        fl.masked_cosine_loss(c.angle, c.gap_angle, m, backend="triton").backward()
        fl.hard_negative_margin_loss(
            c.heatmap_gap, c.gap_center, c.confusers, c.confuser_mask, wp, backend="triton"
        ).backward()

    yield "component ops", components


def _centernet_scenarios(dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    import torch

    import fused_losses as fl

    def run():
        g = torch.Generator().manual_seed(0)
        b, n, c, hm_size = 2, 5, 3, CENTERNET_SIZE
        boxes = torch.rand(b, n, 2, generator=g) * 30
        boxes = torch.cat([boxes, boxes + 8 + torch.rand(b, n, 2, generator=g) * 20], dim=-1)
        labels = torch.randint(0, c, (b, n), generator=g)
        mask = torch.ones(b, n, dtype=torch.bool)
        hm = torch.randn(b, c, *hm_size, dtype=dtype, requires_grad=True)
        wh = torch.randn(b, 2, *hm_size, dtype=dtype, requires_grad=True)
        reg = torch.randn(b, 2, *hm_size, dtype=dtype, requires_grad=True)
        fl.centernet_loss(
            hm, wh, reg, boxes=boxes, labels=labels, box_mask=mask, backend="triton"
        ).backward()
        t = fl.centernet_targets(
            boxes, labels, mask, num_classes=c, output_size=hm_size, backend="triton"
        )
        fl.reg_l1_loss(wh, t["reg_mask"], t["ind"], t["wh"], backend="triton").backward()
        fl.transpose_and_gather_feat(reg, t["ind"], backend="triton").sum().backward()
        fl.centernet_focal_loss(hm, t["hm"].to(dtype), backend="triton").backward()
        fl.reg_smooth_l1_loss(wh, t["reg_mask"], t["ind"], t["wh"], backend="triton").backward()
        fl.reg_weighted_l1_loss(
            wh,
            t["reg_mask"][..., None].expand(-1, -1, 2).float(),
            t["ind"],
            t["wh"],
            backend="triton",
        ).backward()

    yield "centernet", run

    def pose(dense_hp, mse_loss, dtype_boxes):
        def call():
            g = torch.Generator().manual_seed(1)
            b, n, j = 2, 4, 17
            xy = torch.rand(b, n, 2, generator=g) * 60
            boxes = torch.cat([xy, xy + 8 + torch.rand(b, n, 2, generator=g) * 40], dim=-1)
            kp = torch.cat([boxes[..., None, :2] + torch.rand(b, n, j, 2, generator=g) * 8,
                            torch.ones(b, n, j, 1)], dim=-1)  # fmt: skip
            fl.centernet_pose_targets(
                boxes.to(dtype_boxes), kp, output_size=CENTERNET_SIZE, num_joints=j,
                dense_hp=dense_hp, mse_loss=mse_loss, hm_gauss=2.5 if mse_loss else None,
                backend="triton",
            )  # fmt: skip

        return call

    yield "pose[umich]", pose(False, False, torch.float32)
    yield "pose[dense,umich]", pose(True, False, torch.float32)
    yield "pose[dense,msra]", pose(True, True, torch.float32)
    yield "pose[dense,f64]", pose(True, False, torch.float64)


def _cass_scenarios(dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    import torch

    import fused_losses as fl

    def run(anisotropic, decay, merge, loss, eps, box_dtype):
        def call():
            g = torch.Generator().manual_seed(0)
            b, n, feat = 2, 6, (20, 20)
            xy = torch.rand(b, n, 2, generator=g) * 500
            boxes = torch.cat([xy, xy + 8 + torch.rand(b, n, 2, generator=g) * 120], dim=-1)
            boxes = boxes.to(box_dtype)
            mask = torch.rand(b, n, generator=g) > 0.2
            scores = torch.randn(b, 25, dtype=dtype, requires_grad=True)
            opts = dict(anisotropic=anisotropic, decay=decay, merge=merge)
            fl.cass_loss(
                scores, boxes, mask, feat_size=feat, backend="triton", loss=loss, eps=eps, **opts
            ).backward()
            fl.cass_soft_target(boxes, feat, box_mask=mask, backend="triton", **opts)
            target = torch.rand(b, 25)
            fl.soft_focal_loss(scores, target, eps=eps, backend="triton").backward()

        return call

    yield "cass[aniso,gauss,max,focal]", run(True, "gaussian", "max", "focal", 1e-8, torch.float32)
    yield "cass[circ,linear,sum,mse]", run(False, "linear", "sum", "mse", 1e-8, torch.float32)
    yield "cass[eps0,f64 boxes]", run(True, "gaussian", "max", "focal", 0.0, torch.float64)
    yield "cass[tiny eps]", run(True, "gaussian", "max", "focal", 1e-50, torch.float32)


def _rord_scenarios(dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    import math

    import torch

    import fused_losses as fl

    def run(c=16, **opts):
        def call():
            g = torch.Generator().manual_seed(0)
            b, hf, wf = 2, 12, 12
            det = [torch.rand(b, 1, hf, wf, generator=g).to(dtype).requires_grad_() for _ in "or"]
            desc = [torch.randn(b, c, hf, wf, generator=g).to(dtype).requires_grad_() for _ in "or"]
            t = 0.3
            h = torch.tensor([[math.cos(t), -math.sin(t), 9.0], [math.sin(t), math.cos(t), 2.0]])
            fl.rord_loss(*det, *desc, h, backend="triton", num_candidates=50, **opts).backward()

        return call

    yield "rord[zeros,l2]", run()
    yield "rord[C=128]", run(c=128)
    yield "rord[ignore,logits,squared,neg grad,radius]", run(
        outside="ignore", from_logits=True, distance="squared_l2", detach_negative=False,
        safe_radius=16.0,
    )  # fmt: skip


def _registry_scenarios(dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    """The fused dense losses of the registry: every loss kind of both kernels in float32 (each
    mode: sums, none, both gradients), on a map and on [N, C] logits; a few in the other dtypes
    (they share the code paths; the check's time stays in budget)."""
    import torch

    from fused_losses.registry import build_loss

    def run(cfg, target, shape, reductions=("mean", "none")):
        def call():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g).to(dtype).requires_grad_()
            c = shape[1]
            rest = (shape[0], *shape[2:])
            if target == "index":
                t = torch.randint(0, c, rest, generator=g)
            elif target == "scores":
                t = (torch.randint(0, c + 1, rest, generator=g), torch.rand(rest, generator=g))
            else:
                t = torch.rand(shape, generator=g).to(dtype)
            loss = build_loss({**cfg, "backend": "triton"})
            w = torch.rand(rest, generator=g)
            for red in reductions:
                loss(x, t, weight=w, reduction_override=red).sum().backward()

        return call

    cw = {"class_weight": [1.0 + i / 10 for i in range(19)]}
    ce = {"type": "CrossEntropyLoss", "label_smoothing": 0.1, **cw}
    focal = {"type": "FocalLoss", "alpha": cw["class_weight"]}
    if dtype != torch.float32:
        if dtype != torch.float16:
            yield "CE[map]", run(ce, "index", (4, 19, 8, 8), ("mean",))
            yield "focal[map]", run(focal, "index", (4, 19, 8, 8), ("mean",))
            yield "KD[map]", run({"type": "KDLoss"}, "dense", (4, 19, 8, 8), ("mean",))
        return
    for shape in ((4, 19, 8, 8), (64, 19)):
        tag = "map" if len(shape) > 2 else "NC"
        yield f"CE[{tag}]", run(ce, "index", shape)
        yield f"focal[{tag}]", run(focal, "index", shape)
    m = (4, 19, 8, 8)
    yield "CE[C=2000]", run({"type": "CrossEntropyLoss"}, "index", (8, 2000), ("mean",))
    yield "BCE", run({"type": "BinaryCrossEntropyLoss", **cw}, "dense", m)
    yield "BCE probs", run({"type": "BinaryCrossEntropyLoss", "with_logits": False}, "dense", m)
    yield "ASL", run({"type": "AsymmetricLoss", "disable_torch_grad_focal": False}, "dense", m)
    yield "QFL", run({"type": "QualityFocalLoss"}, "scores", m)
    yield "VFL", run({"type": "VariFocalLoss"}, "dense", m)
    yield "softCE", run({"type": "SoftCrossEntropyLoss"}, "dense", m)
    yield "softmax focal", run({"type": "FocalLoss", "use_sigmoid": False}, "index", m)
    yield "softmax focal dense", run({"type": "FocalLoss", "use_sigmoid": False}, "dense", m)
    yield "KD[map]", run({"type": "KnowledgeDistillationLoss"}, "dense", m)
    yield "KD[NC]", run({"type": "KnowledgeDistillationLoss"}, "dense", (64, 19))


def _box_scenarios(dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    """The IoU-family box losses (``kernels/box.py``): every kind (IoULoss in each mode) in both
    formats in float32 and float64, with the gradient stored; one call without it; SIoU and CIoU
    (the longest kinds) from float16/bfloat16 boxes."""
    import torch

    from fused_losses.registry import build_loss

    def run(cfg, grad=True):
        def call():
            g = torch.Generator().manual_seed(0)
            t = torch.rand(300, 4, generator=g) * 50  # 3 programs: a pass, not a finalize
            t[:, 2:] += t[:, :2] + 1
            p = (t + torch.randn(300, 4, generator=g)).to(dtype).requires_grad_(grad)
            loss = build_loss({**cfg, "backend": "triton"})
            out = loss(p, t.to(dtype))
            if grad:
                out.backward()

        return call

    kinds = [("IoULoss", {"mode": m}) for m in ("linear", "square", "log")]
    kinds += [(n, {}) for n in ("GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss", "SIoULoss")]
    if dtype not in (torch.float32, torch.float64):
        yield "SIoU", run({"type": "SIoULoss"})
        yield "CIoU", run({"type": "CIoULoss"})
        return
    for name, opts in kinds:
        for fmt in ("xyxy", "xywh"):
            tag = "".join(f"[{v}]" for v in opts.values()) + f"[{fmt}]"
            yield name + tag, run({"type": name, "bbox_format": fmt, **opts})
    yield "GIoU[no grad]", run({"type": "GIoULoss"}, grad=False)


def _segmentation_scenarios(dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    """The Dice kernels (every activation and target kind in float32, softmax in the other
    dtypes), the Lovasz kernels (softmax in every dtype, per image, many classes and the hinge in
    float32) and the distance transform (HDLoss)."""
    import torch

    from fused_losses.registry import build_loss

    def run(cfg, shape, target="index"):
        def call():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g).to(dtype).requires_grad_()
            rest = (shape[0], *shape[2:])
            if target == "index":
                t = torch.randint(0, shape[1], rest, generator=g)
            elif target == "binary":
                t = torch.randint(0, 2, shape, generator=g)
            else:
                t = torch.randn(shape, generator=g).to(dtype)
            build_loss({**cfg, "backend": "triton"})(x, t).backward()

        return call

    m = (4, 19, 8, 8)
    yield "Dice", run({"type": "DiceLoss"}, m)
    yield "Lovasz", run({"type": "LovaszLoss"}, m)
    if dtype != torch.float32:
        return
    yield "Lovasz per image", run({"type": "LovaszLoss", "per_image": True}, m)
    yield "Lovasz C=150", run({"type": "LovaszLoss"}, (2, 150, 8, 8))
    yield "Lovasz hinge", run({"type": "LovaszHingeLoss"}, (4, 1, 8, 8), "binary")
    yield "Dice sigmoid", run({"type": "DiceLoss", "use_sigmoid": True}, m)
    yield "Dice dense", run({"type": "DiceLoss", "activate": False}, m, "dense")
    yield "Dice C=150", run({"type": "DiceLoss"}, (2, 150, 8, 8))
    yield "BinaryDice", run({"type": "BinaryDiceLoss"}, (4, 1, 8, 8), "binary")
    yield "GDL", run({"type": "GeneralizedDiceLoss"}, m)
    yield "Surface", run({"type": "SurfaceLoss"}, m, "dense")
    yield "OHEM CE", run({"type": "OHEMCrossEntropyLoss"}, m)
    yield "HD", run({"type": "HDLoss"}, (2, 3, 16, 16))


def _feature_scenarios(dtype) -> Iterator[tuple[str, Callable[[], object]]]:
    """The feature-imitation kernel: each loss kind, with and without ``normalize``, on maps
    (float32; MSE in the other dtypes)."""
    import torch

    from fused_losses.registry import build_loss

    def run(cfg, shape, reductions=("mean", "none")):
        def call():
            g = torch.Generator().manual_seed(0)
            s = torch.randn(shape, generator=g).to(dtype).requires_grad_()
            t = torch.randn(shape, generator=g).to(dtype)
            loss = build_loss({**cfg, "backend": "triton"})
            for red in reductions:
                loss(s, t, reduction_override=red).sum().backward()

        return call

    m = (2, 64, 8, 8)
    yield "FeatureMSE", run({"type": "FeatureMSELoss"}, m)
    if dtype != torch.float32:
        return
    for name in ("FeatureMSELoss", "FeatureL1Loss", "FeatureCosineLoss"):
        yield f"{name} normalize", run({"type": name, "normalize": True}, m)
    yield "FeatureCosine", run({"type": "FeatureCosineLoss"}, m)
    yield "Attention", run({"type": "AttentionLoss"}, m, ("mean",))


@contextlib.contextmanager
def _recording(sink: list, op: str, dtype: str):
    """Patch the launch path so that launches are recorded, not run, and the triton backend is
    accepted for CPU tensors."""
    from fused_losses.kernels import launch as _launch

    from fused_losses import backend as _backend

    def record(kernel):
        class _Grid:
            def __getitem__(self, grid):
                def call(*args, **kwargs):
                    sink.append(Launch(kernel, args, kwargs, op, dtype, tuple(grid)))

                return call

        return _Grid()

    saved = (_launch._wrap, _backend.interpreter_on)
    _launch._wrap = record
    _backend.interpreter_on = lambda: True
    try:
        yield
    finally:
        _launch._wrap, _backend.interpreter_on = saved


def record_launches(dtypes=DTYPES) -> list[Launch]:
    """Every launch the public ops issue for the scenarios above, one list over ``dtypes``."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset or 0 (compilable kernels)")
    import warnings

    sink: list[Launch] = []
    for name in dtypes:
        dtype = _torch_dtype(name)
        for scenarios in (
            _gap_scenarios, _centernet_scenarios, _cass_scenarios, _rord_scenarios,
            _registry_scenarios, _box_scenarios, _segmentation_scenarios, _feature_scenarios,
        ):  # fmt: skip
            for op, thunk in scenarios(dtype):
                with _recording(sink, op, name), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    thunk()
    return sink


# ------------------------------------------------------------------------------------ compiling


def _bind(launch: Launch, backend):
    """(signature, constexprs, attrs, options) exactly as ``JITFunction.run`` computes them."""
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.kwargs)
    kwargs.setdefault("debug", False)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    key = (kernel.fn.__qualname__, repr(specialization), repr(sorted(options.__dict__.items())))
    return key, signature, constexprs, attrs, options


_PTXAS = re.compile(
    r"(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers", re.DOTALL
)


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a compile error, on one line (Triton nests one error per frame)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [x for x in str(exc).strip().splitlines() if x.strip() and x.strip() != "^"]
    return f"{type(exc).__name__}: {lines[-1].strip() if lines else ''}"[:300]


def _compile(launch: Launch, arch: int, bound) -> Report:
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    _key, signature, constexprs, attrs, options = bound
    report = Report(launch.kernel.fn.__name__, launch.op, launch.dtype, arch, options.num_warps)
    report.one_program = launch.grid in ((1,), (1, 1), (1, 1, 1))
    from triton.backends.compiler import GPUTarget

    src = ASTSource(launch.kernel, signature, constexprs, attrs)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton_compile(
                src, target=GPUTarget("cuda", arch, 32), options=options.__dict__
            )
    except Exception as exc:  # the point of the check: report it, per kernel
        report.error = _root_cause(exc)
        return report
    found = _PTXAS.search(log.getvalue())
    if found:
        report.spill_bytes = int(found.group(1)) + int(found.group(2))
        report.regs = int(found.group(3))
    report.shared = int(compiled.metadata.shared)
    return report


def compile_all(launches: list[Launch], archs=ARCHS, only: str = "") -> list[Report]:
    """Compile each distinct specialisation once per arch (fresh Triton cache: ptxas always runs,
    so its register report is always read)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    triton.knobs.nvidia.dump_ptxas_log = True
    reports = []
    with tempfile.TemporaryDirectory() as cache:
        saved = os.environ.get("TRITON_CACHE_DIR")
        os.environ["TRITON_CACHE_DIR"] = cache
        triton.knobs.cache.dir = cache
        try:
            for arch in archs:
                backend = make_backend(GPUTarget("cuda", arch, 32))
                seen = set()
                for launch in launches:
                    if only not in launch.kernel.fn.__name__:
                        continue
                    bound = _bind(launch, backend)
                    if bound[0] in seen:
                        continue
                    seen.add(bound[0])
                    reports.append(_compile(launch, arch, bound))
        finally:
            if saved is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = saved
    return reports


# ------------------------------------------------------------------------------------- reporting


def table(reports: list[Report], markdown: bool = False) -> str:
    head = ("kernel", "dtype", "sm", "warps", "regs", "spill B", "smem B", "occupancy", "first op")
    # One-program kernels are marked with a * after their name (budget: compile only).
    rows = []
    for r in sorted(reports, key=lambda r: (r.kernel, DTYPES.index(r.dtype), r.arch)):
        occ = r.occupancy
        rows.append(
            (
                r.kernel + ("*" if r.one_program else ""),
                r.dtype,
                str(r.arch),
                str(r.num_warps),
                "-" if r.regs is None else str(r.regs),
                "-" if r.spill_bytes is None else str(r.spill_bytes),
                "-" if r.shared is None else str(r.shared),
                "ERROR" if r.error else ("-" if occ is None else f"{occ:.0%}"),
                r.op,
            )
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        fmt = "  ".join(f"{{:{w}}}" for w in widths)
        lines = [fmt.format(*head)] + [fmt.format(*row) for row in rows]
    for r in reports:
        if r.error:
            lines.append(f"ERROR {r.kernel} [{r.dtype}, sm_{r.arch}]: {r.error}")
    return "\n".join(lines)


def summarize(reports: list[Report]) -> list[str]:
    """Budget violations, one line each (empty: every kernel compiles within budget)."""
    out = []
    for r in reports:
        why = r.budget_error()
        if why:
            out.append(f"{r.kernel} [{r.dtype}, sm_{r.arch}, {r.num_warps} warps, {r.op}]: {why}")
    return sorted(set(out))


def mutation_report(launches: list[Launch]) -> tuple[list[str], int]:
    """What torch.compile's ``triton_op`` tracing sees each kernel write, one line per kernel.

    ``torch._higher_order_ops.triton_kernel_wrap`` builds each kernel's TTIR with the scalar
    arguments as Python constants; when that fails it logs a warning and assumes every input is
    mutated (functionalisation then copies every input map). Returns (lines, failures).
    """
    import triton
    import triton.runtime
    from torch._higher_order_ops import triton_kernel_wrap as tkw
    from triton.backends.compiler import GPUTarget

    class _Sm90:  # the analysis asks the active driver for its target; no GPU here
        @staticmethod
        def get_current_target():
            return GPUTarget("cuda", 90, 32)

    warned: list[str] = []
    logger = tkw.log  # "torch._dynamo" (2.11) or the module's own; torch may reset its handlers

    def _catch(msg, *args, **kwargs):
        warned.append(str(msg) % args if args else str(msg))

    logger.warning = _catch  # an instance attribute: only this logger object, until restored
    previous = triton.runtime.driver._active  # None until a driver was first asked for
    triton.runtime.driver.set_active(_Sm90())
    lines, failures, seen = [], 0, set()
    try:
        for la in launches:
            name = la.kernel.fn.__name__
            if name in seen:
                continue
            seen.add(name)
            kwargs = {**dict(zip(la.kernel.arg_names, la.args)), **la.kwargs}
            kwargs = {n: kwargs[n] for n in la.kernel.arg_names if n in kwargs}
            warned.clear()
            try:
                if hasattr(tkw, "identify_mutated_tensors"):  # torch <= 2.12
                    writes = sorted(tkw.identify_mutated_tensors(la.kernel, kwargs, {}))
                else:
                    acc = tkw.identify_accessed_tensors(la.kernel, kwargs, {})
                    writes = sorted(d.name for d in acc.read_writes.writes)
            except Exception as e:  # an analysis that raises counts as a failure too
                warned.append(f"{type(e).__name__}: {e}")
                writes = []
            if warned:
                failures += 1
                lines.append(f"FAIL {name}: {warned[0].splitlines()[0][:200]}")
            else:
                lines.append(f"ok   {name}: writes {', '.join(writes)}")
    finally:
        del logger.warning
        triton.runtime.driver._active = previous
    return lines, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="default: 80 90")
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    parser.add_argument("--only", default="", help="only kernels whose name contains this")
    parser.add_argument(
        "--mutations",
        action="store_true",
        help="instead: what torch.compile's triton_op analysis sees each kernel write",
    )
    args = parser.parse_args(argv)
    import torch
    import triton

    print(
        f"# torch {torch.__version__}, triton {triton.__version__}; budget {REG_BUDGET} registers"
    )
    import warnings

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    if args.mutations:
        lines, failures = mutation_report(record_launches(args.dtype))
        print("\n".join(lines))
        print(f"\n{len(lines)} kernels analysed, {failures} failing")
        return 1 if failures else 0
    reports = compile_all(record_launches(args.dtype), args.arch, args.only)
    print(table(reports, args.markdown))
    problems = summarize(reports)
    print(f"\n{len(reports)} compiled specialisations, {len(problems)} over budget or failing")
    for line in problems:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
