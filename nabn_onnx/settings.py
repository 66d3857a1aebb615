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
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, TypeVar

__all__ = ["DataSettings", "LayerSelection", "RuntimeSettings", "with_options"]


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


def with_options(config: T, options: Mapping[str, Any], flat: Mapping[str, Sequence[str]], call: str) -> T:
    """``config`` with flat keyword ``options`` filled in (``flat`` maps a keyword to its field path).

    ``flat`` maps e.g. ``"batch_size"`` to ``("data", "batch_size")``: the keyword sets that
    field of the nested settings object. An unknown keyword raises ``TypeError`` as Python
    does for a function's unexpected keyword, naming the ones accepted.
    """
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
