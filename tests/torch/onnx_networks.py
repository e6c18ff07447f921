#!/usr/bin/python3
"""Whole networks exported with torch.onnx.export for the ONNX runtime (tests/unit/test_onnx_torch.c
runs this).

    /usr/bin/python3 tests/torch/onnx_networks.py OUTDIR

Exports each model straight with torch.onnx.export (training=PRESERVE, do_constant_folding=False,
as DESIGN.md section 4 says users do; no project metadata), in eval mode, and writes per case:
    <case>.onnx         the model
    <case>.input.npy    a batch of inputs (float64, C order)
    <case>.output.npy   the float64 output of the same model (weights cast to float64)
    <case>.params.txt   the names of named_parameters(), one a line (what the default parameter
                        rule must find, Identity aliases of deduplicated initializers included)
    <case>.ref.safetensors  (small cases) float64 autograd references for the Jacobian source,
                        from per-sample, per-output gradients G (n K x p, rows (sample, output),
                        one backward each): diag/<name> = column sums of G^2 per parameter,
                        gram = G G^T, w_jvp = G w (w = the weights: the prune form), u and
                        vjp/<name> = G^T u, iso = ||G||_F^2 / n, qpc8 = the per-channel 8-bit
                        quantization trace sum_g delta_g^2 / 12 * T_g / n (DESIGN.md section 3)
manifest.txt lists "<case> <fixed_batch_1 0|1> <has_reference 0|1>".
"""

import copy
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision


class CNN(nn.Module):
    """Conv + BatchNorm + ReLU / ReLU6, max pool, depthwise conv, global pool, view(n, -1)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = nn.functional.max_pool2d(x, 2)
        x = nn.functional.relu6(self.b2(self.c2(x)))
        x = nn.functional.hardswish(self.c3(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class ResMLP(nn.Module):
    """Residual MLP blocks with LayerNorm and exact (erf) GELU, dropout, a softmax head."""

    def __init__(self, d=10, h=16, k=4):
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 2 * h), nn.GELU(), nn.Dropout(0.1),
                          nn.Linear(2 * h, h)) for _ in range(2))
        self.norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, k)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return torch.softmax(self.out(torch.tanh(self.norm(x))), dim=-1)


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 6, 5, padding=2, dilation=1)
        self.c2 = nn.Conv1d(6, 6, 3, stride=2, dilation=2, groups=2)
        self.fc = nn.Linear(6 * 3, 3)

    def forward(self, x):
        x = nn.functional.elu(self.c1(x))
        x = nn.functional.avg_pool1d(torch.sigmoid(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1)) ** 2 / 3.0 - nn.functional.softplus(x.mean(dim=(1, 2))
                                                                                 ).unsqueeze(1)


class SharedConv(nn.Module):
    """One Conv applied twice (one initializer read by two Conv nodes): its per-sample weight
    gradients add up over both uses, where the shared path overwrites a sole Conv's rows."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = torch.tanh(self.c(h))
        h = self.c(h) + h
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


