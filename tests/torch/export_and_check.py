#!/usr/bin/python3
"""PyTorch reference values for the MLP runtime (tests/unit/test_mlp_torch.c runs this).

    /usr/bin/python3 tests/torch/export_and_check.py OUTDIR

Builds small nn.Sequential models (every activation type, K = 1 and 3, float64 and float32
weights), writes for each: the tpv.sequential/v1 spec, the weights as safetensors (written by hand:
8-byte little-endian header length, JSON header, raw little-endian data), the fit and probe inputs
as .npy, and reference values computed with autograd, one backward per (sample, output):

    diag           sum_x sum_k J_kj(x)^2 over the fit set (p)
    block_trace    diag summed per tensor, layout order (weight, bias per linear layer)
    gram_fit       J_fit J_fit^T           (n K x n K, rows (sample, output))
    gram_probe_fit J_probe J_fit^T         (m K x n K)
    v, jvp         a random parameter vector and J_fit v (n K)
    jbr_scores     JBR unit scores computed the reference code's way: per mini-batch, the gradient
                   of the batch-mean cross-entropy against argmax pseudo-labels, out_j = sum over
                   row j of (W_l, b_l) of w * grad, in_j = sum over column j of W_{l+1} of w * grad

float32 models are evaluated in float32 by torch (the C side computes in float64: DESIGN.md asks
for agreement to 1e-4 then).  manifest.json lists the cases, files and tolerances.
"""

import json
import os
import struct
import sys

import numpy as np
import torch

ST_DTYPES = {torch.float32: "F32", torch.float64: "F64"}


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():  # insertion order; offsets ascending
        t = t.detach().contiguous().cpu()
        raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt", "writer": "tests/torch/export_and_check.py"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


class Wrap(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def spec_of(model, input_shape):
    layers = []
    for i, mod in enumerate(model.net):
        if isinstance(mod, torch.nn.Linear):
            e = {"type": "linear", "weight": f"net.{i}.weight"}
            if mod.bias is not None:
                e["bias"] = f"net.{i}.bias"
        elif isinstance(mod, torch.nn.LeakyReLU):
            e = {"type": "leaky_relu", "negative_slope": mod.negative_slope}
        elif isinstance(mod, torch.nn.Softplus):
            e = {"type": "softplus", "beta": mod.beta, "threshold": mod.threshold}
        else:
            e = {"type": {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh", torch.nn.Sigmoid: "sigmoid",
                          torch.nn.GELU: "gelu", torch.nn.Identity: "identity",
                          torch.nn.Flatten: "flatten"}[type(mod)]}
        layers.append(e)
    return {"format": "tpv.sequential/v1", "input_shape": list(input_shape), "layers": layers}


def jacobian(model, x):
    """J (n K x p), rows (sample, output), columns in state_dict order."""
    params = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i:i + 1])[0]
        for k in range(out.shape[0]):
            g = torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([gi.reshape(-1) if gi is not None else torch.zeros(p.numel(), dtype=p.dtype)
                                   for gi, p in zip(g, params)]))
    return torch.stack(rows)


def jbr(model, x, confidence, batch_size):
    with torch.no_grad():
        logits = model(x)
        prob = torch.softmax(logits, dim=1)
        maxp, y = prob.max(dim=1)
    keep = (maxp > confidence).nonzero().flatten()
    lin = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    scores = [torch.zeros(m.out_features, dtype=torch.float64) for m in lin[:-1]]
    nb = 0
    for s in range(0, len(keep), batch_size):
        idx = keep[s:s + batch_size]
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])  # batch mean
        loss.backward()
        for l, m in enumerate(lin[:-1]):
            out = (m.weight * m.weight.grad).sum(1)
            if m.bias is not None:
                out = out + m.bias * m.bias.grad
            nxt = lin[l + 1]
            inn = (nxt.weight * nxt.weight.grad).sum(0)
            scores[l] += out.double() ** 2 + inn.double() ** 2
        nb += 1
    return torch.cat(scores), int(len(keep)), nb


