#!/usr/bin/python3
"""PyTorch side of the ONNX ResNet-20 benchmark (bench/bench_onnx_resnet20.c reads what this writes).

    /usr/bin/python3 bench/bench_onnx_resnet20_torch.py DIR [--n 256] [--threads 2] [--draws N]
    OPENBLAS_NUM_THREADS=2 build/bench/bench_onnx_resnet20 DIR

Builds a CIFAR ResNet-20 (He et al. 2016: 16/32/64 channels, 3 basic blocks per stage, batch
norm, 1x1 conv + batch norm shortcuts where the shape changes, K = 10; seed 0, batch-norm
statistics randomized so the network looks trained) and n inputs of 3x32x32, exports it with
torch.onnx.export (DIR/resnet20.onnx, DIR/x.npy) and times, in float64 on --threads threads:

  vmap      the exact per-parameter squared diagonal sum_x sum_k (dF_k(x)/dw)^2 from functorch
            vmap(jacrev) per-sample Jacobians (chunks of 4 samples), from which the isotropic,
            8-bit per-channel quantization and sgd traces follow
  hutch     the reference code's estimator (tpv/tpv_base.py compute_hutchinson_trace_heff): per
            draw a sample x drawn uniformly from the n inputs and a Rademacher output vector v,
            one backward of <v, f(x)>, (J(x)^T v)^2 accumulated per parameter, so one set of draws
            gives all three traces (the reference as written runs one estimate per noise model).
            Its draws to a 1 % standard error come from the exact variance of one draw,
            Var_x ||J(x)||^2_W + E_x Var_v, computed from the vmap Jacobians (per sample, the K x K
            Gram M = J W J^T: Var_v = 2 sum_{k != l} M_kl^2), for each trace; the larger count
            wins. The per-draw cost is timed over --draws draws in float64 and, as the reference
            code runs, in float32; the timed draws' own spread is printed as a check.

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


def qpc8_weights(model):
    """delta_g^2 / 12 of each parameter entry's 8-bit per-channel group (DESIGN.md section 3)."""
    out = []
    for w in model.parameters():
        rows = w.shape[0] if w.dim() >= 2 else 1
        wr = w.detach().reshape(rows, -1)
        delta = (wr.max(1).values - wr.min(1).values) / 255.0
        out.append((delta * delta / 12.0).reshape(rows, 1).expand_as(wr).reshape(w.shape))
    return out


def traces(wq, diag):
    """isotropic (= sgd's Tr H_eff) and 8-bit per-channel quantization traces of a squared
    diagonal; wq = qpc8_weights(model)."""
    iso = sum(float(d.sum()) for d in diag)
    q = sum(float((w * d).sum()) for w, d in zip(wq, diag))
    return iso, q


def diag_vmap(model, x, chunk=4):
    """The exact squared diagonal, and per sample the K x K Grams J J^T (isotropic) and
    J W J^T (per-channel quantization) that give the reference estimator's draw variance, with
    the seconds spent on those Grams (the caller leaves them out of vmap's time)."""
    fmodel, params, buffers = make_functional_with_buffers(model)
    # jacrev differentiates with respect to its argument; parameters that require grad would
    # also make autograd record every chunk's Jacobians and sums (its graph kept alive with the
    # results: slower, and it slowed the estimator timed afterwards by about 10x)
    params = tuple(p.detach() for p in params)
    wq = qpc8_weights(model)

    def f(p, xi):
        return fmodel(p, buffers, xi.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))
    acc = [torch.zeros_like(p) for p in params]
    grams = {"iso": [], "qpc8": []}
    spent = [0.0, 0.0]  # the Grams' wall and CPU seconds, not part of the timed computation
    for i in range(0, x.shape[0], chunk):
        js = jac(params, x[i:i + chunk])
        for a, j in zip(acc, js):
            a += (j * j).sum((0, 1))
        t0, c0 = time.perf_counter(), time.process_time()
        flat = [j.flatten(2) for j in js]
        grams["iso"].append(sum(torch.einsum("bkp,blp->bkl", j, j) for j in flat))
        grams["qpc8"].append(sum(torch.einsum("bkp,blp->bkl", j * w.flatten(), j)
                                 for j, w in zip(flat, wq)))
        spent[0] += time.perf_counter() - t0
        spent[1] += time.process_time() - c0
    return acc, {k: torch.cat(v) for k, v in grams.items()}, spent


