#!/usr/bin/python3
"""JBR references on ONNX graphs for tests/unit/test_onnx_jbr.c (DESIGN.md section 3, "JBR
pruning scores"; core/onnx_jbr.h).

    /usr/bin/python3 tests/torch/onnx_jbr.py OUTDIR

Each network is exported in float64 with torch.onnx.export as a user writes it (eval mode,
training=PRESERVE, do_constant_folding=False, dynamic batch or fixed at 1, no metadata), and its JBR scores are
computed here by autograd: pseudo-labels argmax f, kept where max softmax > confidence, mini-batches
of consecutive kept samples in input order; one backward of the summed cross-entropy gives every
sample's dCE/dz and dCE/da (the samples do not interact in eval mode); per unit j,
out_j = mean_b sum_positions delta_j z_j and in_j = mean_b sum over the sites of
sum_positions a_j g_j, the sites written out per network (where channel j enters the next
weighted layers through per-channel operators: a residual branch feeds two).
Writes per case <case>.onnx, <case>.input.npy, <case>.scores.npy (units in layer order) and
<case>.layers.txt ("<weight name> <units>" a line); manifest.txt lists
"<case> <confidence> <batch_size> <kept>".
"""

import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ChainCNN(nn.Module):
    """Conv-BN-ReLU-MaxPool, strided Conv-BN-ReLU, global pool, flatten, Linear-ReLU-Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 7)
        self.fc2 = nn.Linear(7, 4)

    def forward(self, x, t):
        z1 = t("c1.weight", self.c1, x)
        a = F.max_pool2d(torch.relu(self.b1(z1)), 2)
        z2 = t("c2.weight", self.c2, a, site_of=["c1.weight"])
        a = torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.b2(z2)), 1), 1)
        z3 = t("fc1.weight", self.fc1, a, site_of=["c2.weight"])
        return t("fc2.weight", self.fc2, torch.relu(z3), site_of=["fc1.weight"], last=True)


class ResCNN(nn.Module):
    """A stem conv and one residual block: the stem's channels enter the block's first conv and,
    through the skip Add, the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 5, 3, padding=1)
        self.c1 = nn.Conv2d(5, 5, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(5)
        self.c2 = nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False)
        self.b2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x, t):
        h = torch.relu(t("stem.weight", self.stem, x))
        z1 = t("c1.weight", self.c1, h, site_of=["stem.weight"])
        z2 = t("c2.weight", self.c2, torch.relu(self.b1(z1)), site_of=["c1.weight"])
        out = torch.relu(self.b2(z2) + h)
        a = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return t("fc.weight", self.fc, a, site_of=["stem.weight", "c2.weight"], last=True)


class Tap:
    """Runs the layers, keeping each unit layer's output z and each site a with its gradient."""

    def __init__(self):
        self.z, self.sites, self.order = {}, {}, []

    def __call__(self, name, mod, a, site_of=(), last=False):
        if site_of and a.requires_grad:
            a.retain_grad()
            for s in site_of:
                self.sites.setdefault(s, []).append(a)
        z = mod(a)
        if not last and z.requires_grad:
            z.retain_grad()
            self.z[name] = z
            self.order.append(name)
        return z


def channel_sum(t):
    """(n, C, ...) -> (n, C): summed over positions."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(2)


def jbr(model, x, confidence, batch):
    with torch.no_grad():
        f = model(x, Tap())
    p = torch.softmax(f, 1)
    kept = (p.max(1).values > confidence).nonzero().reshape(-1)
    tap = Tap()
    f = model(x[kept], tap)
    y = f.argmax(1)
    F.cross_entropy(f, y, reduction="sum").backward()
    per_out = torch.cat([channel_sum(tap.z[n] * tap.z[n].grad) for n in tap.order], 1)
    per_in = torch.cat([sum(channel_sum(a * a.grad) for a in tap.sites[n]) for n in tap.order], 1)
    score = torch.zeros(per_out.shape[1], dtype=torch.float64)
    for b0 in range(0, len(kept), batch):
        score += per_out[b0:b0 + batch].mean(0) ** 2 + per_in[b0:b0 + batch].mean(0) ** 2
    units = [(n, tap.z[n].shape[1]) for n in tap.order]
    return score.detach().numpy(), units, len(kept)


class Plain(nn.Module):
    """The network without the tap, for the exporter."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x, lambda name, mod, a, site_of=(), last=False: mod(a))


def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)


def sharpen(layer, gain):
    """A classifier that is confident on some inputs (fresh ones are near uniform)."""
    with torch.no_grad():
        layer.weight.mul_(gain)


def case(out, name, net, x, confidence, batch, dynamic=True):
    net = net.double().eval()
    path = os.path.join(out, name + ".onnx")
    with torch.no_grad():
        torch.onnx.export(Plain(net), (x[:1],), path, opset_version=17, input_names=["x"],
                          output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}} if dynamic else None,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    score, units, kept = jbr(net, x, confidence, batch)
    np.save(os.path.join(out, name + ".input.npy"), x.numpy())
    np.save(os.path.join(out, name + ".scores.npy"), score)
    with open(os.path.join(out, name + ".layers.txt"), "w") as f:
        for n, c in units:
            f.write(f"net.{n} {c}\n")
    return f"{name} {confidence!r} {batch} {kept}\n"


def main():
    out = sys.argv[1]
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(2)
    lines = []
    chain = ChainCNN()
    randomize_bn(chain, gen)
    sharpen(chain.fc2, 40.0)
    x = torch.randn(37, 3, 8, 8, dtype=torch.float64)
    lines.append(case(out, "chain_all", chain, x, 0.0, 8))      # 37 kept: 5 batches, last short
    lines.append(case(out, "chain_conf", chain, x, 0.975, 5))
    lines.append(case(out, "chain_batch1", chain, x, 0.975, 5, dynamic=False))  # one at a time
    res = ResCNN()
    randomize_bn(res, gen)
    sharpen(res.fc, 10.0)
    xr = torch.randn(40, 2, 6, 6, dtype=torch.float64) * 3  # 40 > one pass of 32
    lines.append(case(out, "res_all", res, xr, 0.0, 16))
    lines.append(case(out, "res_conf", res, xr, 0.9, 3))
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
