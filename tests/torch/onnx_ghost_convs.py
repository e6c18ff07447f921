#!/usr/bin/python3
"""Single-Conv graphs for tests/unit/test_onnx_ghost.c (core/onnx_ghost.h), written with
python3-onnx's helper in float64:

    /usr/bin/python3 tests/torch/onnx_ghost_convs.py OUTDIR

Writes <case>.onnx and manifest.txt ("<case> <C> <H> <W or 0 for 1-D>" a line)."""

import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

# name, C, M, kernel, stride, pads (begin..., end...), dilation, groups, spatial
CASES = [
    ("plain3x3", 4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (7, 6)),
    ("stride2", 3, 5, (3, 3), (2, 2), (1, 0, 1, 1), (1, 1), 1, (9, 8)),
    ("dilated", 4, 4, (3, 2), (1, 2), (2, 1, 2, 0), (2, 3), 1, (8, 9)),
    ("groups2", 6, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, (5, 5)),
    ("depthwise", 5, 5, (3, 3), (2, 1), (1, 1, 0, 1), (1, 1), 5, (6, 7)),
    ("small_spatial", 16, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 2)),
    ("pointwise", 8, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (4, 3)),
    ("conv1d", 3, 4, (5,), (2,), (2, 1), (1,), 1, (17,)),
    # stride 1 on 64 positions or more: the input adjoint's deep form (core/onnx_ops_linear.c
    # deep_adjoint), plain, with groups, dilation and uneven pads, and with Mg kh kw = 1200 over
    # two float32 spans (TPV_ONNX_F32_SPAN)
    ("deep3x3", 4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (9, 8)),
    ("deep_groups", 6, 4, (3, 2), (1, 1), (2, 0, 1, 1), (2, 3), 2, (10, 9)),
    ("deep_spans", 3, 48, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1, (8, 8)),
]


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(11)
    lines = []
    for name, C, M, k, s, p, d, g, sp in CASES:
        w = rng.standard_normal((M, C // g) + k)
        b = rng.standard_normal(M)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=list(k),
                                strides=list(s), pads=list(p), dilations=list(d), group=g)
        x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", C] + list(sp))
        y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
        graph = helper.make_graph([node], name, [x], [y],
                                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        with open(os.path.join(out, name + ".onnx"), "wb") as f:
            f.write(model.SerializeToString())
        lines.append(f"{name} {C} {sp[0]} {sp[1] if len(sp) > 1 else 0}\n")
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
