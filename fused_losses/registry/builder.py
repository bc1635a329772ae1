"""The loss registry and the config builders (docs/spec.md 12.1), mmengine-style.

``build_loss(cfg)`` takes what sits under a config's ``loss:`` key: a mapping with ``type`` (one
loss), a list of such mappings, or a mapping of names to mappings (a :class:`MultiLoss`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..validation import check_number
from .base_loss import BaseLoss, check_loss_name


class Registry:
    """Names -> ``BaseLoss`` subclasses: ``register_module(name=None, force=False,
    module=None)`` (a decorator, or a call with ``module``), ``get``, ``build``, ``in``,
    iteration over the names."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._modules: dict[str, type[BaseLoss]] = {}

    def register_module(
        self, name: str | Sequence[str] | None = None, force: bool = False, module: Any = None
    ) -> Any:
        def add(cls: type[BaseLoss]) -> type[BaseLoss]:
            if not (isinstance(cls, type) and issubclass(cls, BaseLoss)):
                raise TypeError(f"module: expected a BaseLoss subclass, got {cls!r}")
            names = [cls.__name__] if name is None else [name] if isinstance(name, str) else name
            if not (
                isinstance(names, Sequence) and names and all(isinstance(n, str) for n in names)
            ):
                raise TypeError(f"name: expected a str, a list of str or None, got {name!r}")
            for n in names:
                if n in self._modules and not force:
                    raise ValueError(
                        f"name: {n!r} is already registered in {self.name} (pass force=True)"
                    )
                self._modules[n] = cls
            if cls.__dict__.get("registry_name") is None:
                cls.registry_name = names[0]
            return cls

        if module is not None:
            return add(module)
        return add

    def get(self, name: str) -> type[BaseLoss]:
        if not isinstance(name, str):
            raise TypeError(
                f"type: expected a registered loss name or a BaseLoss subclass, got {name!r}"
            )
        if name not in self._modules:
            raise ValueError(
                f"type: {name!r} is not a registered loss; registered: "
                f"{', '.join(sorted(self._modules))}"
            )
        return self._modules[name]

    def build(self, cfg: Any) -> torch.nn.Module:
        return build_loss(cfg, registry=self)

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._modules))

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        return f"Registry(name={self.name!r}, items={len(self)})"


LOSSES = Registry("loss")


def _build_one(cfg: Mapping[str, Any], registry: Registry, name: str | None = None) -> BaseLoss:
    if "type" not in cfg:
        raise ValueError(f"type: expected a 'type' key in the loss config, got keys {sorted(cfg)}")
    args = dict(copy.deepcopy({k: v for k, v in cfg.items() if k != "type"}))
    kind = cfg["type"]
    cls = kind if isinstance(kind, type) and issubclass(kind, BaseLoss) else registry.get(kind)
    if "weight" in args:
        if "loss_weight" in args:
            raise ValueError("weight: an alias of loss_weight, given together with it")
        args["loss_weight"] = check_number("weight", args.pop("weight"))  # (loss_weight)
    if name is not None:
        args.setdefault("loss_name", name)
    return cls(**args)


def _is_named(cfg: Mapping[str, Any]) -> bool:
    return "type" not in cfg and len(cfg) > 0 and all(isinstance(v, Mapping) for v in cfg.values())


def build_loss(cfg: Any, registry: Registry | None = None) -> torch.nn.Module:
    """One loss from ``{"type": ..., **args}``; a :class:`MultiLoss` from a list of such
    mappings or from a mapping of names to them. ``cfg`` is not modified."""
    registry = registry or LOSSES
    if isinstance(cfg, Mapping) and not _is_named(cfg):
        return _build_one(cfg, registry)
    if isinstance(cfg, (Mapping, list, tuple)):
        return build_multi_loss(cfg, registry)
    raise TypeError(f"cfg: expected a mapping or a list of mappings, got {type(cfg).__name__}")


def build_multi_loss(cfg: Any, registry: Registry | None = None) -> MultiLoss:
    """A :class:`MultiLoss` from a list of loss configs or a mapping of names to them."""
    registry = registry or LOSSES
    members: dict[str, BaseLoss] = {}
    if len(cfg) == 0:
        raise ValueError("cfg: expected at least one loss config, got an empty one")
    if isinstance(cfg, Mapping):
        for key, sub in cfg.items():
            check_loss_name(key, what=f"{key!r}")
            if not isinstance(sub, Mapping):
                raise TypeError(f"{key}: expected a loss config mapping, got {type(sub).__name__}")
            members[key] = _build_one(sub, registry, name=key)
    else:
        for i, sub in enumerate(cfg):
            if not isinstance(sub, Mapping):
                raise TypeError(
                    f"cfg[{i}]: expected a loss config mapping, got {type(sub).__name__}"
                )
            loss = _build_one(sub, registry)
            key, n = loss.loss_name, 0
            while key in members:
                n += 1
                key = f"{loss.loss_name}_{n}"
            members[key] = loss
    return MultiLoss(members)


class MultiLoss(torch.nn.ModuleDict):
    """A sum of named losses: calling it runs every member on the same arguments and returns
    the sum (each member scaled by its loss_weight); ``return_components=True`` adds
    ``{name: detached term}``. Members with other inputs are called by name."""

    def forward(self, *args: Any, return_components: bool = False, **kwargs: Any):
        parts = {name: loss(*args, **kwargs) for name, loss in self.items()}
        total: Tensor = sum(parts.values())  # type: ignore[assignment]
        if return_components:
            return total, {k: v.detach() for k, v in parts.items()}
        return total
