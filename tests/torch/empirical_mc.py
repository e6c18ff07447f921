#!/usr/bin/python3
"""PyTorch references for the nonlinear check (core/empirical.h; tests/unit/test_empirical_torch.c
runs this).

    /usr/bin/python3 tests/torch/empirical_mc.py OUTDIR

Two networks: a tpv.sequential/v1 MLP (tanh and ReLU; spec, float64 safetensors weights) and a
small CNN exported with torch.onnx.export (Conv, ReLU, Tanh, Flatten, Gemm), each with a float64
input set.  For each, with the weights of the files (float32 ONNX initializers cast exactly to
float64), the empirical TPV mean_{draws, x} ||f(w + dw, x) - f(w, x)||^2 by Monte-Carlo draws of
torch's own generator:
    iso      dw ~ N(0, sigma^2)
    sgd      dw ~ N(0, lr * residual_variance / (2 batch_size))
    quant    dw_j ~ U[-delta_g/2, delta_g/2], per_channel groups (dim 0 of rank >= 2 tensors,
             rank-1 tensors whole), delta_g = (max_g - min_g) / (2^bits - 1); and rtn, the
             round-to-nearest grid min_g + delta_g round((w - min_g) / delta_g)
    prune    the masked network: magnitude rule, global over rank >= 2 tensors, the
             floor(fraction N) smallest |w| set to zero (deterministic)
written to refs.json: {"<net>": {"params": {...}, "<case>": {"mean", "stderr", "draws"} ...}}.
"""

import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import stateless

DRAWS = 2000
PARAMS = {"sigma": 2e-3, "sigma_large": 1.5, "lr": 0.02, "batch_size": 8,
          "residual_variance": 1.0, "bits": 4, "fraction": 0.3}


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        raw = np.ascontiguousarray(t, dtype="<f8").tobytes()
        header[name] = {"dtype": "F64", "shape": list(np.shape(t)),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 3, 3, stride=2)
        self.fc = nn.Linear(3 * 3 * 3, 3)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.tanh(self.c2(x))
        return self.fc(x.flatten(1))


def functional(model):
    names = [n for n, _ in model.named_parameters()]
    base = {n: p.detach().clone() for n, p in model.named_parameters()}

    def f(ws, x):
        return stateless.functional_call(model, dict(zip(names, ws)), (x,))
    return names, [base[n] for n in names], f


def mc(f, w, x, y0, sample, gen):
    vals = []
    with torch.no_grad():
        for _ in range(DRAWS):
            dw = sample(gen)
            y = f([a + d for a, d in zip(w, dw)], x)
            vals.append(float(((y - y0) ** 2).sum(1).mean()))
    v = np.array(vals)
    return {"mean": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(len(v))),
            "draws": len(v)}


def quant_groups(t, bits):
    g = t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    lo = g.min(1, keepdim=True).values
    delta = (g.max(1, keepdim=True).values - lo) / (2 ** bits - 1)
    return g, lo, delta


def prune_mask(names, w, fraction):
    big = [i for i, t in enumerate(w) if t.dim() >= 2]
    flat = torch.cat([w[i].reshape(-1).abs() for i in big])
    k = int(np.floor(fraction * flat.numel()))
    order = torch.argsort(flat, stable=True)
    m = torch.zeros_like(flat)
    m[order[:k]] = 1
    masks, off = [torch.zeros_like(t) for t in w], 0
    for i in big:
        c = w[i].numel()
        masks[i] = m[off:off + c].reshape(w[i].shape)
        off += c
    return masks


def cases(model, x):
    model = model.double().eval()
    names, w, f = functional(model)
    with torch.no_grad():
        y0 = f(w, x)
    P = PARAMS
    gen = torch.Generator().manual_seed(11)
    out = {"params": P}

    def gauss(sd):
        return lambda g: [sd * torch.randn(t.shape, generator=g, dtype=torch.float64) for t in w]
    out["iso"] = mc(f, w, x, y0, gauss(P["sigma"]), gen)
    out["iso_large"] = mc(f, w, x, y0, gauss(P["sigma_large"]), gen)
    sgd_sd = float(np.sqrt(P["lr"] * P["residual_variance"] / (2 * P["batch_size"])))
    out["sgd"] = mc(f, w, x, y0, gauss(sgd_sd), gen)

    groups = [quant_groups(t, P["bits"]) for t in w]

    def uniform(g):
        return [(d * (torch.rand(gr.shape, generator=g, dtype=torch.float64) - 0.5)).reshape(t.shape)
                for t, (gr, lo, d) in zip(w, groups)]
    out["quant"] = mc(f, w, x, y0, uniform, gen)
    wq = [(lo + d * torch.round((gr - lo) / d)).reshape(t.shape)
          for t, (gr, lo, d) in zip(w, groups)]
    with torch.no_grad():
        out["quant"]["rtn"] = float(((f(wq, x) - y0) ** 2).sum(1).mean())
        masks = prune_mask(names, w, P["fraction"])
        wp = [t * (1 - m) for t, m in zip(w, masks)]
        out["prune"] = {"value": float(((f(wp, x) - y0) ** 2).sum(1).mean()),
                        "pruned": int(sum(float(m.sum()) for m in masks))}
    return out


def main():
    outdir = sys.argv[1]
    torch.manual_seed(5)
    refs = {}

    mlp = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU(),
                        nn.Linear(12, 3)).double()
    x = torch.randn(48, 6, dtype=torch.float64)
    spec = {"format": "tpv.sequential/v1", "input_shape": [6], "layers": [
        {"type": "linear", "weight": "0.weight", "bias": "0.bias"}, {"type": "tanh"},
        {"type": "linear", "weight": "2.weight", "bias": "2.bias"}, {"type": "relu"},
        {"type": "linear", "weight": "4.weight", "bias": "4.bias"}]}
    with open(os.path.join(outdir, "mlp.spec.json"), "w") as f:
        json.dump(spec, f)
    write_safetensors(os.path.join(outdir, "mlp.weights.safetensors"),
                      {n: p.detach().numpy() for n, p in mlp.named_parameters()})
    np.save(os.path.join(outdir, "mlp.input.npy"), x.numpy())
    refs["mlp"] = cases(mlp, x)

    cnn = CNN().eval()
    xc = torch.randn(24, 2, 8, 8)
    torch.onnx.export(cnn, xc, os.path.join(outdir, "cnn.onnx"), input_names=["x"],
                      output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      do_constant_folding=False)
    np.save(os.path.join(outdir, "cnn.input.npy"), xc.double().numpy())
    refs["cnn"] = cases(cnn, xc.double())

    with open(os.path.join(outdir, "refs.json"), "w") as f:
        json.dump(refs, f, indent=1)


if __name__ == "__main__":
    main()
