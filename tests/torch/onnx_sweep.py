#!/usr/bin/python3
"""torchvision architectures exported straight with torch.onnx.export, for the ONNX runtime sweep
of issue 11 ("networks you have not seen"); tests/tools/onnx_sweep_check.c reads what this writes.

    /usr/bin/python3 tests/torch/onnx_sweep.py OUTDIR [MODEL ...]

Per model (eval mode, batch-norm statistics randomized, small widths where the constructor allows,
the smallest input the architecture accepts):
    <model>.fit.npy, <model>.probe.npy   inputs (float64)
    <model>.out.npy                      torch's float64 output on the fit inputs, (n, K)
    <model>.params.txt                   named_parameters(), one a line
    <model>.ref.json                     (small models) float64 autograd references of every
                                         noise model of tests/tools/ref_dump.py on both splits
    <model>.variances.safetensors, <model>.mask.safetensors   the diagonal / prune-mask blobs
and per export variant <model>.<variant>.onnx (full-size models: o17 and o17p only):
    o17     opset 17, torch's defaults (eval, constant folding), dynamic batch
    o17b1   the same with a fixed batch of 1
    o17p    opset 17, training=PRESERVE, do_constant_folding=False, dynamic batch
    o17pb1  the same with a fixed batch of 1
    o13p    opset 13, PRESERVE, no folding, dynamic batch
manifest.txt lists "<model> <variant> <fixed_batch_1 0|1> <has_reference 0|1>".
"""

import copy
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import efficientnet as tve
from torchvision.models import regnet as tvr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import ref_dump  # noqa: E402  (the reference formulas of DESIGN.md section 3)
from onnx_networks import randomize_bn  # noqa: E402  (this folder: the tests' batch-norm rule)


def vgg_small():
    m = tvm.VGG(tvm.vgg.make_layers([8, "M", 16, "M", 16, 16], batch_norm=True), num_classes=10)
    m.classifier = nn.Sequential(nn.Linear(16 * 49, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32),
                                 nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))
    return m


def effnet_small():
    conf = [tve.MBConvConfig(1, 3, 1, 8, 8, 1), tve.MBConvConfig(4, 5, 2, 8, 16, 2)]
    return tvm.EfficientNet(conf, 0.2, 0.0, num_classes=10, last_channel=None)


def effnet_v2_small():
    conf = [tve.FusedMBConvConfig(1, 3, 1, 8, 8, 2), tve.FusedMBConvConfig(4, 3, 2, 8, 16, 1),
            tve.MBConvConfig(4, 3, 2, 16, 24, 2)]
    return tvm.EfficientNet(conf, 0.2, 0.0, num_classes=10, last_channel=64)


def regnet_small(se):
    bp = tvr.BlockParams.from_init_params(depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=8,
                                          se_ratio=0.25 if se else None)
    return tvm.RegNet(bp, num_classes=10)


# name: (builder, input side, has_reference).  Full-size torchvision models are forward only.
MODELS = {
    "alexnet": (lambda: tvm.alexnet(num_classes=10), 224, False),
    "vgg11_bn": (lambda: tvm.vgg11_bn(num_classes=10), 224, False),
    "vgg_small": (vgg_small, 56, True),
    "squeezenet1_0": (lambda: tvm.squeezenet1_0(num_classes=10), 48, True),
    "squeezenet1_1": (lambda: tvm.squeezenet1_1(num_classes=10), 48, True),
    "densenet121": (lambda: tvm.densenet121(num_classes=10), 32, False),
    "densenet_small": (lambda: tvm.DenseNet(8, (2, 2), 16, 2, num_classes=10), 32, True),
    "googlenet": (lambda: tvm.GoogLeNet(num_classes=10, aux_logits=False, transform_input=True,
                                        init_weights=True), 32, False),
    "inception_v3": (lambda: tvm.Inception3(num_classes=10, aux_logits=False, transform_input=True,
                                            init_weights=True), 75, False),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(num_classes=10), 32, True),
    "mnasnet0_5": (lambda: tvm.mnasnet0_5(num_classes=10), 32, True),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=10, width_mult=0.5), 32, True),
    "mobilenet_v3_large": (lambda: tvm.mobilenet_v3_large(num_classes=10, width_mult=0.5), 32, True),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=10), 32, False),
    "efficientnet_small": (effnet_small, 32, True),
    "efficientnet_v2_s": (lambda: tvm.efficientnet_v2_s(num_classes=10), 32, False),
    "efficientnet_v2_small": (effnet_v2_small, 32, True),
    "regnet_x_400mf": (lambda: tvm.regnet_x_400mf(num_classes=10), 32, False),
    "regnet_y_400mf": (lambda: tvm.regnet_y_400mf(num_classes=10), 32, False),
    "regnet_x_small": (lambda: regnet_small(False), 32, True),
    "regnet_y_small": (lambda: regnet_small(True), 32, True),
    "resnext50_32x4d": (lambda: tvm.resnext50_32x4d(num_classes=10), 32, False),
    "wide_resnet50_2": (lambda: tvm.wide_resnet50_2(num_classes=10), 32, False),
    "resnext_small": (lambda: tvm.ResNet(tvm.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10,
                                         groups=4, width_per_group=4), 32, False),
    "convnext_tiny": (lambda: tvm.convnext_tiny(num_classes=10), 32, False),
    "convnext_small": (lambda: tvm.ConvNeXt([tvm.convnext.CNBlockConfig(8, 16, 1),
                                             tvm.convnext.CNBlockConfig(16, None, 1)],
                                            num_classes=10), 32, True),
    "vit_small": (lambda: tvm.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10), 32, True),
    "swin_t": (lambda: tvm.swin_t(num_classes=10), 32, False),
    "swin_small": (lambda: tvm.SwinTransformer([4, 4], 16, [2, 2], [2, 2], [4, 4],
                                               num_classes=10), 32, True),
    "maxvit_t": (lambda: tvm.maxvit_t(num_classes=10), 224, False),
    "maxvit_small": (lambda: tvm.MaxVit((32, 32), 8, 2, [16, 32], [1, 1], 8, 0.0,
                                        num_classes=10), 32, True),
}

