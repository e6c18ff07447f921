"""tasks.py: the sweeps the selection benchmark scores (bench/selection/README.md).

Four tasks, each a sweep of MLPs with under-trained, early-stopped, over-fitted, regularised and
label-noise-trained members:
- `regression`: a fixed random tanh teacher with Gaussian label noise 0.3, 200 fit inputs, MSE;
- `regression_lo`: another teacher (8 inputs), label noise 0.1, 120 fit inputs;
- `digits`: scikit-learn's 8x8 digits (shipped with python3-sklearn, no download), 10 classes,
  200 fit, 300 probe inputs, cross-entropy training;
- `digits_small`: the same with 100 fit inputs.
Everything is deterministic for a seed: the data split, the initialisations, full-batch training.
"""
import numpy as np
import torch

# Recipes: (name, weight decay, epochs, label noise).  Few epochs under-train, 100 and 300 epochs
# stop early, wide nets without weight decay trained long over-fit, weight decay regularises
# (strongly or mildly), and the last one trains on corrupted labels (classification: that fraction
# of the fit labels replaced by uniformly drawn classes; regression: extra Gaussian noise with the
# task's own standard deviation on the fit targets), which over-fits the noise: its train loss
# is measured on the labels it was trained on, as a user would report it.
# LONG stands for the task's long_epochs: 2000 for regression, 800 for the digits tasks (which
# fit their training set by 300 epochs already; 800 over-fits as surely and costs less than half).
LONG = None
RECIPES = [("e40", 0.0, 40, 0.0),
           ("e100", 0.0, 100, 0.0),
           ("e300", 0.0, 300, 0.0),
           ("long", 0.0, LONG, 0.0),
           ("wd0.05", 0.05, LONG, 0.0),
           ("wd0.5", 0.5, LONG, 0.0),
           ("noisy", 0.0, LONG, 0.3)]
WIDTHS = (16, 32, 64, 128)
GRID = [(w, d, r) for w in WIDTHS for d in (1, 2) for r in RECIPES]
# 4 widths x 2 depths x 7 recipes = 56 candidates per sweep.


class Split:
    def __init__(self, x, y):
        self.x, self.y = x, y


class Task:
    """x/y tensors of the fit (training), probe (unlabelled held-out) and test splits."""

    def __init__(self, name, kind, fit, probe, test, d, k, noise=0.0, long_epochs=2000):
        self.name, self.kind = name, kind
        self.long_epochs = long_epochs
        self.noise = noise  # regression: the label noise standard deviation of the data
        self.fit, self.probe, self.test = fit, probe, test
        self.d, self.k = d, k

    def loss(self, out, y):
        if self.kind == "classification":
            return torch.nn.functional.cross_entropy(out, y).item()
        return torch.nn.functional.mse_loss(out, y).item()

    def error(self, out, y):
        """Test error rate (classification only)."""
        return (out.argmax(1) != y).double().mean().item()


def regression_task(seed, d=10, n_fit=200, n_probe=400, n_test=4000, noise=0.3,
                    name="regression", teacher_seed=1000):
    g = torch.Generator().manual_seed(teacher_seed + seed)
    w1 = torch.randn(d, 8, generator=g, dtype=torch.float64) * 1.2
    w2 = torch.randn(8, 1, generator=g, dtype=torch.float64)

    def sample(n):
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)
        return Split(x, y)

    return Task(name, "regression", sample(n_fit), sample(n_probe), sample(n_test), d, 1,
                noise)


def digits_task(seed, n_fit=200, n_probe=300, name="digits"):
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2000 + seed))
    x, y = x[perm], y[perm]
    fit = Split(x[:n_fit], y[:n_fit])
    probe = Split(x[n_fit:n_fit + n_probe], y[n_fit:n_fit + n_probe])
    test = Split(x[n_fit + n_probe:], y[n_fit + n_probe:])
    return Task(name, "classification", fit, probe, test, x.shape[1], 10, long_epochs=800)


TASKS = {
    "regression": regression_task,
    "regression_lo": lambda seed: regression_task(seed, d=8, n_fit=120, noise=0.1,
                                                  name="regression_lo", teacher_seed=3000),
    "digits": digits_task,
    "digits_small": lambda seed: digits_task(seed, n_fit=100, n_probe=300, name="digits_small"),
}


def make_task(name, seed):
    return TASKS[name](seed)


def corrupt_labels(task, y, amount, seed):
    """The fit targets a label-noise recipe trains on (see RECIPES)."""
    if amount <= 0:
        return y
    g = torch.Generator().manual_seed(5000 + seed)
    if task.kind == "classification":
        flip = torch.rand(len(y), generator=g) < amount
        drawn = torch.randint(0, task.k, (len(y),), generator=g)
        return torch.where(flip, drawn, y)
    return y + task.noise * torch.randn(y.shape, generator=g, dtype=y.dtype)


def build_mlp(d, k, width, depth):
    layers, cur = [], d
    for _ in range(depth):
        layers += [torch.nn.Linear(cur, width), torch.nn.Tanh()]
        cur = width
    layers.append(torch.nn.Linear(cur, k))
    return torch.nn.Sequential(*layers).double()


def train(task, width, depth, weight_decay, epochs, seed, label_noise=0.0):
    """Full-batch AdamW; returns the net and its train loss (on the labels it was trained on),
    test loss and test error."""
    torch.manual_seed(seed)
    y_fit = corrupt_labels(task, task.fit.y, label_noise, seed)
    net = build_mlp(task.d, task.k, width, depth)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=weight_decay)
    lossf = (torch.nn.functional.cross_entropy if task.kind == "classification"
             else torch.nn.functional.mse_loss)
    for _ in range(epochs):
        opt.zero_grad()
        loss = lossf(net(task.fit.x), y_fit)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out_fit, out_test = net(task.fit.x), net(task.test.x)
        res = {"train_loss": task.loss(out_fit, y_fit),
               "test_loss": task.loss(out_test, task.test.y)}
        if task.kind == "classification":
            res["test_error"] = task.error(out_test, task.test.y)
    return net, res


def sweep(task, seed):
    """Yields (name, net, result) for every grid point."""
    for i, (w, d, (recipe, wd, ep, noise)) in enumerate(GRID):
        ep = task.long_epochs if ep is LONG else ep
        name = f"w{w}-d{d}-{recipe}"
        net, res = train(task, w, d, wd, ep, seed * 100 + i, noise)
        res.update({"width": w, "depth": d, "recipe": recipe, "weight_decay": wd,
                    "epochs": ep, "label_noise": noise})
        yield name, net, res


def as_numpy(t):
    return np.asarray(t.detach().cpu().numpy())