def randomize_bn(model, gen):
    """Trained-looking batch norm: running stats and affine parameters away from 0/1."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)


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


def references(out, name, model, x):
    """Per-sample, per-output gradients by autograd, one backward per (sample, output)."""
    m = copy.deepcopy(model).double().eval()
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    rows = []
    xd = x.double()
    for i in range(xd.shape[0]):
        y = m(xd[i:i + 1]).reshape(-1)
        for k in range(y.shape[0]):
            g = torch.autograd.grad(y[k], [p for _, p in params], retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    G = torch.stack(rows)
    n = xd.shape[0]
    w = torch.cat([p.detach().reshape(-1) for _, p in params])
    u = torch.linspace(-1, 1, G.shape[0], dtype=torch.float64)
    ref = {"gram": G @ G.T, "w_jvp": G @ w, "u": u, "iso": (G ** 2).sum() / n}
    diag = (G ** 2).sum(0)
    vjp = G.T @ u
    qpc, off = 0.0, 0
    for pname, p in params:
        c = p.numel()
        ref["diag/" + pname] = diag[off:off + c].reshape(p.shape)
        ref["vjp/" + pname] = vjp[off:off + c].reshape(p.shape)
        d = diag[off:off + c].reshape(p.shape[0], -1) if p.dim() >= 2 else diag[off:off + c][None]
        wv = p.detach().reshape(p.shape[0], -1) if p.dim() >= 2 else p.detach().reshape(1, -1)
        delta = (wv.max(1).values - wv.min(1).values) / (2 ** 8 - 1)
        qpc += float((delta ** 2 / 12 * d.sum(1)).sum()) / n
        off += c
    ref["qpc8"] = torch.tensor(qpc, dtype=torch.float64)
    write_safetensors(os.path.join(out, name + ".ref.safetensors"),
                      {k: v.detach().numpy() for k, v in ref.items()})


def export(out, name, model, x, dynamic=True, reference=False):
    model.eval()
    path = os.path.join(out, name + ".onnx")
    kw = {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}} if dynamic else {}
    torch.onnx.export(model, x[:1] if not dynamic else x, path, input_names=["x"],
                      output_names=["y"], opset_version=OPSET.get(name, 17),
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, **kw)
    with torch.no_grad():
        y = copy.deepcopy(model).double()(x.double())
    np.save(os.path.join(out, name + ".input.npy"), x.double().numpy())
    np.save(os.path.join(out, name + ".output.npy"), y.reshape(y.shape[0], -1).numpy())
    with open(os.path.join(out, name + ".params.txt"), "w") as f:
        for n, p in model.named_parameters():
            if p.requires_grad:
                f.write(n + "\n")
    if reference:
        references(out, name, model, x)
    return f"{name} {0 if dynamic else 1} {1 if reference else 0}\n"


OPSET = {"resmlp_opset15": 15}


def main():
    out = sys.argv[1]
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    lines = []
    cnn = CNN()
    lines.append(export(out, "cnn_fresh", cnn, torch.randn(4, 3, 12, 12)))  # all BN weights equal
    randomize_bn(cnn, gen)
    lines.append(export(out, "cnn_trained", cnn, torch.randn(4, 3, 12, 12), reference=True))
    # float64 weights: the shared path keeps float64 products for them (float32 weights get
    # float32 ones)
    lines.append(export(out, "cnn_f64", copy.deepcopy(cnn).double(),
                        torch.randn(4, 3, 12, 12, dtype=torch.float64), reference=True))
    lines.append(export(out, "resmlp", ResMLP(), torch.randn(5, 10), reference=True))
    lines.append(export(out, "resmlp_opset15", ResMLP(), torch.randn(5, 10)))
    lines.append(export(out, "conv1d", Conv1dNet(), torch.randn(3, 2, 16), reference=True))
    lines.append(export(out, "cnn_batch1", CNN(), torch.randn(3, 3, 12, 12), dynamic=False,
                        reference=True))
    lines.append(export(out, "shared_conv", SharedConv(), torch.randn(3, 3, 9, 9), reference=True))
    rn = torchvision.models.resnet18(num_classes=10)
    randomize_bn(rn, gen)
    lines.append(export(out, "resnet18", rn, torch.randn(2, 3, 32, 32)))
    mn = torchvision.models.mobilenet_v2(num_classes=7)
    randomize_bn(mn, gen)
    lines.append(export(out, "mobilenet_v2", mn, torch.randn(2, 3, 32, 32)))
    # transformers whose exports need Expand, Where, Equal and ConstantOfShape (a ViT's class
    # token and its MultiheadAttention), Mod, Range, ScatterND and Dropout's mask output (Swin's
    # shifted-window mask and padding), Einsum (MaxViT's attention); issue 11's sweep
    # (tests/torch/onnx_sweep.py) found them refused
    vit = torchvision.models.VisionTransformer(16, 8, 1, 2, 8, 16, num_classes=4)
    with torch.no_grad():  # the head starts at zero: every other gradient would be 0
        vit.heads.head.weight.normal_(0, 0.3, generator=gen)
    lines.append(export(out, "vit", vit, torch.randn(2, 3, 16, 16), reference=True))
    swin = torchvision.models.SwinTransformer([4, 4], 8, [2], [2], [2, 2], num_classes=3)
    lines.append(export(out, "swin", swin, torch.randn(2, 3, 16, 16), reference=True))
    maxvit = torchvision.models.MaxVit((16, 16), 8, 2, [8], [1], 4, 0.0, num_classes=3)
    randomize_bn(maxvit, gen)
    lines.append(export(out, "maxvit", maxvit, torch.randn(2, 3, 16, 16), reference=True))
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
