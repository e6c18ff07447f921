#!/usr/bin/python3
"""run.py: how well does each TPV score pick models?  Trains sweeps (tasks.py), submits them to a
running tpvd through the Python client, and prints, for every noise model and split, Spearman and
Kendall against test loss (and test error for classification) with 95 % bootstrap intervals, over
all candidates and over the low-train-loss half, and the test loss of each score's pick against
the best candidate's.

    /usr/bin/python3 bench/selection/run.py                    # every task, seeds 0 to 3
    /usr/bin/python3 bench/selection/run.py --task digits --seeds 0 1 2 --out /tmp/sel
    /usr/bin/python3 bench/selection/run.py --reuse --summary  # worst case over saved runs

Talks to $TPV_URL (default http://127.0.0.1:8080) or, when none answers, starts a temporary tpvd
from ./build.  Scores and train/test numbers are saved to --out/<task>-seed<k>.json; --reuse
re-prints a saved run without training or scoring.  Run by hand, never in CI (minutes of CPU).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import stats  # noqa: E402
import summary  # noqa: E402
import tasks  # noqa: E402
import tpv_export  # noqa: E402
from tpv_client import Client  # noqa: E402

# Every noise model worth comparing.  Label noise appears in its three forms: absolute sigma
# (scale-dependent), a scale-free ridge, and sigma relative to the logit scale (the reference
# code's convention; only where the server supports sigma_rel).
NOISE_MODELS = [
    {"name": "iso", "kind": "isotropic", "sigma": 0.01},
    {"name": "q8", "kind": "quantization", "bits": 8, "scope": "per_channel"},
    {"name": "sgd", "kind": "sgd", "lr": 0.01, "batch_size": 32},
    {"name": "sgdc", "kind": "sgd_curvature", "lr": 0.01, "batch_size": 32},
    {"name": "label", "kind": "label", "sigma": 0.1},
    {"name": "label_rr03", "kind": "label", "sigma": 0.1, "ridge_rel": 0.03},
    {"name": "label_rr10", "kind": "label", "sigma": 0.1, "ridge_rel": 0.1},
]
SIGMA_REL_MODELS = [
    {"name": "label_srel", "kind": "label", "sigma_rel": 0.1},
    {"name": "label_srel_rr10", "kind": "label", "sigma_rel": 0.1, "ridge_rel": 0.1},
]


def start_daemon():
    """A temporary tpvd on a free port; returns (url, process, tmpdir)."""
    tpvd = os.environ.get("TPVD_BIN", os.path.join(ROOT, "build", "server", "tpvd"))
    tmp = tempfile.mkdtemp(prefix="tpv-selection-")
    log = open(os.path.join(tmp, "tpvd.log"), "w")
    # One worker with one BLAS thread: the trainer uses the other core (the benchmark shares a
    # small machine; more threads would only make both sides wait on each other).
    proc = subprocess.Popen([tpvd, "--listen", "127.0.0.1:0", "--data-dir",
                             os.path.join(tmp, "data"), "--port-file",
                             os.path.join(tmp, "port"), "--workers", "1",
                             "--blas-threads", "1"], stderr=log)
    port_file = os.path.join(tmp, "port")
    for _ in range(200):
        if os.path.exists(port_file) and os.path.getsize(port_file) > 0:
            break
        time.sleep(0.05)
    with open(port_file) as f:
        url = f"http://127.0.0.1:{f.read().strip()}"
    print(f"started a temporary tpvd at {url} (log {tmp}/tpvd.log)", file=sys.stderr)
    return url, proc, tmp


def reachable(url):
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def submit_sweep(client, task, seed, models, workdir):
    """Trains the sweep and submits every candidate; returns the run (scores not yet in) and the
    job ids.  The daemon scores while the next sweep trains."""
    sid = client.create_study(f"selection-{task.name}-seed{seed}-{int(time.time())}", models,
                              rank_by="label_rr10")["id"]
    d = os.path.join(workdir, f"{task.name}-seed{seed}")
    os.makedirs(d, exist_ok=True)
    tpv_export.save_inputs(task.fit.x, os.path.join(d, "x_fit.npy"))
    tpv_export.save_inputs(task.probe.x, os.path.join(d, "x_probe.npy"))
    client.set_inputs(sid, "fit", os.path.join(d, "x_fit.npy"))
    client.set_inputs(sid, "probe", os.path.join(d, "x_probe.npy"))
    records, jobs = [], []
    for name, net, res in tasks.sweep(task, seed):
        spec, weights = tpv_export.export_sequential(net, os.path.join(d, name), [task.d])
        r = client.add_candidate(sid, name, spec=spec, weights=weights,
                                 metadata={"train_loss": res["train_loss"]})
        jobs.append(r["job"]["id"])
        records.append({"name": name, "candidate_id": r["candidate"]["id"], **res})
        print(f"  {task.name} seed {seed} {name:22s} train {res['train_loss']:.4g} "
              f"test {res['test_loss']:.4g}", file=sys.stderr)
    run = {"task": task.name, "kind": task.kind, "seed": seed, "study_id": sid,
           "models": models, "candidates": records}
    return run, jobs


def collect_scores(client, run, jobs):
    """Waits for the run's jobs and fills in every candidate's scores and details."""
    for jid in jobs:
        job = client.wait_job(jid, timeout=3600)
        if job["state"] != "succeeded":
            raise SystemExit(f"job {jid} {job['state']}: {job.get('error')}")
    for rec in run["candidates"]:
        cand = client.get_candidate(run["study_id"], rec["candidate_id"])
        rec["scores"] = {f"{s['noise']}/{s['split']}": s["value"] for s in cand["scores"]}
        rec["details"] = {f"{s['noise']}/{s['split']}": s.get("details", {})
                          for s in cand["scores"]}
    return run


def fmt_ci(v, ci):
    return f"{v:+.2f} [{ci[0]:+.2f},{ci[1]:+.2f}]"


def report(run):
    """Prints the table of one run; returns its rows (for RESULTS.md)."""
    cands = run["candidates"]
    keys = sorted({k for c in cands for k in c["scores"]},
                  key=lambda k: ([m["name"] for m in run["models"]].index(k.split("/")[0]), k))
    # test_error: classification runs (a run rebuilt from a progress log may lack it).
    targets = ["test_loss"] + (["test_error"] if run["kind"] == "classification" and
                               all("test_error" in c for c in cands) else [])
    tl = np.array([c["train_loss"] for c in cands])
    low = stats.low_train_loss_half(tl)
    print(f"\n## {run['task']} seed {run['seed']}: {len(cands)} candidates, "
          f"low-train-loss half {len(low)} (train loss <= {np.median(tl):.3g})")
    hdr = f"{'score':22s} {'target':10s} {'spearman all':24s} {'spearman low half':24s} " \
          f"{'kendall low half':24s} {'pick test loss (best)':22s}"
    print(hdr)
    rows = []
    for k in keys:
        s = np.array([c["scores"].get(k, np.nan) for c in cands])
        ok = np.isfinite(s)
        for t in targets:
            y = np.array([c[t] for c in cands])
            lo = np.array([i for i in low if ok[i]])
            sa = stats.spearman(s[ok], y[ok])
            sa_ci = stats.bootstrap_ci(s[ok], y[ok], stats.spearman)
            sl = stats.spearman(s[lo], y[lo])
            sl_ci = stats.bootstrap_ci(s[lo], y[lo], stats.spearman)
            kl = stats.kendall(s[lo], y[lo])
            kl_ci = stats.bootstrap_ci(s[lo], y[lo], stats.kendall)
            pick, best = stats.pick_regret(s[lo], y[lo])
            print(f"{k:22s} {t:10s} {fmt_ci(sa, sa_ci):24s} {fmt_ci(sl, sl_ci):24s} "
                  f"{fmt_ci(kl, kl_ci):24s} {pick:.4g} ({best:.4g})")
            rows.append({"score": k, "target": t, "spearman_all": sa, "spearman_all_ci": sa_ci,
                         "spearman_low": sl, "spearman_low_ci": sl_ci, "kendall_low": kl,
                         "kendall_low_ci": kl_ci, "pick": pick, "best": best})
    return rows


def supports_sigma_rel(client):
    """Whether the server accepts label noise with sigma_rel (asks by creating a probe study)."""
    try:
        client.create_study(f"selection-probe-{int(time.time())}", SIGMA_REL_MODELS[:1])
        return True
    except Exception:  # noqa: BLE001 (any refusal means no)
        return False


def load_run(out, name, seed):
    with open(os.path.join(out, f"{name}-seed{seed}.json")) as f:
        return json.load(f)


def save_run(out, run):
    with open(os.path.join(out, f"{run['task']}-seed{run['seed']}.json"), "w") as f:
        json.dump(run, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=list(tasks.TASKS) + ["all"], nargs="+", default=["all"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "tpv-selection"))
    ap.add_argument("--reuse", action="store_true", help="re-print saved runs")
    ap.add_argument("--summary", action="store_true",
                    help="also print the worst case over runs per task type, and the "
                         "max_train_loss rules")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = list(tasks.TASKS) if "all" in args.task else args.task
    os.makedirs(args.out, exist_ok=True)

    proc = None
    client = None
    if not args.reuse:
        url = os.environ.get("TPV_URL", "http://127.0.0.1:8080")
        if not reachable(url):
            url, proc, _ = start_daemon()
        client = Client(url, timeout=120)
    runs = []
    try:
        models = list(NOISE_MODELS)
        if client is not None and supports_sigma_rel(client):
            models += SIGMA_REL_MODELS
        pending = []
        for name in names:
            for seed in args.seeds:
                if args.reuse:
                    try:
                        runs.append(load_run(args.out, name, seed))
                    except FileNotFoundError:
                        print(f"no saved run {name} seed {seed}", file=sys.stderr)
                else:
                    pending.append(submit_sweep(client, tasks.make_task(name, seed), seed,
                                                models, args.out))
        for run, jobs in pending:
            runs.append(collect_scores(client, run, jobs))
            save_run(args.out, run)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    for run in runs:
        run["rows"] = report(run)
        save_run(args.out, run)
    if args.summary:
        summary.print_summary(runs)


if __name__ == "__main__":
    main()
