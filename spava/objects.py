"""`load_object("package.module:name")`: the one place spava imports a user- or registry-named object."""

from __future__ import annotations

import importlib
from typing import Any


def load_object(target: str, what: str) -> Any:
    """The object named by `target` ("package.module:name"); ValueError naming `what` otherwise.

    Args:
        target: "package.module:name" (a class, function or other module attribute).
        what: what it is for, for the error message (e.g. "stages.video", "attention method").
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what}: {target!r} must be 'package.module:name'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{what}: cannot load {target!r}: {error}") from error
