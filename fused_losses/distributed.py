"""Global normalisers across data-parallel ranks (docs/spec.md 9): the ``reduce_across_ranks``
and ``process_group`` options of every loss.

A normalised loss on rank r of R is ``N_r / D_r``: its own numerator over its own denominator
(sum W, positives, valid confusers, mask sums, element counts). Under ``DistributedDataParallel``,
which averages the ranks' gradients, that is neither the loss of the whole batch nor its gradient.
With ``reduce_across_ranks=True`` each op all-reduces its raw denominator sums (a few scalars,
on the device, between the normaliser pass and the pass that uses them; no host sync), so every
rank computes its share ``N_r / D`` with the global D = sum_r D_r, and returns

    value = sum_r N_r / D               (all-reduced once more: the global loss, for logging)
    d value / d (rank r's inputs) = R * dN_r / D

The factor R (the world size) is there because DDP divides the summed gradients by R: the
averaged gradient is then sum_r dN_r / D, exactly the gradient of the single-process loss on the
concatenated batch, provided ``process_group`` is the group DDP averages over (its default, the
whole world; R is that group's size). Without an initialised process group, or in a group of one
rank, the option is a no-op. A single-term loss costs two all-reduces of a few scalars (the
denominators, then the values); a composite one (CenterNet's totals) one per term's denominators
and one for the values. Inside ``torch.compile`` an active group is refused with a clear error
(call the loss outside the compiled region).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def check_process_group(name: str, group: object) -> None:
    """None, or a ``torch.distributed.ProcessGroup``."""
    if group is None:
        return
    pg_type = _process_group_type()
    if pg_type is None or not isinstance(group, pg_type):
        raise TypeError(
            f"{name}: expected None or a torch.distributed.ProcessGroup, got {type(group).__name__}"
        )


def _process_group_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    return torch.distributed.ProcessGroup


def active_group(options: Any) -> Any | None:
    """The process group the loss reduces over, or None when the option is a no-op (off, no
    initialised process group, or one rank)."""
    if not getattr(options, "reduce_across_ranks", False):
        return None
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return None
    group = options.process_group if options.process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "reduce_across_ranks: not supported inside torch.compile (the denominators are "
            "all-reduced between kernel launches); call the loss outside the compiled region"
        )
    return group


def sum_across_ranks(x: Tensor, group: Any) -> Tensor:
    """sum over the ranks of ``group`` of ``x`` (a new tensor; ``x`` is left as it is)."""
    out = x.detach().clone()
    torch.distributed.all_reduce(out, group=group)
    return out


def denominator_sync(group: Any | None) -> Callable[[Tensor], Tensor] | None:
    """``sums -> global sums`` for the ops' launchers (None when there is nothing to reduce)."""
    if group is None:
        return None
    return lambda sums: sum_across_ranks(sums, group)


class _RankShare(torch.autograd.Function):
    """value: the all-reduced global loss; gradient: R times the local share's (see module)."""

    @staticmethod
    def forward(ctx, local: Tensor, value: Tensor, world: int):  # type: ignore[override]
        ctx.world = world
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.world, None, None


def global_loss(
    local: Tensor, group: Any | None, extras: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """(global loss, global extras): ``local`` (this rank's share N_r / D, differentiable) and
    ``extras`` (detached components with the same normalisers) summed over the ranks in one
    all-reduce; the loss's gradient flows to ``local`` times the world size. Identity when
    ``group`` is None."""
    if group is None:
        return local, extras
    flat = local.detach().reshape(1)
    if extras is not None:
        flat = torch.cat([flat, extras.detach().reshape(-1).to(flat.dtype)])
    total = sum_across_ranks(flat, group)
    world = torch.distributed.get_world_size(group)
    value = _RankShare.apply(local, total[0], world)
    if extras is None:
        return value, None
    return value, total[1:].view(extras.shape).to(extras.dtype)


def finish(local: Tensor, group: Any | None) -> Tensor:
    """The global loss of a single-term op (:func:`global_loss` without extras)."""
    return global_loss(local, group)[0]
