#!/usr/bin/env python3
"""optuna_sweep.py: a small Optuna study of MLPs with tpvd picking the best without labels.

    TPV_URL=http://127.0.0.1:8080 python3 examples/optuna_sweep.py [--trials 8]

Each trial trains an MLP (width, depth, weight decay and epochs from Optuna) on a noisy 1-D
regression task, records its train loss, and returns its validation loss (which tpvd never sees:
it is there to compare with).  tpv_optuna's callback exports the trained nn.Sequential, submits it
to a tpvd study with the trial's params and values, and writes the TPV back into the trial.  At
the end it prints every trial and the label-free best trial: the lowest TPV among the trials that
fit their training data (train loss under --max-train-loss), next to the best by validation loss.
Needs torch and optuna (Debian: python3-torch python3-optuna) and a running tpvd.
"""

import argparse
import os
import sys

import numpy as np
import optuna
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))

import tpv_export  # noqa: E402
import tpv_optuna  # noqa: E402
from tpv_client import Client  # noqa: E402

DIM = 4


def task(seed=0, n=64):
    """y = sin(3 x0) + noise on a few inputs: small enough to overfit in a second."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    y = torch.sin(3 * x[:, :1]) + 0.3 * torch.randn(n, 1, generator=g)
    return x, y


def mlp(width, depth):
    layers, d = [], DIM
    for _ in range(depth):
        layers += [torch.nn.Linear(d, width), torch.nn.Tanh()]
        d = width
    layers.append(torch.nn.Linear(d, 1))
    return torch.nn.Sequential(*layers)


def train(net, x, y, epochs, weight_decay, seed):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.02, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(net(x), y))


def make_tpv_study(client, workdir, name):
    """A tpvd study with isotropic noise on fit and probe inputs drawn from the task's input law."""
    st = client.create_study(name, [{"name": "iso", "kind": "isotropic", "sigma": 0.01}])
    rng = np.random.default_rng(1)
    for split, n in (("fit", 64), ("probe", 64)):
        path = os.path.join(workdir, "x_%s.npy" % split)
        tpv_export.save_inputs(rng.standard_normal((n, DIM)).astype(np.float32), path)
        client.set_inputs(st["id"], split, path)
    return st["id"]


def run(client, trials=8, workdir=None, max_train_loss=0.1, study_name="optuna-mlp",
        use_callback=False, seed=0):
    """Runs the sweep; returns (optuna study, tpvd study id, callback, best trial)."""
    workdir = workdir or os.path.join(os.getcwd(), "optuna-sweep")
    os.makedirs(workdir, exist_ok=True)
    sid = make_tpv_study(client, workdir, study_name)
    x, y = task(0)
    xv, yv = task(1)
    models = {}

    def objective(trial):
        width = trial.suggest_categorical("width", [2, 8, 32, 128])
        depth = trial.suggest_int("depth", 1, 2)
        wd = trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True)
        epochs = trial.suggest_int("epochs", 20, 400, log=True)
        net = mlp(width, depth)
        trial.set_user_attr("train_loss", train(net, x, y, epochs, wd, seed + trial.number))
        models[trial.number] = net
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(net(xv), yv))

    cb = tpv_optuna.TPVCallback(client, sid, export=lambda t: models.pop(t.number),
                                input_shape=[DIM], workdir=workdir)
    study = optuna.create_study(study_name=study_name, direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    if use_callback:
        study.optimize(objective, n_trials=trials, callbacks=[cb])
    else:
        study.optimize(cb.wrap(objective), n_trials=trials)
    best = tpv_optuna.best_trial(study, max_train_loss=max_train_loss)
    return study, sid, cb, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--max-train-loss", type=float, default=0.1)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = Client(os.environ.get("TPV_URL", "http://127.0.0.1:8080"),
                    token=os.environ.get("TPV_TOKEN"))
    study, sid, _, best = run(client, args.trials, args.workdir, args.max_train_loss)
    print("%-6s %-44s %10s %10s %10s" % ("trial", "params", "train", "val", "TPV"))
    for t in study.trials:
        print("%-6d %-44s %10.4g %10.4g %10.4g" % (
            t.number, ",".join("%s=%.3g" % (k, v) for k, v in t.params.items()),
            t.user_attrs["train_loss"], t.value, t.user_attrs["tpv"]))
    print("label-free best trial (lowest TPV, train loss <= %g): %s" %
          (args.max_train_loss, best.number if best else None))
    print("best trial by validation loss (uses labels):  %d" % study.best_trial.number)
    print("dashboard: %s/ui/studies/%s" % (client.url, sid))


if __name__ == "__main__":
    main()