VARIANTS = {  # name: (opset, preserve, fixed batch 1)
    "o17": (17, False, False),
    "o17b1": (17, False, True),
    "o17p": (17, True, False),
    "o17pb1": (17, True, True),
    "o13p": (13, True, False),
}


def randomize(model, gen):
    """Trained-looking batch norm, layer scales of ConvNeXt away from their 1e-6 init, and no
    all-zero classifier (a ViT's head starts at zero: every gradient but its own would be 0)."""
    randomize_bn(model, gen)
    for m in model.modules():
        if isinstance(m, nn.Linear) and not m.weight.detach().any():  # a ViT's zero head
            with torch.no_grad():
                m.weight.normal_(0, 0.2, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    for n, p in model.named_parameters():
        if n.endswith("layer_scale"):
            with torch.no_grad():
                p.uniform_(0.5, 1.5, generator=gen)


def grads(model, params, x):
    """Per-sample, per-output gradients (n, K, p) by float64 autograd."""
    rows = []
    for i in range(x.shape[0]):
        y = model(x[i:i + 1]).reshape(-1)
        per = []
        for k in range(y.shape[0]):
            g = torch.autograd.grad(y[k], [p for _, p in params], retain_graph=True,
                                    allow_unused=True)
            per.append(torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                                  for t, (_, p) in zip(g, params)]))
        rows.append(torch.stack(per))
    return torch.stack(rows).numpy()


def references(out, name, model, xf, xp):
    m = copy.deepcopy(model).double().eval()
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    Jf, Jp = grads(m, params, xf), grads(m, params, xp)
    # ref_dump's formulas read its module globals: this model's tensors and K
    ref_dump.SHAPES = {n: tuple(p.shape) for n, p in params}
    ref_dump.LAYOUT = [n for n, _ in params]
    ref_dump.K = Jf.shape[1]
    rng = np.random.default_rng(5)
    w = {n: p.detach().numpy() for n, p in params}
    var = {n: rng.uniform(0, 1e-3, size=p.shape) for n, p in params}
    mask = {n: (rng.uniform(size=p.shape) < 0.2).astype("u1") for n, p in params}
    ref_dump.write_safetensors(os.path.join(out, name + ".variances.safetensors"), var)
    ref_dump.write_safetensors(os.path.join(out, name + ".mask.safetensors"), mask)
    flat = [np.concatenate([d[n].astype(np.float64).ravel() for n, _ in params])
            for d in (w, var, mask)]
    ref, stab = ref_dump.references(Jf, Jp, *flat)
    with open(os.path.join(out, name + ".ref.json"), "w") as f:
        json.dump({"models": ref_dump.MODELS, "ref": ref, "isotropic_ratio": stab}, f, indent=1)


def export_variant(out, name, model, x, variant):
    opset, preserve, b1 = VARIANTS[variant]
    kw = {} if b1 else {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}}
    if preserve:
        kw.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    torch.onnx.export(model, x[:1] if b1 else x, os.path.join(out, f"{name}.{variant}.onnx"),
                      input_names=["x"], output_names=["y"], opset_version=opset, **kw)


def main():
    out = sys.argv[1]
    only = sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    mf = open(os.path.join(out, "manifest.txt"), "a")
    for name, (build, side, has_ref) in MODELS.items():
        if only and name not in only:
            continue
        torch.manual_seed(3)
        gen = torch.Generator().manual_seed(7)
        model = build().eval()
        randomize(model, gen)
        xf = torch.randn(2, 3, side, side)
        xp = torch.randn(2, 3, side, side)
        with torch.no_grad():
            y = copy.deepcopy(model).double()(xf.double())
        np.save(os.path.join(out, name + ".fit.npy"), xf.double().numpy())
        np.save(os.path.join(out, name + ".probe.npy"), xp.double().numpy())
        np.save(os.path.join(out, name + ".out.npy"), y.reshape(y.shape[0], -1).numpy())
        with open(os.path.join(out, name + ".params.txt"), "w") as f:
            f.writelines(n + "\n" for n, p in model.named_parameters() if p.requires_grad)
        if has_ref:
            references(out, name, model, xf.double(), xp.double())
        # full-size models (forward only): the two opset-17 forms with a dynamic batch
        for variant in VARIANTS if has_ref else ("o17", "o17p"):
            try:
                export_variant(out, name, model, xf, variant)
            except Exception as e:  # an export torch itself refuses: reported, not ours
                print(f"EXPORT-FAIL {name} {variant}: {type(e).__name__}: {str(e)[:300]}",
                      flush=True)
                continue
            mf.write(f"{name} {variant} {int(VARIANTS[variant][2])} {int(has_ref)}\n")
            mf.flush()
        print(f"exported {name}", flush=True)


if __name__ == "__main__":
    main()
