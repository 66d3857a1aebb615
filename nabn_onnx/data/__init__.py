"""Calibration and test data: feeds, sources (npz, readers, image folders), batching.

Modules: ``feeds`` (input specs, Batch), ``reading`` (sources, batching, validation),
``npz`` (``.npz`` archives, every header checked before a row is read), ``spool``
(``replayable``), ``fingerprint`` (``data_fingerprint``), ``images`` (image folders).
"""

from .feeds import *  # noqa: F403
from .feeds import __all__ as _feeds
from .fingerprint import *  # noqa: F403
from .fingerprint import __all__ as _fingerprint
from .images import *  # noqa: F403
from .images import __all__ as _images
from .npz import *  # noqa: F403
from .npz import __all__ as _npz
from .reading import *  # noqa: F403
from .reading import __all__ as _reading
from .spool import *  # noqa: F403
from .spool import __all__ as _spool

__all__ = list(dict.fromkeys([*_reading, *_npz, *_spool, *_fingerprint, *_feeds, *_images]))
