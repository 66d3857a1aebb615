"""Logging helpers: warnings said once per job, however many passes over the data repeat them."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Iterator, Optional, Set

__all__ = ["once_per_job", "warn_once"]

_SEEN: contextvars.ContextVar[Optional[Set[str]]] = contextvars.ContextVar("nabn_warned", default=None)


@contextlib.contextmanager
def once_per_job() -> Iterator[None]:
    """Inside this block, :func:`warn_once` says each distinct message once (a calibration reads its data 2-4 times)."""
    token = _SEEN.set(set())
    try:
        yield
    finally:
        _SEEN.reset(token)


def warn_once(logger: logging.Logger, message: str, *args: object) -> None:
    """``logger.warning(message, *args)``, unless the same text was already said in this job."""
    seen = _SEEN.get()
    text = message % args if args else message
    if seen is not None:
        if text in seen:
            return
        seen.add(text)
    logger.warning("%s", text)
