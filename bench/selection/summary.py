"""summary.py: what the saved runs say across seeds and tasks (run.py --summary).

- Per task type (regression, classification) and score (noise model / split): the Spearman against
  test loss among the low-train-loss half of every run, its worst case, median and the number of
  runs where it is negative, and the worst lower end of the runs' bootstrap intervals.  The score
  to recommend is the one with the highest worst case that is never negative.
- Candidate rules for the ranking's `max_train_loss=auto`: for each, how many candidates it keeps,
  the recommended score's Spearman among them (worst case over runs), and the test loss of the
  score's pick against the best test loss of the whole sweep (excluded candidates included: a rule
  that sets the best model aside costs the user that model).
"""
import numpy as np

import stats

# The thresholds the auto rule could use, as functions of the study's train losses.
RULES = {
    "none": lambda tl: np.inf,
    "median": lambda tl: float(np.median(tl)),
    "max(median, 2 x best)": lambda tl: max(float(np.median(tl)), 2.0 * float(tl.min())),
    "quantile 1/3": lambda tl: float(np.quantile(tl, 1 / 3)),
    "quantile 2/3": lambda tl: float(np.quantile(tl, 2 / 3)),
    "10 x best": lambda tl: 10.0 * float(tl.min()),
}


def kind_of(run):
    return run["kind"]


def score_keys(runs):
    order = [m["name"] for m in runs[0]["models"]]
    keys = {k for r in runs for c in r["candidates"] for k in c["scores"]}
    return sorted(keys, key=lambda k: (order.index(k.split("/")[0])
                                       if k.split("/")[0] in order else 99, k))


def low_half_rows(run, target):
    """score -> (spearman, ci) over the run's low-train-loss half."""
    return {r["score"]: (r["spearman_low"], r["spearman_low_ci"])
            for r in run["rows"] if r["target"] == target}


def print_worst_case(runs, kind, target):
    rs = [r for r in runs if kind_of(r) == kind and low_half_rows(r, target)]
    if not rs:
        return None
    per = [low_half_rows(r, target) for r in rs]
    print(f"\n### {kind}: Spearman against {target}, low-train-loss half, "
          f"{len(rs)} runs ({', '.join(sorted({r['task'] for r in rs}))})")
    print(f"{'score':24s} {'worst':>6s} {'median':>7s} {'mean':>6s} {'<0':>3s} "
          f"{'worst CI low':>12s}   per run")
    best = None
    for k in score_keys(rs):
        vals = np.array([p.get(k, (np.nan, (np.nan, np.nan)))[0] for p in per])
        lows = np.array([p.get(k, (np.nan, (np.nan, np.nan)))[1][0] for p in per])
        if not np.all(np.isfinite(vals)):
            continue
        worst = float(vals.min())
        neg = int((vals < 0).sum())
        print(f"{k:24s} {worst:+6.2f} {np.median(vals):+7.2f} {vals.mean():+6.2f} {neg:3d} "
              f"{np.nanmin(lows):+12.2f}   " + " ".join(f"{v:+.2f}" for v in vals))
        # Ties of the worst case (fit and probe often agree) go to the higher median.
        if neg == 0 and (best is None or (worst, np.median(vals)) > best[1:]):
            best = (k, worst, float(np.median(vals)))
    print(f"highest worst case, never negative: {best[0] if best else 'none'}"
          + (f" ({best[1]:+.2f})" if best else ""))
    return best[0] if best else None


def print_rules(runs, kind, key):
    rs = [r for r in runs if kind_of(r) == kind]
    if not rs or key is None:
        return
    print(f"\n### {kind}: max_train_loss rules, ranked by {key}")
    print(f"{'rule':24s} {'kept':>9s} {'worst rho':>9s} {'median rho':>10s} "
          f"{'pick/best (median, worst)':>26s}  best-of-sweep kept")
    for name, rule in RULES.items():
        kept, rhos, ratios, best_kept = [], [], [], 0
        for r in rs:
            cands = r["candidates"]
            tl = np.array([c["train_loss"] for c in cands])
            y = np.array([c["test_loss"] for c in cands])
            s = np.array([c["scores"].get(key, np.nan) for c in cands])
            keep = np.nonzero((tl <= rule(tl)) & np.isfinite(s))[0]
            kept.append(len(keep) / len(cands))
            if len(keep) >= 3:
                rhos.append(stats.spearman(s[keep], y[keep]))
            ratios.append(y[keep[int(np.argmin(s[keep]))]] / y.min())
            best_kept += int(np.argmin(y) in keep)
        rhos = np.array(rhos) if rhos else np.array([np.nan])
        print(f"{name:24s} {np.mean(kept):8.0%} {rhos.min():+9.2f} {np.median(rhos):+10.2f} "
              f"{np.median(ratios):12.3f} {max(ratios):12.3f}  {best_kept}/{len(rs)}")


def print_summary(runs):
    for kind in ("regression", "classification"):
        key = print_worst_case(runs, kind, "test_loss")
        if kind == "classification":
            print_worst_case(runs, kind, "test_error")
        print_rules(runs, kind, key)
