"""``python -m nabn_onnx.cli``: the same as the ``nabn-onnx`` command."""

import sys

from . import run

__all__: list = []

sys.exit(run())
