#!/usr/bin/python3
"""Regenerates examples/quickstart/: a sweep of small MLPs trained on a synthetic 3-class task,
exported with clients/python/tpv_export.py.  The quickstart itself trains nothing; this script is
how its files were made (deterministic: fixed seeds, float64 training, float32 export).

    /usr/bin/python3 examples/make_quickstart_data.py
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
import tpv_export  # noqa: E402

OUT = os.path.join(HERE, "quickstart")
D, K, N_FIT, N_PROBE, N_TEST = 10, 3, 400, 400, 4000


def make_task(seed):
    """Inputs from a Gaussian; labels from a fixed random teacher MLP with 5% label noise."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.Tanh(), torch.nn.Linear(16, K))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1.5)
    def sample(n):
        x = torch.randn(n, D, generator=g, dtype=torch.float64)
        y = teacher.double()(x).argmax(1)
        flip = torch.rand(n, generator=g) < 0.05
        y[flip] = torch.randint(0, K, (int(flip.sum()),), generator=g)
        return x, y
    return sample(N_FIT), sample(N_PROBE), sample(N_TEST)


def train(width, depth, weight_decay, x, y, epochs, seed):
    torch.manual_seed(seed)
    layers, d = [], D
    for _ in range(depth):
        layers += [torch.nn.Linear(d, width), torch.nn.ReLU()]
        d = width
    layers.append(torch.nn.Linear(d, K))
    net = torch.nn.Sequential(*layers).double()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return net


def main():
    (xf, yf), (xp, _), (xt, yt) = make_task(0)
    os.makedirs(OUT, exist_ok=True)
    tpv_export.save_inputs(xf.float(), os.path.join(OUT, "x_fit.npy"))
    tpv_export.save_inputs(xp.float(), os.path.join(OUT, "x_probe.npy"))
    # Widths, depths and weight decays of a small hyperparameter sweep.
    sweep = [(8, 1, 0.0), (32, 1, 0.0), (128, 1, 0.0), (128, 1, 0.1), (32, 2, 0.0), (64, 2, 0.1)]
    manifest = []
    for width, depth, wd in sweep:
        name = f"mlp-w{width}-d{depth}-wd{wd:g}"
        net = train(width, depth, wd, xf, yf, epochs=1000, seed=width * 10 + depth)
        with torch.no_grad():
            train_loss = torch.nn.functional.cross_entropy(net(xf), yf).item()
            test_loss = torch.nn.functional.cross_entropy(net(xt), yt).item()
        tpv_export.export_sequential(net, os.path.join(OUT, name), [D], dtype=torch.float32)
        manifest.append({"name": name, "width": width, "depth": depth, "weight_decay": wd,
                         "train_loss": round(train_loss, 6), "test_loss": round(test_loss, 6)})
        print(f"{name:16s} train_loss={train_loss:.4f} test_loss={test_loss:.4f}")
    with open(os.path.join(OUT, "candidates.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    # The same as tab-separated lines for examples/quickstart.sh (no JSON tool needed there).
    with open(os.path.join(OUT, "candidates.tsv"), "w") as f:
        f.write("name\ttrain_loss\ttest_loss\n")
        for c in manifest:
            f.write(f"{c['name']}\t{c['train_loss']}\t{c['test_loss']}\n")


if __name__ == "__main__":
    main()
