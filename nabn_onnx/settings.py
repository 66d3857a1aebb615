"""Settings types shared by the library calls: how data is read, which layers, where sessions run.

Each public call takes its settings as one object (``calibrate`` a
:class:`~nabn_onnx.calibration.config.CalibrationConfig`, ``run_sweep`` a ``SweepPlan`` and
``SweepSettings``) built from these parts, or as flat keywords for the common case
(``calibrate(model, data, noise=..., batch_size=32)``), which fill the same object. The CLI
builds the objects from its argument groups; the library passes them down unchanged, so a
setting is named and checked in one place.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, TypeVar

__all__ = ["DataSettings", "LayerSelection", "RuntimeSettings", "flat_keywords", "with_options"]


@dataclass(frozen=True)
class DataSettings:
    """How data is read.

    Attributes:
        batch_size: samples per batch for ``.npz`` and dict data (readers bring their own batches).
        max_batches: use at most this many batches (None: all).

    Checked with the data itself (:func:`nabn_onnx.data.check_batching`), before any work.
    """

    batch_size: int = 64
    max_batches: Optional[int] = None


@dataclass(frozen=True)
class LayerSelection:
    """Which analog layers a pass touches: regular expressions over layer names.

    Attributes:
        include: only layers whose name matches (None: all).
        exclude: never layers whose name matches.
    """

    include: Optional[str] = None
    exclude: Optional[str] = None


@dataclass(frozen=True)
class RuntimeSettings:
    """Where onnxruntime sessions run and what the user sees.

    Attributes:
        providers: execution providers in order of preference (None: CPU).
        show_progress: draw a progress bar on a terminal.
    """

    providers: Optional[Tuple[str, ...]] = None
    show_progress: bool = False

    def __post_init__(self):
        if self.providers is not None:
            if isinstance(self.providers, str):
                object.__setattr__(self, "providers", (self.providers,))
            else:
                object.__setattr__(self, "providers", tuple(self.providers) or None)


T = TypeVar("T")

#: the settings parts whose fields are flat keywords of the configs that hold them
PARTS = (DataSettings, LayerSelection, RuntimeSettings)


def flat_keywords(config_type: type) -> Dict[str, Tuple[str, ...]]:
    """Every flat keyword of a settings dataclass and the field it fills, derived from its fields.

    A field that holds a settings part (:data:`PARTS`) contributes the part's fields (``data`` gives
    ``batch_size`` and ``max_batches``); any other field is its own keyword. Two fields that
    would give one keyword are a bug in the settings type, refused here.
    """
    flat: Dict[str, Tuple[str, ...]] = {}
    for outer in dataclasses.fields(config_type):
        inner_type = _dataclass_type(config_type, outer)
        parts = (
            [((outer.name, inner.name), inner.name) for inner in dataclasses.fields(inner_type)]
            if inner_type is not None
            else [((outer.name,), outer.name)]
        )
        for path, keyword in parts:
            if keyword in flat:
                raise TypeError(f"{config_type.__name__}: keyword {keyword!r} names two fields")
            flat[keyword] = path
    return flat


def _dataclass_type(config_type: type, field: dataclasses.Field) -> Optional[type]:
    """The settings part (:data:`PARTS`) a field holds, read from its default; None for a plain field."""
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = field.default
    return type(default) if isinstance(default, PARTS) else None


def with_options(
    config: T,
    options: Mapping[str, Any],
    call: str,
    *,
    renamed: Optional[Mapping[str, str]] = None,
) -> T:
    """``config`` with the flat keyword ``options`` filled in (keywords from :func:`flat_keywords`).

    ``renamed`` maps an old keyword to its new name: it still works, with a
    ``DeprecationWarning`` naming the new one (for one release; see CHANGELOG.md). An unknown
    keyword raises ``TypeError`` as Python does for a function's unexpected keyword, naming
    the ones accepted.
    """
    flat = flat_keywords(type(config))
    options = dict(options)
    for old, new in (renamed or {}).items():
        if old in options:
            warnings.warn(f"{call}(): {old}= is renamed {new}=", DeprecationWarning, stacklevel=3)
            if new in options:
                raise TypeError(f"{call}() got both {old}= and its new name {new}=")
            options[new] = options.pop(old)
    unknown = sorted(set(options) - set(flat))
    if unknown:
        raise TypeError(
            f"{call}() got an unexpected keyword argument {unknown[0]!r}; settings keywords are: "
            + ", ".join(sorted(flat))
        )
    nested: Dict[str, Dict[str, Any]] = {}
    top: Dict[str, Any] = {}
    for key, value in options.items():
        path = flat[key]
        if len(path) == 1:
            top[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1]] = value
    for part, values in nested.items():
        top[part] = dataclasses.replace(getattr(config, part), **values)
    return dataclasses.replace(config, **top) if top else config  # type: ignore[type-var]
