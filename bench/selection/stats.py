"""stats.py: rank correlations with bootstrap intervals, numpy only.

Spearman is the Pearson correlation of average ranks (ties share their mean rank); Kendall is
tau-b (tie-corrected).  Intervals are percentile bootstraps over candidates with a fixed seed, so a
re-run on the same scores prints the same numbers.
"""
import numpy as np


def ranks(a):
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="mergesort")
    r = np.empty(len(a))
    r[order] = np.arange(len(a), dtype=float)
    # Ties: every member of a run of equal values gets the run's mean rank.
    s = a[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        if j > i:
            r[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(x, y):
    rx, ry = ranks(x), ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def kendall(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    dx, dy = dx[iu], dy[iu]
    num = (dx * dy).sum()
    den = np.sqrt((dx != 0).sum() * (dy != 0).sum())
    return float(num / den) if den > 0 else float("nan")


def bootstrap_ci(x, y, stat, reps=2000, seed=0, level=0.95):
    """Percentile interval of stat over candidates resampled with replacement."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(reps):
        idx = rng.integers(0, len(x), len(x))
        v = stat(x[idx], y[idx])
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def low_train_loss_half(train_loss):
    """Indices of the candidates whose train loss is at or below the median."""
    tl = np.asarray(train_loss, float)
    return np.nonzero(tl <= np.median(tl))[0]


def pick_regret(score, test_loss):
    """Test loss of the lowest-score candidate, and the best test loss of the set."""
    score, test_loss = np.asarray(score, float), np.asarray(test_loss, float)
    return float(test_loss[int(np.argmin(score))]), float(test_loss.min())
