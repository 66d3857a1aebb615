"""``python -m nabn_onnx.cli``: the same as the ``nabn-onnx`` command."""

import sys

from . import main

__all__: list = []

sys.exit(main())
