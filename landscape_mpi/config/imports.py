"""User code by import path: ``package.module:attribute`` (--model, --dataset, --task factories)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from landscape_mpi.config.errors import UserError


def import_object(spec: str, what: str) -> Callable:
    """Resolve ``package.module:attribute``; `what` names the option for the error message."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{what} {spec}: expected package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{what} {spec}: cannot import {module_name} ({exc}); "
                        f"put its folder on PYTHONPATH or pip-install it") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"{what} {spec}: module {module_name} has no attribute {attr!r}") from None
