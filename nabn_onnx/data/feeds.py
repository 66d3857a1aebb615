"""What a model takes and what one batch of data is: the vocabulary shared by every data source.

Kept apart from :mod:`nabn_onnx.data` (the sources and their validation) so that a source
such as :mod:`nabn_onnx.images` can build batches without importing the module that
dispatches to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from onnx import ModelProto, helper

__all__ = ["InputSpec", "input_specs", "Batch", "LABELS_KEY"]

LABELS_KEY = "labels"
"""The key of the labels beside the model's inputs (an ``.npz`` member, a mapping or feed dict entry)."""


@dataclass(frozen=True)
class InputSpec:
    """What the model expects of one input: name, numpy dtype, and shape (None for free dims)."""

    name: str
    dtype: np.dtype
    shape: Tuple[Optional[int], ...]

    def misfit(self, shape: Sequence[int], dtype: np.dtype) -> Optional[str]:
        """Why an array of ``shape`` and ``dtype`` cannot feed this input, or None when it can.

        The one rule for batches and for ``.npz`` headers (checked before a row is read): the
        dtype kind must match (any integer for any integer), the rank must match, and so must
        every fixed dimension after the first (the first is the batch). The reason reads on
        from the array's name: ``has shape (2, 3) but the model expects rank 4 (N, 1, 8, 8)``.
        """
        dtype = np.dtype(dtype)
        if dtype.kind != self.dtype.kind and not (dtype.kind in "iu" and self.dtype.kind in "iu"):
            return f"is {dtype} but the model expects {self.dtype}"
        shape = tuple(shape)
        if self.shape and len(shape) != len(self.shape):
            return f"has shape {shape} but the model expects rank {len(self.shape)} {self.shape_text}"
        for axis, (got, want) in enumerate(zip(shape, self.shape)):
            if want is not None and got != want and axis > 0:
                return f"has shape {shape} but the model expects {self.shape_text}"
        return None

    @property
    def shape_text(self) -> str:
        """The shape as ``(N, 1, 8, 8)``, free dimensions as N."""
        return "(" + ", ".join("N" if d is None else str(d) for d in self.shape) + ")"


def input_specs(model: ModelProto) -> List[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim
        )
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


@dataclass
class Batch:
    """One batch: the feed dict and, when the data has them, the labels."""

    feeds: Dict[str, np.ndarray]
    labels: Optional[np.ndarray]

    @property
    def size(self) -> int:
        """Number of samples in the batch."""
        return int(next(iter(self.feeds.values())).shape[0])


def save_batch(path: str, batch: Batch) -> Dict[str, Any]:
    """Write ``batch`` to ``path`` as an ``.npz``, its labels under :data:`LABELS_KEY`; the arrays written.

    The one file form of a batch that the spools (:mod:`nabn_onnx.data.spool`, the decoded
    image folders of :mod:`nabn_onnx.data.images`) write and :func:`load_arrays` reads back.
    """
    arrays: Dict[str, Any] = dict(batch.feeds)  # Any: np.savez's stub checks **arrays against allow_pickle
    if batch.labels is not None:
        arrays[LABELS_KEY] = batch.labels
    np.savez(path, **arrays)
    return arrays


def load_arrays(path: str) -> Dict[str, np.ndarray]:
    """The arrays :func:`save_batch` wrote, in their order (the labels under :data:`LABELS_KEY`)."""
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}
