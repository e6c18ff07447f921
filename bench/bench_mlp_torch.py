#!/usr/bin/python3
"""PyTorch side of the MLP scoring benchmark (bench/bench_mlp.c reads what this writes).

    /usr/bin/python3 bench/bench_mlp_torch.py DIR [--threads 1] [--hutch-probes 5]
    build/bench/bench_mlp DIR

Builds a d=64, [512, 512], K=10 ReLU MLP (float64, seed 0) and n=1000 inputs, exports them
(spec.json, weights.safetensors, x.npy; safetensors written by hand) and times the exact per-tensor
block traces sum_x sum_k ||dF_k(x)/dW_t||^2 (what isotropic, per_tensor/per_channel quantization
and sgd need) computed by PyTorch in three ways:

  loop        per-sample gradients: one forward per sample, one backward per (sample, output)
  vmap        functorch vmap(jacrev) per-sample Jacobians, one sample per call (the fastest chunk
              size measured: larger chunks are slower, the (chunk, K, p) Jacobian is memory-bound)
  hutch200    the reference code's Hutchinson style with 200 probes: per probe, every sample gets a
              Rademacher output vector v and one forward + one backward of <v, f(x)>; per-tensor
              ||J(x)^T v||^2 averaged over probes.  --hutch-probes P runs P probes and extrapolates
              the time linearly to 200 (the per-probe cost is constant).

Times and traces go to DIR/torch_results.json.
"""

import argparse
import json
import os
import struct
import time

import numpy as np
import torch

D, H, K, N = 64, 512, 10, 1000


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        raw = t.detach().contiguous().numpy().astype("<f8").tobytes()
        header[name] = {"dtype": "F64", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def block_traces_loop(net, x, params):
    acc = [torch.zeros((), dtype=torch.float64) for _ in params]
    for i in range(x.shape[0]):
        out = net(x[i:i + 1])[0]
        for k in range(out.shape[0]):
            g = torch.autograd.grad(out[k], params, retain_graph=k + 1 < out.shape[0])
            for t, gi in enumerate(g):
                acc[t] += (gi * gi).sum()
    return [float(a) for a in acc]


def block_traces_vmap(net, x, chunk=1):
    import functorch
    fmodel, params = functorch.make_functional(net)
    # jacrev differentiates with respect to its argument; parameters that require grad would also
    # make autograd record the Jacobian computation itself
    params = tuple(p.detach() for p in params)

    def f1(p, xi):
        return fmodel(p, xi.unsqueeze(0))[0]

    jac = functorch.vmap(functorch.jacrev(f1), in_dims=(None, 0))
    acc = [0.0 for _ in params]
    for s in range(0, x.shape[0], chunk):
        js = jac(params, x[s:s + chunk])  # per tensor: (chunk, K, *shape)
        for t, j in enumerate(js):
            acc[t] += float((j * j).sum())
    return acc


def block_traces_hutch(net, x, params, probes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    acc = [0.0 for _ in params]
    for _ in range(probes):
        for i in range(x.shape[0]):
            out = net(x[i:i + 1])[0]
            v = torch.randint(0, 2, out.shape, generator=gen).to(out.dtype) * 2 - 1
            g = torch.autograd.grad((v * out).sum(), params)
            for t, gi in enumerate(g):
                acc[t] += float((gi * gi).sum())
    return [a / probes for a in acc]


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hutch-probes", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, H),
                                           torch.nn.ReLU(), torch.nn.Linear(H, K))

        def forward(self, x):
            return self.net(x)

    model = Wrap().double()
    x = torch.randn(N, D, dtype=torch.float64)
    spec = {"format": "tpv.sequential/v1", "input_shape": [D], "layers": [
        {"type": "linear", "weight": "net.0.weight", "bias": "net.0.bias"}, {"type": "relu"},
        {"type": "linear", "weight": "net.2.weight", "bias": "net.2.bias"}, {"type": "relu"},
        {"type": "linear", "weight": "net.4.weight", "bias": "net.4.bias"}]}
    with open(os.path.join(args.dir, "spec.json"), "w") as f:
        json.dump(spec, f)
    write_safetensors(os.path.join(args.dir, "weights.safetensors"), model.state_dict())
    np.save(os.path.join(args.dir, "x.npy"), x.numpy())
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())

    res = {"threads": args.threads, "torch": torch.__version__, "names": names}
    tr, t = timed(block_traces_loop, model, x, params)
    res["loop"] = {"seconds": t, "traces": tr}
    print(f"torch loop   (per-sample grads, {N * K} backward): {t:8.3f} s")
    try:
        trv, tv = timed(block_traces_vmap, model.net, x)
        res["vmap"] = {"seconds": tv, "traces": trv}
        print(f"torch vmap   (functorch jacrev per sample):      {tv:8.3f} s")
    except ImportError:
        print("functorch not available: vmap skipped")
    trh, th = timed(block_traces_hutch, model, x, params, args.hutch_probes)
    est = th * 200 / args.hutch_probes
    res["hutch200"] = {"seconds": est, "measured_seconds": th, "probes_measured": args.hutch_probes,
                       "traces": trh}
    print(f"torch hutch  ({args.hutch_probes} probes x {N} samples measured: {th:.3f} s) "
          f"-> 200 probes: {est:8.3f} s")
    with open(os.path.join(args.dir, "torch_results.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
