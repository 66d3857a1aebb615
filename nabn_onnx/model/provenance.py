"""Provenance: the ``nabn.*`` records a model carries in its ``metadata_props`` (JSON values)."""

from __future__ import annotations

import json
from typing import Any

from onnx import ModelProto

__all__ = ["record", "read_record"]


_METADATA_PREFIX = "nabn."


def record(model: ModelProto, key: str, value: Any) -> None:
    """Set the provenance key ``nabn.<key>`` to ``value`` (JSON) in ``metadata_props``."""
    from .. import __version__

    _set_meta(model, _METADATA_PREFIX + "version", __version__)
    _set_meta(model, _METADATA_PREFIX + key, json.dumps(value, sort_keys=True))


def read_record(model: ModelProto, key: str, default: Any = None) -> Any:
    """Return the JSON value stored under ``nabn.<key>``, or ``default``."""
    for prop in model.metadata_props:
        if prop.key == _METADATA_PREFIX + key:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                return default
    return default


def _set_meta(model: ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key = key
    entry.value = value
