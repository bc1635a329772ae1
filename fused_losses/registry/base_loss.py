"""``BaseLoss``: the weighting, reduction and naming every registry loss shares (docs/spec.md 12.2).

A subclass declares its options (``OPTIONS``: name -> default; ``ALIASES``: alias -> option) and
implements ``_forward(pred, target, **options) -> (l, v)``: the elementwise loss and, for index
targets, the validity mask (None otherwise). ``forward`` applies the weights, the reduction
(``utils.apply_weight_and_reduce``) and ``loss_weight``.
"""

from __future__ import annotations

import difflib
import numbers
import re
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..backend import check_backend
from ..validation import check_number, shape_str
from .utils import REDUCTIONS, apply_weight_and_reduce

COMMON = ("loss_weight", "reduction", "avg_factor", "loss_name", "backend")


def check_ignore_index(value: Any) -> int | None:
    """None, or an int that int64 holds (labels are compared with it as int64): a TypeError or
    ValueError naming ``ignore_index`` otherwise. Also applied to a call's ``ignore_index``
    (``BaseLoss._call_options``), for every loss that takes one."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ignore_index: expected an int or None, got {type(value).__name__}")
    if not -(2**63) <= value <= 2**63 - 1:
        raise ValueError(
            f"ignore_index: expected an int in the int64 range [-2**63, 2**63 - 1] or None, "
            f"got {value!r}"
        )
    return value


def check_avg_factor(value: Any) -> float | Tensor | None:
    """The "mean" denominator (docs/spec.md 12.2): None; a finite real number (not a bool, not a
    string), returned as a float; or a real tensor of one element (0-dim or not), returned 0-dim.
    A tensor's value is not read (no host sync); anything else raises a TypeError/ValueError
    naming ``avg_factor``."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"avg_factor: expected a real tensor, got dtype {value.dtype}")
        if value.numel() != 1:
            raise ValueError(
                "avg_factor: expected a number or a tensor of one element (0-dim), got shape "
                f"{shape_str(value)}"
            )
        return value.reshape(())
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) or isinstance(value, numbers.Real)
    ):
        raise TypeError(
            f"avg_factor: expected a number or a 0-dim tensor, got {type(value).__name__}"
        )
    if torch.compiler.is_compiling():  # (a symbolic number: checked eagerly, not per trace)
        return value
    return check_number("avg_factor", value if isinstance(value, (int, float)) else float(value))


