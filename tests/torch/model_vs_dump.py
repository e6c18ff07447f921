#!/usr/bin/python3
"""Files for tests/unit/test_score_model.c: one small float64 MLP exported twice with
clients/python/tpv_export.py, once as a checkpoint (spec + safetensors weights + input sets) and
once as per-parameter Jacobian dumps built by torch autograd over the same input sets, plus a
variances blob and a prune mask named like the parameters, and the mean |f(x)| over the fit set
(the scale of label noise given by sigma_rel).  Scoring both through score.h must give
the same TPV for every noise model and split.

    /usr/bin/python3 tests/torch/model_vs_dump.py OUTDIR
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
import tpv_export  # noqa: E402


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 6),
                              torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x_fit = torch.randn(12, 5, dtype=torch.float64)
    x_probe = torch.randn(9, 5, dtype=torch.float64)
    tpv_export.export_sequential(net, os.path.join(out, "model"), [5])
    tpv_export.save_inputs(x_fit, os.path.join(out, "x_fit.npy"))
    tpv_export.save_inputs(x_probe, os.path.join(out, "x_probe.npy"))
    tpv_export.export_jacobian(net, x_fit, os.path.join(out, "jac_fit.safetensors"))
    tpv_export.export_jacobian(net, x_probe, os.path.join(out, "jac_probe.safetensors"))
    state = net.state_dict()
    variances = {k: torch.rand(v.shape, dtype=torch.float64) * 1e-3 for k, v in state.items()}
    mask = {k: (torch.rand(v.shape) < 0.3).to(torch.uint8) for k, v in state.items()}
    tpv_export.save_safetensors(variances, os.path.join(out, "variances.safetensors"))
    tpv_export.save_safetensors(mask, os.path.join(out, "mask.safetensors"))
    # The output scale of label noise given by sigma_rel: mean |f(x)| over the fit set's outputs.
    with torch.no_grad():
        scale = net(x_fit).abs().mean().item()
    with open(os.path.join(out, "mean_abs_fit.txt"), "w") as f:
        f.write(repr(scale) + "\n")


if __name__ == "__main__":
    main()
