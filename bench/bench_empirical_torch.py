#!/usr/bin/python3
"""PyTorch side of the nonlinear-check benchmark (bench/bench_empirical.c reads what this writes).

    /usr/bin/python3 bench/bench_empirical_torch.py DIR [--n 256] [--threads 2] [--draws 100]
    OPENBLAS_NUM_THREADS=2 build/bench/bench_empirical DIR [--draws 100]

The CIFAR ResNet-20 of bench/bench_onnx_resnet20_torch.py (same seed, randomized batch-norm
statistics), exported to DIR/resnet20.onnx with n inputs DIR/x.npy.  Times, in float64 on
--threads threads, what the empirical check does: one unperturbed forward pass over the n inputs,
then per draw dw ~ N(0, sigma^2) on every parameter, a forward pass of the perturbed model over
the n inputs (batches of 32, as the ONNX source runs them) and mean_x ||f(w + dw, x) - f(w, x)||^2.
Wall and CPU seconds and the Monte-Carlo value with its standard error go to
DIR/torch_empirical.json.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch.nn.utils import stateless

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_onnx_resnet20_torch import ResNet20, randomize_bn  # noqa: E402

SIGMA = 1e-3
BATCH = 32


def forward(model, params, x):
    with torch.no_grad():
        return torch.cat([stateless.functional_call(model, params, (x[i:i + BATCH],))
                          for i in range(0, x.shape[0], BATCH)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.dir, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = ResNet20()
    randomize_bn(model, gen)
    model.eval()
    x = torch.randn(a.n, 3, 32, 32, generator=gen)
    torch.onnx.export(model, x[:2], os.path.join(a.dir, "resnet20.onnx"), input_names=["x"],
                      output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    np.save(os.path.join(a.dir, "x.npy"), x.double().numpy())
    model = model.double()
    xd = x.double()
    base = {n: p.detach() for n, p in model.named_parameters()}
    dgen = torch.Generator().manual_seed(2)

    t0, c0 = time.perf_counter(), time.process_time()
    y0 = forward(model, base, xd)
    vals = []
    for _ in range(a.draws):
        pert = {n: p + SIGMA * torch.randn(p.shape, generator=dgen, dtype=torch.float64)
                for n, p in base.items()}
        y = forward(model, pert, xd)
        vals.append(float(((y - y0) ** 2).sum(1).mean()))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    v = np.array(vals)
    res = {"n": a.n, "threads": a.threads, "draws": a.draws, "sigma": SIGMA,
           "seconds": wall, "cpu_seconds": cpu, "value": float(v.mean()),
           "stderr": float(v.std(ddof=1) / np.sqrt(len(v)))}
    with open(os.path.join(a.dir, "torch_empirical.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
