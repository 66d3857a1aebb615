"""Everything about a ModelProto: load (with the hostile-input checks), save, provenance, graphsurgeon, traversal."""

from .graph import *  # noqa: F403
from .graph import __all__ as _graph
from .gsgraph import *  # noqa: F403
from .gsgraph import __all__ as _gsgraph
from .io import *  # noqa: F403
from .io import __all__ as _io

__all__ = list(dict.fromkeys([*_io, *_graph, *_gsgraph]))
