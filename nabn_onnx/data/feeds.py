"""What a model takes and what one batch of data is: the vocabulary shared by every data source.

Kept apart from :mod:`nabn_onnx.data` (the sources and their validation) so that a source
such as :mod:`nabn_onnx.images` can build batches without importing the module that
dispatches to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from onnx import ModelProto, helper

__all__ = ["InputSpec", "input_specs", "Batch"]


@dataclass(frozen=True)
class InputSpec:
    """What the model expects of one input: name, numpy dtype, and shape (None for free dims)."""

    name: str
    dtype: np.dtype
    shape: Tuple[Optional[int], ...]


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
