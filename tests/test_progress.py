"""The progress bar: drawn on a terminal only, never on a pipe or with -q, and ends with the final count."""

from __future__ import annotations

import io

from nabn_onnx.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_draws_on_a_terminal_and_ends_with_the_total():
    stream = _Terminal()
    with Progress("calibrating", 4, stream=stream) as bar:
        for _ in range(4):
            bar.update()
    text = stream.getvalue()
    assert text.startswith("\rcalibrating [") and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    # padded to clear a longer line
    assert last.startswith("calibrating [" + "#" * 30 + "] 4/4 ") and last.rstrip().endswith("s")


def test_unknown_total_shows_a_count():
    stream = _Terminal()
    with Progress("evaluating", None, stream=stream) as bar:
        bar.update(3)
        bar.update(2)
    assert stream.getvalue().rstrip("\n").split("\r")[-1].startswith("evaluating 5 ")


def test_overshoot_keeps_the_bar_full():
    stream = _Terminal()
    with Progress("x", 2, stream=stream) as bar:
        bar.update(5)
    assert "[" + "#" * 30 + "] 5/2" in stream.getvalue()


def test_silent_on_a_pipe_and_when_disabled():
    for stream, enabled in ((io.StringIO(), True), (_Terminal(), False)):
        with Progress("quiet", 3, enabled=enabled, stream=stream) as bar:
            bar.update(3)
        assert bar.count == 3
        assert stream.getvalue() == ""
