#!/usr/bin/python3
"""A small fit and probe set of the matrix-free label benchmark's CNN (bench/make_cnn_label.py:
the CNN of the ONNX tests with K = 10) for tests/unit/test_krylov_onnx.c.

    /usr/bin/python3 tests/torch/cnn_label_small.py OUTDIR
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import make_cnn_label  # noqa: E402

if __name__ == "__main__":
    sys.argv = [sys.argv[0], sys.argv[1], "--n", "30", "--m", "7"]
    make_cnn_label.main()