def check_weight(weight: Any, pred: Tensor) -> Tensor | None:
    """A call's sample weight: None, or a real (floating, integer or bool) tensor on ``pred``'s
    device; a TypeError (not a tensor, complex) or ValueError (another device) naming ``weight``
    otherwise, before any work. Its shape is checked against l's by ``expand_weight``."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.is_complex():
        raise TypeError(f"weight: expected a real tensor, got dtype {weight.dtype}")
    if isinstance(pred, Tensor) and weight.device != pred.device:
        raise ValueError(f"weight: expected a tensor on {pred.device}, got one on {weight.device}")
    return weight


def check_loss_name(name: Any, what: str = "loss_name") -> str:
    """A loss name, used as a key of a ``MultiLoss`` (a ``ModuleDict``) and of its components:
    a non-empty str without "." (a TypeError/ValueError naming ``what`` otherwise)."""
    if not isinstance(name, str):
        raise TypeError(f"{what}: expected a str (a loss name), got {type(name).__name__}")
    if not name or "." in name:
        raise ValueError(f"{what}: expected a non-empty name without '.', got {name!r}")
    return name


def default_loss_name(name: str) -> str:
    """``"loss_"`` + the registered name lower-cased without its trailing ``Loss``."""
    return "loss_" + re.sub(r"Loss$", "", name).lower()


class BaseLoss(torch.nn.Module):
    """Base of the registry losses: ``Loss(*, loss_weight=1.0, reduction="mean",
    avg_factor=None, loss_name=None, backend="auto", **options)``, called as
    ``loss(pred, target, weight=None, avg_factor=None, reduction_override=None,
    **call_options)``."""

    OPTIONS: ClassVar[dict[str, Any]] = {}
    ALIASES: ClassVar[dict[str, str]] = {}
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ()  # options a call may override (ignore_index)
    DEFAULT_REDUCTION: ClassVar[str] = "mean"
    registry_name: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        loss_weight: float = 1.0,
        reduction: str | None = None,
        avg_factor: float | None = None,
        loss_name: str | None = None,
        backend: str = "auto",
        **options: Any,
    ) -> None:
        super().__init__()
        check_number("loss_weight", loss_weight)  # (an int beyond float's range: not finite)
        reduction = self.DEFAULT_REDUCTION if reduction is None else reduction
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
        avg_factor = check_avg_factor(avg_factor)
        if reduction in ("sum", "batchmean") and avg_factor is not None:
            raise ValueError(f'avg_factor: can not be used with reduction="{reduction}"')
        check_backend(backend)
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.avg_factor = avg_factor
        self.backend = backend
        name = self.registry_name or type(self).__name__
        self.loss_name = (
            check_loss_name(loss_name) if loss_name is not None else default_loss_name(name)
        )
        self.options = self._resolve_options(options)

    @classmethod
    def _resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        out = dict(cls.OPTIONS)
        seen: dict[str, str] = {}
        for key, value in given.items():
            name = cls.ALIASES.get(key, key)
            if name not in cls.OPTIONS:
                known = sorted([*cls.OPTIONS, *cls.ALIASES, *COMMON])
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"{key}: not an option of {cls.registry_name or cls.__name__}; expected one "
                    f"of {', '.join(known)}{hint}"
                )
            if name in seen:
                raise ValueError(f"{key}: given together with {seen[name]!r}, which it aliases")
            seen[name] = key
            out[name] = value
        cls.check_options(out)
        return out

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise a ValueError/TypeError naming a bad option (subclasses)."""

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        head = f"loss_weight={self.loss_weight}, reduction={self.reduction!r}"
        return head + (f", {opts}" if opts else "")

    def _call_options(self, call_options: dict[str, Any]) -> dict[str, Any]:
        """The configured options with a call's overrides (``CALL_OPTIONS`` only)."""
        options = dict(self.options)
        for key, value in call_options.items():
            name = self.ALIASES.get(key, key)
            if name not in self.CALL_OPTIONS:
                raise ValueError(
                    f"{key}: not an option of a {self.registry_name or type(self).__name__} call; "
                    f"expected one of {', '.join(self.CALL_OPTIONS) or 'none'}"
                )
            options[name] = check_ignore_index(value) if name == "ignore_index" else value
        return options

    def _reduction(self, reduction_override: Any) -> str:
        """The call's reduction: ``reduction_override`` (checked, named) or the configured one."""
        if reduction_override is None:
            return self.reduction
        if not isinstance(reduction_override, str) or reduction_override not in REDUCTIONS:
            raise ValueError(
                f"reduction_override: expected None or one of {list(REDUCTIONS)}, got "
                f"{reduction_override!r}"
            )
        return reduction_override

    def _batch(self, pred: Tensor) -> int:
        """The "batchmean" divisor: pred's leading size (1 for a 0-dim pred). A loss whose pred
        has a trailing axis per sample (box coordinates, DFL bins) counts one unbatched sample
        as 1."""
        return pred.shape[0] if pred.dim() else 1

    def _forward(self, pred: Tensor, target: Any, **options: Any) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _mask_inputs(self, pred: Tensor, target: Any, weight: Tensor | None) -> tuple[Tensor, Any]:
        """(pred, target) with the elements of zero weight replaced by harmless values (their
        loss and gradients are then finite before the rules zero them); as is by default."""
        return pred, target

    def _weight(self, weight: Tensor, loss: Tensor) -> Tensor:
        """The sample weight as the rules take it (the box losses average a [...,4] weight)."""
        return weight

    def forward(
        self,
        pred: Tensor,
        target: Any,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
        **call_options: Any,
    ) -> Tensor:
        reduction = self._reduction(reduction_override)
        options = self._call_options(call_options)
        avg_factor = check_avg_factor(avg_factor)
        weight = check_weight(weight, pred)
        if weight is not None:
            pred, target = self._mask_inputs(pred, target, weight)
        loss, valid = self._forward(pred, target, **options)
        if weight is not None:
            weight = self._weight(weight, loss)
        avg = avg_factor if avg_factor is not None else self.avg_factor
        out = apply_weight_and_reduce(
            loss, weight, valid, reduction, avg, options.get("avg_non_ignore", True),
            batch=self._batch(pred),
        )  # fmt: skip
        return out * self.loss_weight if self.loss_weight != 1.0 else out
