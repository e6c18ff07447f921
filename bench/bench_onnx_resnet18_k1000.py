#!/usr/bin/python3
"""A torchvision ResNet-18 with K = 1000 outputs at 3x64x64 through the real daemon (issue #11).

    /usr/bin/python3 bench/bench_onnx_resnet18_k1000.py [--tpvd build/server/tpvd] [--n 32]
        [--max-job-memory 8G] [--threads 2] [--dir /tmp/r18k]

Exports torchvision's resnet18 (num_classes 1000, fresh weights, batch norm with randomized
running statistics so that inference mode is not the identity) straight with torch.onnx.export
(opset 17, dynamic batch, training=PRESERVE, do_constant_folding=False), starts tpvd (one worker,
--threads per job, --max-job-memory, the default flop budget), creates a study with isotropic and
8-bit per-channel quantization noise (method auto, the default), uploads n fit and n probe inputs
and the model with the Python client, waits for the job and prints its wall time, the daemon's
peak RSS (VmHWM), the plan `auto` chose and every score with its standard error.  Exact sqdiag
costs about n (F + 2 K F) per split, far beyond the default 1 TFLOP budget at K = 1000, so `auto`
must take the output-projection Hutchinson path.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients",
                                "python"))
from tpv_client import Client  # noqa: E402


def export(path, gen):
    model = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    torch.onnx.export(model, x, path, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return sum(p.numel() for p in model.parameters())


def start_daemon(a, data):
    port_file = os.path.join(data, "port")
    cmd = [a.tpvd, "--listen", "127.0.0.1:0", "--data-dir", data, "--port-file", port_file,
           "--workers", "1", "--threads-per-job", str(a.threads), "--max-job-memory",
           a.max_job_memory, "--max-blob", "1G", "--log-level", "warn"]
    proc = subprocess.Popen(cmd)
    for _ in range(600):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return proc, int(open(port_file).read().strip())
        if proc.poll() is not None:
            sys.exit("tpvd exited with %d" % proc.returncode)
        time.sleep(0.1)
    proc.terminate()
    sys.exit("tpvd did not start")


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tpvd", default="build/server/tpvd")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-job-memory", default="8G")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()
    work = a.dir or tempfile.mkdtemp(prefix="r18k")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "var")
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    gen = torch.Generator().manual_seed(0)
    onnx_path = os.path.join(work, "resnet18_k1000.onnx")
    p = export(onnx_path, gen)
    for split in ("fit", "probe"):
        np.save(os.path.join(work, "x_%s.npy" % split),
                torch.randn(a.n, 3, 64, 64, generator=gen).numpy())
    proc, port = start_daemon(a, data)
    try:
        c = Client("http://127.0.0.1:%d" % port)
        sid = c.create_study("resnet18-k1000", [
            {"name": "iso", "kind": "isotropic", "sigma": 0.01},
            {"name": "q8", "kind": "quantization", "bits": 8, "scope": "per_channel"}],
            rank_by="iso")["id"]
        c.set_inputs(sid, "fit", os.path.join(work, "x_fit.npy"))
        c.set_inputs(sid, "probe", os.path.join(work, "x_probe.npy"))
        t0 = time.time()
        ans = c.add_candidate(sid, "resnet18", onnx=onnx_path)
        jid, cid = ans["job"]["id"], ans["candidate"]["id"]
        peak = 0
        last = -1.0
        while True:
            job = c.get_job(jid)
            peak = max(peak, vm_hwm(proc.pid))
            frac = job.get("progress", {}).get("fraction", 0) if isinstance(
                job.get("progress"), dict) else job.get("progress", 0)
            if frac is not None and frac - last >= 0.05:
                print("%7.1f s  %s  progress %.2f" % (time.time() - t0, job["state"], frac),
                      flush=True)
                last = frac
            if job["state"] in ("succeeded", "failed", "canceled"):
                break
            if time.time() - t0 > a.timeout:
                c.cancel_job(jid)
                sys.exit("timeout")
            time.sleep(1.0)
        wall = time.time() - t0
        peak = max(peak, vm_hwm(proc.pid))
        cand = c.get_candidate(sid, cid)
        print(json.dumps({"job": job, "candidate": cand}, indent=1)[:20000])
        print("resnet18 K=1000 3x64x64, n=%d fit + %d probe, p=%d: state %s, %.1f s wall, daemon "
              "peak RSS %.2f GiB (--max-job-memory %s), load average %s"
              % (a.n, a.n, p, job["state"], wall, peak / 2**30, a.max_job_memory,
                 open("/proc/loadavg").read().split()[:3]))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
