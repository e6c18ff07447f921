#!/usr/bin/python3
"""Fit and probe sets for the matrix-free label benchmark (bench/bench_label_mf.c, ONNX mode).

    /usr/bin/python3 bench/make_cnn_label.py DIR [--n 2000] [--m 200] [--k 10]

The CNN of the ONNX tests (tests/torch/onnx_networks.py: Conv + BatchNorm + ReLU, max pool,
depthwise Conv + BatchNorm + ReLU6, 1x1 Conv + hardswish, global pool, Linear) with its head
widened to --k outputs and trained-looking batch norm (the tests' randomize_bn), exported the way
the tests export it (eval mode, training=PRESERVE, no constant folding, dynamic batch) to
DIR/cnn.onnx, with --n fit inputs DIR/fit.npy and --m probe inputs DIR/probe.npy (3x12x12,
float64, seeded: the same files on every machine).
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "torch"))
import onnx_networks  # noqa: E402  (the tests' CNN and batch-norm randomizer)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--m", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(7)
    cnn = onnx_networks.CNN()
    cnn.fc = nn.Linear(12, a.k)
    onnx_networks.randomize_bn(cnn, gen)
    cnn.eval()
    xf = torch.randn(a.n, 3, 12, 12, generator=gen)
    xp = torch.randn(a.m, 3, 12, 12, generator=gen)
    torch.onnx.export(cnn, xf[:4], os.path.join(a.dir, "cnn.onnx"), input_names=["x"],
                      output_names=["y"], opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    np.save(os.path.join(a.dir, "fit.npy"), xf.double().numpy())
    np.save(os.path.join(a.dir, "probe.npy"), xp.double().numpy())
    p = sum(t.numel() for t in cnn.parameters())
    print(f"cnn: p = {p}, K = {a.k}, n_fit = {a.n} (nK = {a.n * a.k}), n_probe = {a.m}")


if __name__ == "__main__":
    main()
