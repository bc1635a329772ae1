"""Distillation losses of the registry (docs/spec.md 12.6; SPEC 10.4). So far the knowledge
distillation loss, fused: ``pred`` = student logits s, ``target`` = teacher logits t (detached),
both [N, C, *] ([N, C] or dense maps, e.g. channel- or pixel-wise KD of segmentation logits):

    l = T^2 KL(Q||P) = T^2 sum_c Q_c (log Q_c - log P_c),  P = softmax(s/T), Q = softmax(t/T)

over dim 1 -> [N, *], reduction "batchmean" (sum / N, mmrazor) by default. One pass computes both
log-sum-exps online and the partial sums (no softmax map in memory); backward writes
dL/ds = T (P - Q) in one pass. The other rows of SPEC 10.4 come with the rest of the family.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..validation import check_number
from .builder import LOSSES
from .dense import (
    SM_KD,
    T_DENSE,
    DenseSpec,
    FusedLoss,
    as_rows,
    check_dense_target,
    check_logits,
    dense_as_rows,
)


@LOSSES.register_module(name=["KnowledgeDistillationLoss", "KDLoss"])
class KnowledgeDistillationLoss(FusedLoss):
    """T^2 KL(softmax(t/T) || softmax(s/T)) (Hinton); s, t [N,C,*] -> [N,*]; ``tau`` is an alias of
    ``temperature``; reduction "batchmean" by default."""

    OPTIONS: ClassVar[dict[str, Any]] = {"temperature": 4.0}
    ALIASES: ClassVar[dict[str, str]] = {"tau": "temperature"}
    DEFAULT_REDUCTION: ClassVar[str] = "batchmean"

    @classmethod
    def check_options(cls, options):
        options["temperature"] = check_number("temperature", options["temperature"], positive=True)

    def _plan(self, pred, target, options):
        s = check_logits(pred)
        t = check_dense_target(target, s)
        if not t.is_floating_point():
            raise TypeError(f"target: expected the teacher's floating-point logits, got {t.dtype}")
        spec = DenseSpec("softmax", SM_KD, T_DENSE, True, a0=options["temperature"])
        l_shape = (s.shape[0], *s.shape[2:])
        return as_rows(s), dense_as_rows(t, s), None, None, None, spec, l_shape, False
