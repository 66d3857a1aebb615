"""Calibration and test data: feeds, sources (npz, readers, image folders), batching."""

from .feeds import *  # noqa: F403
from .feeds import __all__ as _feeds
from .images import *  # noqa: F403
from .images import __all__ as _images
from .reading import *  # noqa: F403
from .reading import __all__ as _reading

__all__ = list(dict.fromkeys([*_reading, *_feeds, *_images]))
