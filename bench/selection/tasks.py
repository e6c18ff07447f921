"""tasks.py: the sweeps the selection benchmark scores (bench/selection/README.md).

Two tasks, each a sweep of MLPs with under-trained, over-fitted and regularised members:
- `regression`: a fixed random tanh teacher with Gaussian label noise, MSE training;
- `digits`: scikit-learn's 8x8 digits (shipped with python3-sklearn, no download), 10 classes,
  cross-entropy training.
Everything is deterministic for a seed: the data split, the initialisations, full-batch training.
"""
import numpy as np
import torch

# Candidate grid: width, depth, weight decay, epochs.  Few epochs under-train, wide nets without
# weight decay trained long over-fit, weight decay regularises.
GRID = [(w, d, wd, ep)
        for w in (16, 48, 128)
        for d in (1, 2)
        for wd, ep in ((0.0, 40), (0.0, 300), (0.0, 2000), (0.5, 2000))]


class Split:
    def __init__(self, x, y):
        self.x, self.y = x, y


class Task:
    """x/y tensors of the fit (training), probe (unlabelled held-out) and test splits."""

    def __init__(self, name, kind, fit, probe, test, d, k):
        self.name, self.kind = name, kind
        self.fit, self.probe, self.test = fit, probe, test
        self.d, self.k = d, k

    def loss(self, out, y):
        if self.kind == "classification":
            return torch.nn.functional.cross_entropy(out, y).item()
        return torch.nn.functional.mse_loss(out, y).item()

    def error(self, out, y):
        """Test error rate (classification only)."""
        return (out.argmax(1) != y).double().mean().item()


def regression_task(seed, d=10, n_fit=200, n_probe=400, n_test=4000, noise=0.3):
    g = torch.Generator().manual_seed(1000 + seed)
    w1 = torch.randn(d, 8, generator=g, dtype=torch.float64) * 1.2
    w2 = torch.randn(8, 1, generator=g, dtype=torch.float64)

    def sample(n):
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)
        return Split(x, y)

    return Task("regression", "regression", sample(n_fit), sample(n_probe), sample(n_test), d, 1)


def digits_task(seed, n_fit=300, n_probe=400):
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2000 + seed))
    x, y = x[perm], y[perm]
    fit = Split(x[:n_fit], y[:n_fit])
    probe = Split(x[n_fit:n_fit + n_probe], y[n_fit:n_fit + n_probe])
    test = Split(x[n_fit + n_probe:], y[n_fit + n_probe:])
    return Task("digits", "classification", fit, probe, test, x.shape[1], 10)


def make_task(name, seed):
    return {"regression": regression_task, "digits": digits_task}[name](seed)


def build_mlp(d, k, width, depth):
    layers, cur = [], d
    for _ in range(depth):
        layers += [torch.nn.Linear(cur, width), torch.nn.Tanh()]
        cur = width
    layers.append(torch.nn.Linear(cur, k))
    return torch.nn.Sequential(*layers).double()


def train(task, width, depth, weight_decay, epochs, seed):
    """Full-batch AdamW; returns the net and its train loss, test loss and test error."""
    torch.manual_seed(seed)
    net = build_mlp(task.d, task.k, width, depth)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=weight_decay)
    lossf = (torch.nn.functional.cross_entropy if task.kind == "classification"
             else torch.nn.functional.mse_loss)
    for _ in range(epochs):
        opt.zero_grad()
        loss = lossf(net(task.fit.x), task.fit.y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out_fit, out_test = net(task.fit.x), net(task.test.x)
        res = {"train_loss": task.loss(out_fit, task.fit.y),
               "test_loss": task.loss(out_test, task.test.y)}
        if task.kind == "classification":
            res["test_error"] = task.error(out_test, task.test.y)
    return net, res


def sweep(task, seed):
    """Yields (name, net, result) for every grid point."""
    for i, (w, d, wd, ep) in enumerate(GRID):
        name = f"w{w}-d{d}-wd{wd:g}-e{ep}"
        net, res = train(task, w, d, wd, ep, seed * 100 + i)
        res.update({"width": w, "depth": d, "weight_decay": wd, "epochs": ep})
        yield name, net, res


def as_numpy(t):
    return np.asarray(t.detach().cpu().numpy())
