#!/usr/bin/python3
"""PyTorch side of the ONNX ResNet-20 benchmark (bench/bench_onnx_resnet20.c reads what this writes).

    /usr/bin/python3 bench/bench_onnx_resnet20_torch.py DIR [--n 256] [--threads 2] [--probes 4]
    OPENBLAS_NUM_THREADS=2 build/bench/bench_onnx_resnet20 DIR

Builds a CIFAR ResNet-20 (He et al. 2016: 16/32/64 channels, 3 basic blocks per stage, batch
norm, 1x1 conv + batch norm shortcuts where the shape changes, K = 10; seed 0, batch-norm
statistics randomized so the network looks trained) and n inputs of 3x32x32, exports it with
torch.onnx.export (DIR/resnet20.onnx, DIR/x.npy) and times, in float64 on --threads threads:

  vmap      the exact per-parameter squared diagonal sum_x sum_k (dF_k(x)/dw)^2 from functorch
            vmap(jacrev) per-sample Jacobians (chunks of 4 samples), from which the isotropic,
            8-bit per-channel quantization and sgd traces follow
  hutch     the reference code's estimator: per draw a sample x and a Rademacher output vector v,
            one backward of <v, f(x)>, (J(x)^T v)^2 accumulated; --probes passes over the n samples
            give the relative standard error of the traces, and the time to a 1 % standard error
            is extrapolated from it (draws needed = n probes (se / 0.01)^2, per-draw cost constant);
            also timed over one pass on the float32 model, as the reference code runs it

Wall and CPU seconds (the machine may be shared: CPU seconds compare under load) and traces go to
DIR/torch_results.json.
"""

import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
from functorch import jacrev, make_functional_with_buffers, vmap

K = 10


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (self.short(x) if self.short is not None else x))


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, K)

    def forward(self, x):
        y = self.layers(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def randomize_bn(model, gen):
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            mod.weight.data.copy_(0.5 + torch.rand(c, generator=gen))
            mod.bias.data.copy_(0.1 * torch.randn(c, generator=gen))


def traces(model, diag):
    """isotropic (= sgd's Tr H_eff) and 8-bit per-channel quantization traces, per sample."""
    iso, q = 0.0, 0.0
    for (name, w), d in zip(model.named_parameters(), diag):
        iso += float(d.sum())
        rows = w.shape[0] if w.dim() >= 2 else 1
        wr, dr = w.detach().reshape(rows, -1), d.reshape(rows, -1)
        delta = (wr.max(1).values - wr.min(1).values) / 255.0
        q += float((delta * delta / 12.0 * dr.sum(1)).sum())
    return iso, q


def diag_vmap(model, x, chunk=4):
    fmodel, params, buffers = make_functional_with_buffers(model)

    def f(p, xi):
        return fmodel(p, buffers, xi.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))
    acc = [torch.zeros_like(p) for p in params]
    for i in range(0, x.shape[0], chunk):
        js = jac(params, x[i:i + chunk])
        for a, j in zip(acc, js):
            a += (j * j).sum((0, 1))
    return acc


def hutch(model, x, probes, gen):
    params = list(model.parameters())
    per_probe = []
    for _ in range(probes):
        acc = [torch.zeros_like(p) for p in params]
        for i in range(x.shape[0]):
            v = torch.randint(0, 2, (1, K), generator=gen, dtype=torch.float64) * 2 - 1
            y = model(x[i:i + 1])
            gs = torch.autograd.grad((y * v).sum(), params)
            for a, g in zip(acc, gs):
                a += g * g
        per_probe.append(traces(model, acc))
    return np.array(per_probe)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probes", type=int, default=4)
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
    nparams = sum(p.numel() for p in model.parameters())

    t0, c0 = time.perf_counter(), time.process_time()
    diag = diag_vmap(model, xd)
    t_vmap, c_vmap = time.perf_counter() - t0, time.process_time() - c0
    iso, q = traces(model, diag)

    t0, c0 = time.perf_counter(), time.process_time()
    est = hutch(model, xd, a.probes, gen)
    t_probe = (time.perf_counter() - t0) / a.probes
    c_probe = (time.process_time() - c0) / a.probes
    # The reference code runs in float32: the same estimator on the float32 model, timed over one
    # pass (its draws to 1 % are the float64 run's: the variance is the estimator's, not the
    # precision's).
    m32 = copy.deepcopy(model).float()
    t0, c0 = time.perf_counter(), time.process_time()
    hutch(m32, x, 1, gen)
    t_probe32, c_probe32 = time.perf_counter() - t0, time.process_time() - c0
    mean = est.mean(0)
    rel_sd = est.std(0, ddof=1) / np.abs(mean)  # of one probe (n draws)
    probes_needed = max(1.0, float((rel_sd.max() / 0.01) ** 2))
    res = {
        "n": a.n, "K": K, "p": nparams, "threads": a.threads,
        "vmap_seconds": t_vmap, "vmap_cpu_seconds": c_vmap, "iso": iso / a.n, "qpc8": q / a.n, "sgd_trace": iso / a.n,
        "hutch_seconds_per_probe": t_probe, "hutch_probes_measured": a.probes,
        "hutch_rel_sd_per_probe": rel_sd.tolist(),
        "hutch_probes_for_1pct": probes_needed,
        "hutch_seconds_to_1pct": t_probe * probes_needed,
        "hutch_cpu_seconds_to_1pct": c_probe * probes_needed,
        "hutch_float32_seconds_to_1pct": t_probe32 * probes_needed,
        "hutch_float32_cpu_seconds_to_1pct": c_probe32 * probes_needed,
        "hutch_draws_for_1pct": probes_needed * a.n,
    }
    with open(os.path.join(a.dir, "torch_results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