def make_case(outdir, name, layers, input_shape, dtype, n, m, seed, jbr_batch=None):
    torch.manual_seed(seed)
    model = Wrap(torch.nn.Sequential(*layers)).to(dtype)
    lin = [mod for mod in model.net if isinstance(mod, torch.nn.Linear)]
    with torch.no_grad():  # confident enough logits for JBR's filter
        lin[-1].weight.mul_(4.0)
    x_fit = torch.randn(n, *input_shape, dtype=dtype)
    x_probe = torch.randn(m, *input_shape, dtype=dtype)

    files = {k: f"{name}.{k}" for k in ("spec.json", "weights.safetensors", "fit.npy", "probe.npy",
                                         "ref.safetensors")}
    with open(os.path.join(outdir, files["spec.json"]), "w") as f:
        json.dump(spec_of(model, input_shape), f)
    write_safetensors(os.path.join(outdir, files["weights.safetensors"]), model.state_dict())
    np.save(os.path.join(outdir, files["fit.npy"]), x_fit.numpy())
    np.save(os.path.join(outdir, files["probe.npy"]), x_probe.numpy())

    Jf = jacobian(model, x_fit)
    Jp = jacobian(model, x_probe)
    diag = (Jf * Jf).sum(0)
    traces, off = [], 0
    for p in model.parameters():
        traces.append(diag[off:off + p.numel()].sum())
        off += p.numel()
    v = torch.randn(Jf.shape[1], dtype=dtype)  # representable in the model's dtype
    ref = {
        "diag": diag, "block_trace": torch.stack(traces),
        "gram_fit": Jf @ Jf.T, "gram_probe_fit": Jp @ Jf.T,
        "v": v, "jvp": Jf @ v,
    }
    case = {"name": name, "spec": files["spec.json"], "weights": files["weights.safetensors"],
            "fit": files["fit.npy"], "probe": files["probe.npy"], "ref": files["ref.safetensors"],
            "tol": 1e-6 if dtype == torch.float64 else 1e-4, "jbr": None}
    if jbr_batch:
        with torch.no_grad():
            maxp = torch.softmax(model(x_fit).double(), dim=1).max(dim=1).values.sort().values
        # threshold in the widest gap of the middle half, so float32 rounding cannot flip a sample
        lo, hi = n // 4, 3 * n // 4
        gaps = maxp[lo + 1:hi] - maxp[lo:hi - 1]
        g = int(gaps.argmax()) + lo
        conf = float((maxp[g] + maxp[g + 1]) / 2)
        scores, kept, nb = jbr(model, x_fit, conf, jbr_batch)
        ref["jbr_scores"] = scores
        case["jbr"] = {"confidence": conf, "batch_size": jbr_batch, "kept_samples": kept,
                       "batches": nb}
    write_safetensors(os.path.join(outdir, files["ref.safetensors"]),
                      {k: t.detach().double() for k, t in ref.items()})
    return case


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(1)
    nn = torch.nn
    f64, f32 = torch.float64, torch.float32
    cases = [
        make_case(outdir, "relu_k1_f64",
                  [nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 1)],
                  [5], f64, 12, 7, 1),
        make_case(outdir, "leaky_k3_f64",
                  [nn.Flatten(), nn.Linear(6, 7), nn.LeakyReLU(0.05), nn.Linear(7, 5, bias=False),
                   nn.LeakyReLU(), nn.Linear(5, 3)],
                  [2, 3], f64, 12, 7, 2, jbr_batch=4),
        make_case(outdir, "tanh_k3_f32",
                  [nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)],
                  [5], f32, 12, 7, 3, jbr_batch=5),
        make_case(outdir, "sigmoid_k1_f32",
                  [nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 5, bias=False), nn.Sigmoid(),
                   nn.Linear(5, 1), nn.Sigmoid()],
                  [4], f32, 10, 6, 4),
        make_case(outdir, "gelu_k3_f64",
                  [nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 6), nn.GELU(), nn.Identity(),
                   nn.Linear(6, 3)],
                  [5], f64, 12, 7, 5, jbr_batch=3),
        make_case(outdir, "softplus_k3_f64",
                  [nn.Linear(5, 7), nn.Softplus(), nn.Linear(7, 6), nn.Softplus(beta=2.0, threshold=3.0),
                   nn.Linear(6, 3), nn.Tanh()],
                  [5], f64, 12, 7, 6, jbr_batch=4),
        make_case(outdir, "mixed_k3_f32",
                  [nn.Linear(6, 9), nn.GELU(), nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 5),
                   nn.Softplus(), nn.Linear(5, 3)],
                  [6], f32, 14, 8, 7, jbr_batch=4),
    ]
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
