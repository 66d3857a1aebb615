"""Everything about a ModelProto, one job per module.

* :mod:`.load`: :func:`load_model` with the hostile-input checks and onnx's checker.
* :mod:`.external`: external data, every tensor's claim on its file checked before it is read.
* :mod:`.save`: :func:`save_model` (atomic, streamed, external data above 2 GB).
* :mod:`.files`: atomic file writes and the output-path guards run before any work.
* :mod:`.provenance`: the ``nabn.*`` records in ``metadata_props``.
* :mod:`.initializers`: initializer and opset helpers, copies without the large weights.
* :mod:`.normalize`: the normalizing rewrites :func:`load_model` applies (Constant weights, Identity renames).
* :mod:`.traversal`: walking a graph and its subgraphs.
* :mod:`.layers`: the analog layers, their BatchNorms, selection and skip summaries.
* :mod:`.gsgraph`: onnx-graphsurgeon graphs in and out.
"""

from .external import *  # noqa: F403
from .external import __all__ as _external
from .files import *  # noqa: F403
from .files import __all__ as _files
from .gsgraph import *  # noqa: F403
from .gsgraph import __all__ as _gsgraph
from .initializers import *  # noqa: F403
from .initializers import __all__ as _initializers
from .layers import *  # noqa: F403
from .layers import __all__ as _layers
from .load import *  # noqa: F403
from .load import __all__ as _load
from .normalize import *  # noqa: F403
from .normalize import __all__ as _normalize
from .provenance import *  # noqa: F403
from .provenance import __all__ as _provenance
from .save import *  # noqa: F403
from .save import __all__ as _save
from .traversal import *  # noqa: F403
from .traversal import __all__ as _traversal

__all__ = list(
    dict.fromkeys(
        [
            *_load,
            *_external,
            *_save,
            *_files,
            *_provenance,
            *_initializers,
            *_normalize,
            *_traversal,
            *_layers,
            *_gsgraph,
        ]
    )
)