def draws_for_1pct(gram):
    """Draws of (x uniform, v Rademacher) for a 1 % standard error of mean_x tr M(x): one draw is
    v^T M(x) v, whose variance is Var_x tr M(x) + E_x 2 sum_{k != l} M_kl(x)^2."""
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    t = diag.sum(1)
    off = gram - torch.diag_embed(diag)
    var_draw = float(t.var(unbiased=False) + (2 * (off * off).sum((1, 2))).mean())
    mu = float(t.mean())
    return var_draw / (0.01 * mu) ** 2, math.sqrt(var_draw) / mu


def reference_draws(model, x, draws, gen):
    """The reference code's estimator: x uniform over the inputs (without replacement while
    draws <= n, then with), v Rademacher, one backward per draw; (J^T v)^2 per parameter kept per
    draw for the traces. Returns per-draw (iso, qpc8) values."""
    params = list(model.parameters())
    wq = qpc8_weights(model)
    n = x.shape[0]
    idx = (torch.randperm(n, generator=gen)[:draws] if draws <= n
           else torch.randint(0, n, (draws,), generator=gen))
    out = []
    for i in idx.tolist():
        v = torch.randint(0, 2, (1, K), generator=gen, dtype=x.dtype) * 2 - 1
        y = model(x[i:i + 1])
        gs = torch.autograd.grad((y * v).sum(), params)
        out.append(traces(wq, [g * g for g in gs]))
    return np.array(out)


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    r = fn()
    return r, time.perf_counter() - t0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=0,
                    help="draws timed for the estimator's per-draw cost (default n)")
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

    (diag, grams, spent), t_vmap, c_vmap = timed(lambda: diag_vmap(model, xd))
    t_vmap, c_vmap = t_vmap - spent[0], c_vmap - spent[1]
    iso, q = traces(qpc8_weights(model), diag)
    need = {k: draws_for_1pct(g) for k, g in grams.items()}
    draws_needed = max(d for d, _ in need.values())

    draws = a.draws or a.n
    m32 = copy.deepcopy(model).float()
    for m, xs in ((model, xd), (m32, x)):  # untimed: the first backwards pay allocator warm-up
        reference_draws(m, xs, 8, gen)
    est, t64, c64 = timed(lambda: reference_draws(model, xd, draws, gen))
    _, t32, c32 = timed(lambda: reference_draws(m32, x, draws, gen))
    mean = est.mean(0)
    res = {
        "n": a.n, "K": K, "p": nparams, "threads": a.threads,
        "vmap_seconds": t_vmap, "vmap_cpu_seconds": c_vmap, "iso": iso / a.n, "qpc8": q / a.n,
        "sgd_trace": iso / a.n,
        "hutch_draws_timed": draws,
        "hutch_rel_sd_per_draw": {k: r for k, (_, r) in need.items()},
        "hutch_rel_sd_per_draw_timed": (est.std(0, ddof=1) / np.abs(mean)).tolist(),
        "hutch_timed_mean_vs_exact": [float(mean[0] / (iso / a.n)), float(mean[1] / (q / a.n))],
        "hutch_draws_for_1pct": draws_needed,
        "hutch_seconds_to_1pct": t64 / draws * draws_needed,
        "hutch_cpu_seconds_to_1pct": c64 / draws * draws_needed,
        "hutch_float32_seconds_to_1pct": t32 / draws * draws_needed,
        "hutch_float32_cpu_seconds_to_1pct": c32 / draws * draws_needed,
    }
    with open(os.path.join(a.dir, "torch_results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
