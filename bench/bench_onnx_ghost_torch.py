#!/usr/bin/python3
"""PyTorch side of the ghost-norm benchmark (bench/bench_onnx_ghost.c reads what this writes).

    /usr/bin/python3 bench/bench_onnx_ghost_torch.py DIR [--n 32] [--threads 2] [--reps 5]
    OPENBLAS_NUM_THREADS=2 build/bench/bench_onnx_ghost DIR

Two Conv layers in float64, 3x3 with padding 1: "small" 64 -> 64 channels at 4x4 (P = 16
positions, kk = 576) and "large" 16 -> 16 at 32x32 (P = 1024, kk = 144).  Per layer writes
DIR/<layer>.onnx (the single Conv), DIR/<layer>.x.npy (n inputs) and DIR/<layer>.gy.npy (n output
adjoints), and times the per-sample squared weight-gradient norms ||dW_t||^2 three ways on
--threads threads (best of --reps):
  vmap    functorch vmap(grad) (torch.func in PyTorch 2) of <conv(x_t, W), gy_t> over samples, then squared and summed
  im2col  the same factored in torch: unfold -> bmm(gy, col^T) -> squared sum
  ghost   the ghost-norm formula in torch: sum((col^T col) * (gy^T gy)) with bmm
Results (seconds and the norms' checksum) go to DIR/torch_results.json.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from functorch import grad, vmap
from onnx import TensorProto, helper, numpy_helper

LAYERS = {"small": (64, 64, 4), "large": (16, 16, 32)}


def best(fn, reps):
    out, t = None, float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return out, t


def write_onnx(path, w, C, S):
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1])
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", C, S, S])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
    g = helper.make_graph([node], "conv", [x], [y], [numpy_helper.from_array(w.numpy(), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = {"n": a.n, "threads": a.threads}
    for name, (C, M, S) in LAYERS.items():
        w = torch.randn(M, C, 3, 3, dtype=torch.float64)
        x = torch.randn(a.n, C, S, S, dtype=torch.float64)
        gy = torch.randn(a.n, M, S, S, dtype=torch.float64)
        write_onnx(os.path.join(a.dir, name + ".onnx"), w, C, S)
        np.save(os.path.join(a.dir, name + ".x.npy"), x.numpy())
        np.save(os.path.join(a.dir, name + ".gy.npy"), gy.numpy())

        def one(wt, xt, gt):
            return (F.conv2d(xt[None], wt, padding=1)[0] * gt).sum()

        def by_vmap():
            g = vmap(grad(one), in_dims=(None, 0, 0))(w, x, gy)
            return (g ** 2).sum((1, 2, 3, 4))

        def by_im2col():
            col = F.unfold(x, 3, padding=1)                   # n x kk x P
            d = gy.reshape(a.n, M, -1)                         # n x M x P
            return (torch.bmm(d, col.transpose(1, 2)) ** 2).sum((1, 2))

        def by_ghost():
            col = F.unfold(x, 3, padding=1)
            d = gy.reshape(a.n, M, -1)
            A = torch.bmm(col.transpose(1, 2), col)            # n x P x P
            D = torch.bmm(d.transpose(1, 2), d)
            return (A * D).sum((1, 2))

        r = {}
        for form, fn in (("vmap", by_vmap), ("im2col", by_im2col), ("ghost", by_ghost)):
            v, t = best(fn, a.reps)
            r[form] = {"seconds": t, "checksum": float(v.sum())}
        res[name] = r
        print(name, {k: round(v["seconds"], 5) for k, v in r.items()})
    with open(os.path.join(a.dir, "torch_results.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
