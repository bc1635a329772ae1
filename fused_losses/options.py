"""Options objects and the module base class: the one home of each loss's option names, defaults
and checks (docs/adding_a_loss.md).

Every loss has a frozen dataclass of options, a subclass of :class:`LossOptions`, validated once
when it is built (``__post_init__``): numbers become floats, and a bad value raises a ValueError or
TypeError naming the option. The functional form takes the options as keywords (or a built
``options=`` object), the module form builds them once in ``__init__`` (:class:`LossModule`), and
both hand the object whole to the backends; the triton glue flattens it once, at the kernel
boundary.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, ClassVar, TypeVar

import torch

from .backend import check_backend
from .distributed import check_process_group
from .validation import check_bool

OptionsT = TypeVar("OptionsT", bound="LossOptions")


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """Base of every loss's options. Subclasses add fields (with defaults) and check them in
    :meth:`validate`, storing normalised values with :meth:`_set`.

    Every loss has ``reduce_across_ranks`` (default False) and ``process_group`` (default None:
    the default group): with an initialised process group of more than one rank, the loss's
    data-dependent denominators are all-reduced across the ranks, so that under
    DistributedDataParallel the averaged gradients equal those of the single-process loss on the
    concatenated batch and every rank returns that global loss (``fused_losses.distributed``).
    """

    reduce_across_ranks: bool = False
    process_group: Any = None
    backend: str = "auto"

    def __new__(cls, *args: Any, **kwargs: Any):
        # an unknown keyword is a TypeError naming it (spec 3.5), not the dataclass __init__'s
        # "got an unexpected keyword argument"
        for name in kwargs:
            if name not in cls.__dataclass_fields__:
                raise TypeError(_unknown_option(cls, name))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        check_backend(self.backend)
        check_bool("reduce_across_ranks", self.reduce_across_ranks)
        check_process_group("process_group", self.process_group)
        self.validate()

    def validate(self) -> None:
        """Check (and normalise) the subclass's fields; raise ValueError/TypeError naming one."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @classmethod
    def build(
        cls: type[OptionsT], options: OptionsT | None = None, overrides: dict | None = None
    ) -> OptionsT:
        """``options`` (an instance of this class, or None for the defaults) with ``overrides``
        (option keywords) applied; an unknown keyword is a TypeError naming it (``__new__``)."""
        if options is None:
            return cls(**(overrides or {}))
        if not isinstance(options, cls):
            raise TypeError(f"options: expected a {cls.__name__}, got {type(options).__name__}")
        return options.replace(**overrides) if overrides else options

    def replace(self: OptionsT, **changes: Any) -> OptionsT:
        """A copy with ``changes`` applied (validated again)."""
        return type(self)(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """The options by name, in field order (the backend last)."""
        return {name: getattr(self, name) for name in _names(type(self))}


def _unknown_option(cls: type[LossOptions], name: str) -> str:
    """``name: not an option of <cls>; expected one of ... (did you mean ...?)``."""
    names = _names(cls)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{name}: not an option of {cls.__name__}; expected one of {', '.join(names)}{hint}"


COMMON_OPTIONS = ("reduce_across_ranks", "process_group", "backend")  # LossOptions' own fields


def _names(cls: type[LossOptions]) -> list[str]:
    """Field names, the loss's own first and the inherited ones (``COMMON_OPTIONS``) last (read
    from the class dict, which torch.compile traces, unlike ``dataclasses.fields``)."""
    return [n for n in cls.__dataclass_fields__ if n not in COMMON_OPTIONS] + list(COMMON_OPTIONS)


def options_signature(cls: type[LossOptions]) -> inspect.Signature:
    """``(options=None, *, <each field>=<default>)``: what a module's constructor accepts."""
    defaults = {n: f.default for n, f in cls.__dataclass_fields__.items()}
    params = [inspect.Parameter("options", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n])
        for n in _names(cls)
    ]
    return inspect.Signature(params)


class _ConstructorSignature:
    """``Loss.__signature__``: the options, for help() and inspect on the class; None on an
    instance, whose signature stays that of ``forward``."""

    def __get__(self, obj: object, owner: type) -> inspect.Signature | None:
        return None if obj is not None else options_signature(owner.Options)


class LossModule(torch.nn.Module):
    """Base of the loss modules: ``Loss(**options)`` or ``Loss(options)`` (an ``Options``
    instance, keywords overriding its fields); the validated options are ``self.options``."""

    Options: ClassVar[type[LossOptions]] = LossOptions
    __signature__ = _ConstructorSignature()

    def __init__(self, options: LossOptions | None = None, **overrides: Any) -> None:
        super().__init__()
        self.options = self.Options.build(options, overrides)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.as_dict().items())
