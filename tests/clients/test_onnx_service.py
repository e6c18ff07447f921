"""test_onnx_service: ONNX candidates end to end against the real tpvd (DESIGN.md sections 3-5).

Run by meson with Debian's /usr/bin/python3 (numpy + torch); TPVD_BIN names the daemon, started on
127.0.0.1:0 with a temporary data dir.  A CNN with batch norm and a residual MLP with LayerNorm and
GELU are exported straight with torch.onnx.export (no project exporter, no metadata: the default
parameter rule), once with float64 and once with float32 weights, and the CNN once more through
tpv_export.export_onnx.  Every noise model of one study is scored on fit and probe and compared
with float64 references computed here from per-sample, per-output autograd gradients: <= 1e-6
relative for float64 weights, <= 1e-4 for float32.  Then every refusal at submission is a 400 naming
the field and the node or tensor, a running ONNX job is canceled, and `auto` over a small flop
budget takes the output-projection Hutchinson path, and JBR on a CNN graph matches PyTorch's
autograd scores with units named by the weight initializers.
"""

import copy
import functools
import http.server
import json
import threading
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

ROOT = os.environ.get("TPV_SOURCE_ROOT") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import tpv_export  # noqa: E402
from tpv_client import Client, TPVError  # noqa: E402

N_FIT, N_PROBE = 10, 7
LR, BATCH = 0.1, 4
# Far above the small networks' exact cost (~1e7 flops), far below the wide CNN's (~1e10).
FLOP_BUDGET = "200M"


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.b2(self.c2(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class ResMLP(nn.Module):
    def __init__(self, d=6, h=10, k=3):
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.ln = nn.LayerNorm(h)
        self.hid = nn.Linear(h, h)
        self.out = nn.Linear(h, k)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.hid(nn.functional.gelu(self.ln(h)))
        return self.out(h)


def trained_looking(model):
    """Batch-norm statistics and affine parameters away from their fresh values."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def export_plain(model, x, path):
    """torch.onnx.export as a user writes it: no metadata, dynamic batch."""
    with torch.no_grad():
        torch.onnx.export(model, (x[:1],), path, opset_version=17, input_names=["input"],
                          output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return path


def grads(model, x):
    """G (n K x p) in float64 with columns per named parameter: dict name -> (n K, numel)."""
    model = copy.deepcopy(model).double().eval()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    rows = {n: [] for n in names}
    outs = []
    for i in range(x.shape[0]):
        y = model(x[i:i + 1]).reshape(-1)
        outs.append(y.detach())
        for k in range(y.numel()):
            g = torch.autograd.grad(y[k], params, retain_graph=True, allow_unused=True)
            for n, p, gi in zip(names, params, g):
                rows[n].append((gi if gi is not None else torch.zeros_like(p)).reshape(-1))
    G = {n: torch.stack(rows[n]).numpy() for n in names}
    W = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    return G, W, torch.stack(outs).numpy()


def flat(G):
    return np.concatenate([G[n] for n in sorted(G)], axis=1)


def quant_ref(G, W, bits, scope, nx):
    levels = 2.0 ** bits - 1
    sq = {n: (G[n] ** 2).sum(axis=0) for n in G}
    if scope == "global":
        allw = np.concatenate([W[n].reshape(-1) for n in W])
        d = (allw.max() - allw.min()) / levels
        return d * d / 12 * sum(v.sum() for v in sq.values()) / nx
    total = 0.0
    for n in G:
        w = W[n]
        if scope == "per_channel" and w.ndim >= 2:
            rows = w.reshape(w.shape[0], -1)
            s = sq[n].reshape(w.shape[0], -1).sum(axis=1)
            d = (rows.max(axis=1) - rows.min(axis=1)) / levels
            total += (d * d / 12 * s).sum()
        else:
            d = (w.max() - w.min()) / levels
            total += d * d / 12 * sq[n].sum()
    return total / nx


def quant_weights(W, bits, scope):
    """The per-parameter variance delta_g^2 / 12 of 8-bit rounding noise, dict name -> (numel,)."""
    levels = 2.0 ** bits - 1
    if scope == "global":
        allw = np.concatenate([W[n].reshape(-1) for n in W])
        d = (allw.max() - allw.min()) / levels
        return {n: np.full(W[n].size, d * d / 12) for n in W}
    out = {}
    for n, w in W.items():
        if scope == "per_channel" and w.ndim >= 2:
            rows = w.reshape(w.shape[0], -1)
            d = (rows.max(axis=1) - rows.min(axis=1)) / levels
            out[n] = np.repeat(d * d / 12, rows.shape[1])
        else:
            d = (w.max() - w.min()) / levels
            out[n] = np.full(w.size, d * d / 12)
    return out


def stderr_inputs_ref(G, weights, K):
    """stderr_inputs of a diagonal-family score: the per-input contributions
    c_x = sum over x's K output rows of sum_j w_j g_j^2, their sample std over sqrt(n)."""
    rows = sum((G[n] ** 2) @ weights[n] for n in G)   # one value per (sample, output) row
    c = rows.reshape(-1, K).sum(axis=1)
    return c.std(ddof=1) / np.sqrt(c.size), c.mean()


def label_ref(Jf, Jx, sigma, rcond=1e-10, ridge=0.0, ridge_rel=0.0):
    Gm = Jf @ Jf.T
    lam, Q = np.linalg.eigh(Gm)
    Kx = Jx @ Jf.T
    rho = ridge if ridge else ridge_rel * np.trace(Gm) / Gm.shape[0]
    proj = ((Kx @ Q) ** 2).sum(axis=0)
    if rho > 0:
        val = (proj / (lam + rho) ** 2).sum()
    else:
        keep = lam > rcond * lam.max()
        val = (proj[keep] / lam[keep] ** 2).sum()
    return sigma ** 2 * val


def magnitude_mask(W, fraction, scope):
    mask = {n: np.zeros_like(w) for n, w in W.items()}
    if scope == "global":
        names = sorted(n for n in W if W[n].ndim >= 2)
        allw = np.concatenate([np.abs(W[n]).reshape(-1) for n in names])
        k = int(np.floor(fraction * allw.size))
        idx = np.argsort(allw, kind="stable")[:k]
        flatm = np.zeros(allw.size)
        flatm[idx] = 1
        off = 0
        for n in names:
            mask[n] = flatm[off:off + W[n].size].reshape(W[n].shape)
            off += W[n].size
    else:
        for n, w in W.items():
            if w.ndim < 2:
                continue
            a = np.abs(w).reshape(-1)
            k = int(np.floor(fraction * a.size))
            m = np.zeros(a.size)
            m[np.argsort(a, kind="stable")[:k]] = 1
            mask[n] = m.reshape(w.shape)
    return mask


def prune_ref(G, W, mask, nx):
    dw = np.concatenate([(mask.get(n, 0 * W[n]) * W[n]).reshape(-1) for n in sorted(G)])
    return ((flat(G) @ dw) ** 2).sum() / nx


def save_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype="<f8")
        header[name] = {"dtype": "F64", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class OnnxServiceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tpv-onnx-")
        bin_ = os.environ.get("TPVD_BIN") or os.path.join(ROOT, "build", "server", "tpvd")
        port_file = os.path.join(cls.tmp, "port")
        cls.log = open(os.path.join(cls.tmp, "tpvd.log"), "w")
        cls.proc = subprocess.Popen(
            [bin_, "--listen", "127.0.0.1:0", "--port-file", port_file,
             "--data-dir", os.path.join(cls.tmp, "data"), "--workers", "2",
             "--job-flop-budget", FLOP_BUDGET, "--fetch-allow", "127.0.0.1"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if os.path.exists(port_file):
                break
            if cls.proc.poll() is not None:
                raise RuntimeError("tpvd exited: " + open(cls.log.name).read())
            time.sleep(0.05)
        with open(port_file) as f:
            cls.url = "http://127.0.0.1:%d" % int(f.read())
        cls.c = Client(cls.url)

    @classmethod
    def tearDownClass(cls):
        cls.proc.send_signal(signal.SIGTERM)
        code = cls.proc.wait(timeout=30)
        cls.log.close()
        if code != 0:
            sys.stderr.write(open(cls.log.name).read())
        shutil.rmtree(cls.tmp)
        assert code == 0, f"tpvd exited with {code}"

    def path(self, name):
        return os.path.join(self.tmp, name)

    def study_for(self, tag, model, in_shape, masks_from):
        """A study with every noise model; variances and a mask named like the model's
        parameters.  Returns (sid, fit inputs, probe inputs, noise models)."""
        torch.manual_seed(7)
        xf = torch.randn(N_FIT, *in_shape, dtype=torch.float64)
        xp = torch.randn(N_PROBE, *in_shape, dtype=torch.float64)
        np.save(self.path(tag + "_fit.npy"), xf.numpy())
        np.save(self.path(tag + "_probe.npy"), xp.numpy())
        rng = np.random.default_rng(3)
        var = {n: rng.uniform(0, 1e-3, p.shape) for n, p in masks_from.named_parameters()}
        mask = {n: (rng.uniform(size=p.shape) < 0.3).astype(np.float64)
                for n, p in masks_from.named_parameters() if p.dim() >= 2}
        save_safetensors(self.path(tag + "_var.safetensors"), var)
        save_safetensors(self.path(tag + "_mask.safetensors"), mask)
        vd = self.c.put_blob(self.path(tag + "_var.safetensors"))
        md = self.c.put_blob(self.path(tag + "_mask.safetensors"))
        models = [
            {"name": "iso", "kind": "isotropic", "sigma": 0.1},
            {"name": "qg", "kind": "quantization", "bits": 8, "scope": "global"},
            {"name": "qt", "kind": "quantization", "bits": 8, "scope": "per_tensor"},
            {"name": "qc", "kind": "quantization", "bits": 8, "scope": "per_channel"},
            {"name": "sgd", "kind": "sgd", "lr": LR, "batch_size": BATCH},
            {"name": "sgdc", "kind": "sgd_curvature", "lr": LR, "batch_size": BATCH},
            {"name": "lab", "kind": "label", "sigma": 0.1},
            {"name": "labr", "kind": "label", "sigma": 0.1, "ridge": 1e-2},
            {"name": "labrr", "kind": "label", "sigma": 0.1, "ridge_rel": 0.05},
            {"name": "labs", "kind": "label", "sigma_rel": 0.1, "ridge_rel": 0.05},
            {"name": "diag", "kind": "diagonal", "variances": vd},
            {"name": "pm", "kind": "prune", "mask": md},
            {"name": "pg", "kind": "prune", "rule": "magnitude", "fraction": 0.3,
             "scope": "global"},
            {"name": "pt", "kind": "prune", "rule": "magnitude", "fraction": 0.3,
             "scope": "per_tensor"},
        ]
        sid = self.c.create_study(tag, models, rank_by="iso")["id"]
        self.c.set_inputs(sid, "fit", self.path(tag + "_fit.npy"))
        self.c.set_inputs(sid, "probe", self.path(tag + "_probe.npy"))
        return sid, xf, xp, models, var, mask

    def references(self, model, xf, xp, models, var, mask):
        Gf, W, outf = grads(model, xf)
        Gp, _, _ = grads(model, xp)
        K = outf.shape[1]
        ref = {}
        for split, G, n in (("fit", Gf, N_FIT), ("probe", Gp, N_PROBE)):
            J = flat(G)
            fro = (J ** 2).sum()
            ref["iso", split] = 0.01 * fro / n
            for nm, sc in (("qg", "global"), ("qt", "per_tensor"), ("qc", "per_channel")):
                ref[nm, split] = quant_ref(G, W, 8, sc, n)
            ref["sgd", split] = LR / (2 * BATCH) * fro / n
            Jf = flat(Gf)
            if split == "probe":
                ref["sgdc", split] = LR / (2 * BATCH) / (n * N_FIT) * ((J @ Jf.T) ** 2).sum()
            else:
                C = Jf @ Jf.T
                tot = 0.0
                for i in range(N_FIT):
                    for j in range(N_FIT):
                        if i != j:
                            tot += (C[i * K:(i + 1) * K, j * K:(j + 1) * K] ** 2).sum()
                ref["sgdc", split] = LR / (2 * BATCH) / (N_FIT * (N_FIT - 1)) * tot
            ref["lab", split] = label_ref(Jf, J, 0.1) / n
            ref["labr", split] = label_ref(Jf, J, 0.1, ridge=1e-2) / n
            ref["labrr", split] = label_ref(Jf, J, 0.1, ridge_rel=0.05) / n
            sig = 0.1 * np.abs(outf).mean()
            ref["labs", split] = label_ref(Jf, J, sig, ridge_rel=0.05) / n
            ref["diag", split] = sum((var[nm] .reshape(-1) * (G[nm] ** 2).sum(axis=0)).sum()
                                     for nm in G) / n
            ref["pm", split] = prune_ref(G, W, mask, n)
            ref["pg", split] = prune_ref(G, W, magnitude_mask(W, 0.3, "global"), n)
            ref["pt", split] = prune_ref(G, W, magnitude_mask(W, 0.3, "per_tensor"), n)
            # stderr_inputs of the diagonal family, from per-input contributions computed here;
            # their mean must be the score itself (a check of this reference).
            ones = {nm: np.ones(W[nm].size) for nm in W}
            for nm, w in (("iso", {k: 0.01 * v for k, v in ones.items()}),
                          ("qg", quant_weights(W, 8, "global")),
                          ("qt", quant_weights(W, 8, "per_tensor")),
                          ("qc", quant_weights(W, 8, "per_channel")),
                          ("sgd", {k: LR / (2 * BATCH) * v for k, v in ones.items()}),
                          ("diag", {k: var[k].reshape(-1) for k in W})):
                se, mean = stderr_inputs_ref(G, w, K)
                assert abs(mean - ref[nm, split]) <= 1e-9 * abs(ref[nm, split]), (nm, split)
                ref["se", nm, split] = se
        return ref

    def check_candidate(self, sid, name, onnx_path, ref, rtol, parameters=None):
        t0 = time.time()
        out = self.c.add_candidate(sid, name, onnx=onnx_path, parameters=parameters)
        self.assertEqual(out["candidate"]["source"], "onnx")
        job = self.c.wait_job(out["job"]["id"], timeout=600)
        secs = time.time() - t0
        self.assertEqual(job["state"], "succeeded", job)
        cand = self.c.get_candidate(sid, out["candidate"]["id"])
        self.assertEqual(cand["source"], "onnx")
        self.assertIn("isotropic_ratio", cand["stability"])
        got = {(s["noise"], s["split"]): s for s in cand["scores"]}
        se_ref = {k[1:]: v for k, v in ref.items() if k[0] == "se"}
        ref = {k: v for k, v in ref.items() if k[0] != "se"}
        self.assertEqual(set(got), set(ref))
        # Confidence (DESIGN section 5): every exact score of a graph has stderr_inputs; the
        # diagonal family's equals the one from autograd's per-input contributions.
        for key, s in got.items():
            self.assertIsNotNone(s.get("stderr_inputs"), key)
        for key, want in se_ref.items():
            rel = abs(got[key]["stderr_inputs"] - want) / abs(want)
            self.assertLessEqual(rel, rtol, f"{name} {key} stderr_inputs: "
                                 f"{got[key]['stderr_inputs']!r} vs {want!r}")
        worst = 0.0
        for key, want in sorted(ref.items()):
            s = got[key]
            self.assertEqual(s["estimator"], "exact", key)
            self.assertGreater(abs(want), 0, key)
            rel = abs(s["value"] - want) / abs(want)
            worst = max(worst, rel)
            self.assertLessEqual(rel, rtol, f"{name} {key}: {s['value']!r} vs {want!r}")
        print(f"{name}: {len(ref)} scores, worst relative error {worst:.2e} (bound {rtol:g}), "
              f"{secs:.2f} s submit to done", file=sys.stderr)
        return cand

    def test_cnn_and_resmlp_every_noise_model(self):
        for tag, cls, shape in (("cnn", CNN, (3, 8, 8)), ("resmlp", ResMLP, (6,))):
            torch.manual_seed(0)
            m32 = trained_looking(cls())
            m64 = copy.deepcopy(m32).double()
            sid, xf, xp, models, var, mask = self.study_for(tag, m32, shape, m32)
            # float64 weights: the graph carries DOUBLE initializers and a double input.
            ref64 = self.references(m64, xf, xp, models, var, mask)
            export_plain(m64, xf, self.path(tag + "64.onnx"))
            self.check_candidate(sid, tag + "64", self.path(tag + "64.onnx"), ref64, 1e-6)
            # float32 weights: references from the same float32 values cast to float64.
            ref32 = self.references(m32, xf, xp, models, var, mask)
            export_plain(m32, xf.float(), self.path(tag + "32.onnx"))
            self.check_candidate(sid, tag + "32", self.path(tag + "32.onnx"), ref32, 1e-4)
            if tag == "cnn":
                tpv_export.export_onnx(m32, xf[:1].float(), self.path("cnn_exp.onnx"))
                self.assertFalse(m32.training)
                self.check_candidate(sid, "cnn_exported", self.path("cnn_exp.onnx"), ref32, 1e-4)
                # An explicit parameter list in the request wins over the default rule.
                names = [n for n, _ in m32.named_parameters()]
                self.check_candidate(sid, "cnn_named", self.path(tag + "32.onnx"), ref32, 1e-4,
                                     parameters=names)

    def small_graph(self, name, nodes, inits, in_shape=("batch", 6), out_shape=("batch", 3)):
        """A hand-made float64 graph input -> ... -> output (opset 17)."""
        g = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("input", TensorProto.DOUBLE,
                                                             list(in_shape))],
                              [helper.make_tensor_value_info("output", TensorProto.DOUBLE,
                                                             list(out_shape))],
                              initializer=inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        path = self.path(name + ".onnx")
        with open(path, "wb") as f:
            f.write(m.SerializeToString())
        return path

    def refused(self, sid, path, field, *words, parameters=None):
        with self.assertRaises(TPVError) as cm:
            self.c.add_candidate(sid, os.path.basename(path), onnx=path, parameters=parameters)
        e = cm.exception
        self.assertEqual((e.status, e.code), (400, "invalid_argument"), str(e))
        self.assertEqual((e.details or {}).get("field"), field, str(e))
        for w in words:
            self.assertIn(w, e.message)
        print(f"refused: {e.message}", file=sys.stderr)

    def test_refusals_name_the_field_and_the_node(self):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        xf = rng.standard_normal((N_FIT, 6))
        np.save(self.path("ref_fit.npy"), xf)
        sid = self.c.create_study("refusals", [{"name": "iso", "kind": "isotropic",
                                                "sigma": 0.1}])["id"]
        self.c.set_inputs(sid, "fit", self.path("ref_fit.npy"))
        w = numpy_helper.from_array(rng.standard_normal((6, 3)), "w")
        ok = self.small_graph("ok", [helper.make_node("MatMul", ["input", "w"], ["output"],
                                                      name="mm")], [w])
        out = self.c.add_candidate(sid, "ok", onnx=ok)
        self.assertEqual(self.c.wait_job(out["job"]["id"])["state"], "succeeded")
        # model.onnx as a URL the server fetches.
        srv = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=self.tmp))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            url = "http://127.0.0.1:%d/ok.onnx" % srv.server_address[1]
            out2 = self.c.add_candidate(sid, "ok_url", onnx={"url": url})
            self.assertEqual(out2["candidate"]["source"], "onnx")
            self.assertEqual(self.c.wait_job(out2["job"]["id"])["state"], "succeeded")
        finally:
            srv.shutdown()
        # An operator the runtime does not have, named with its node.
        self.refused(sid, self.small_graph("unknown_op", [
            helper.make_node("MatMul", ["input", "w"], ["h"], name="mm"),
            helper.make_node("Hardmax", ["h"], ["output"], name="the_hardmax")], [w]),
            "model.onnx", "Hardmax", "the_hardmax")
        # An attribute value it does not support.
        self.refused(sid, self.small_graph("bad_attr", [
            helper.make_node("MatMul", ["input", "w"], ["h"], name="mm"),
            helper.make_node("Pad", ["h", "pads"], ["output"], name="reflect_pad",
                             mode="reflect")],
            [w, numpy_helper.from_array(np.zeros(4, dtype=np.int64), "pads")]),
            "model.onnx", "reflect_pad")
        # Shapes that do not chain: (n, 6) x (5, 3).
        w5 = numpy_helper.from_array(rng.standard_normal((5, 3)), "w5")
        self.refused(sid, self.small_graph("no_chain", [
            helper.make_node("MatMul", ["input", "w5"], ["output"], name="mm_bad")], [w5]),
            "model.onnx", "mm_bad")
        # The study's input set (n, 6) against a graph that wants (n, 5).
        self.refused(sid, self.small_graph("in_shape", [
            helper.make_node("MatMul", ["input", "w5"], ["output"], name="mm5")], [w5],
            in_shape=("batch", 5)), "model.onnx", "inputs.fit", "(batch, 5)", "(10, 6)")
        # A non-finite initializer, named.
        wn = rng.standard_normal((6, 3))
        wn[2, 1] = np.nan
        self.refused(sid, self.small_graph("nan_init", [
            helper.make_node("MatMul", ["input", "w_nan"], ["output"], name="mm")],
            [numpy_helper.from_array(wn, "w_nan")]), "model.onnx", "w_nan")
        # External data, said so.
        we = numpy_helper.from_array(rng.standard_normal((6, 3)), "w_ext")
        we.ClearField("raw_data")
        we.data_location = TensorProto.EXTERNAL
        loc = we.external_data.add()
        loc.key, loc.value = "location", "weights.bin"
        self.refused(sid, self.small_graph("ext_data", [
            helper.make_node("MatMul", ["input", "w_ext"], ["output"], name="mm")], [we]),
            "model.onnx", "w_ext", "external")
        # A parameter name that is not a float initializer of the graph.
        self.refused(sid, ok, "model.parameters", "model.parameters", "'nope'",
                     parameters=["nope"])
        self.refused(sid, ok, "model.parameters", parameters=[])
        # model.onnx must be a blob.
        with self.assertRaises(TPVError) as cm:
            self.c._request("POST", f"/v1/studies/{sid}/candidates",
                            {"name": "x", "model": {"onnx": "sha256:" + "0" * 64}})
        self.assertEqual(cm.exception.details.get("field"), "model.onnx")

    def wide_cnn_study(self, tag, n, models):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
        x = torch.randn(n, 3, 32, 32)
        np.save(self.path(tag + "_fit.npy"), x.numpy())
        export_plain(model, x, self.path(tag + ".onnx"))
        sid = self.c.create_study(tag, models)["id"]
        self.c.set_inputs(sid, "fit", self.path(tag + "_fit.npy"))
        return sid, model, x

    def test_jbr_on_an_onnx_cnn_matches_pytorch(self):
        """POST .../jbr on an ONNX candidate (was a 409): units named by the weight initializers,
        scores as tests/torch/onnx_jbr.py computes them by autograd."""
        sys.path.insert(0, os.path.join(ROOT, "tests", "torch"))
        import onnx_jbr
        torch.manual_seed(4)
        net = onnx_jbr.ChainCNN().double().eval()
        onnx_jbr.sharpen(net.fc2, 40.0)
        x = torch.randn(21, 3, 8, 8, dtype=torch.float64)
        np.save(self.path("jbr_fit.npy"), x.numpy())
        sid = self.c.create_study("jbr", [{"name": "iso", "kind": "isotropic",
                                           "sigma": 0.1}])["id"]
        self.c.set_inputs(sid, "fit", self.path("jbr_fit.npy"))
        with torch.no_grad():
            torch.onnx.export(onnx_jbr.Plain(net), (x[:1],), self.path("jbr.onnx"),
                              opset_version=17, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                              training=torch.onnx.TrainingMode.PRESERVE,
                              do_constant_folding=False)
        out = self.c.add_candidate(sid, "cnn", onnx=self.path("jbr.onnx"))
        self.assertEqual(self.c.wait_job(out["job"]["id"])["state"], "succeeded")
        for conf, batch in ((0.0, 4), (0.97, 5)):
            want, units, kept = onnx_jbr.jbr(net, x, conf, batch)
            job = self.c.jbr(sid, out["candidate"]["id"], confidence=conf, batch_size=batch)["job"]
            job = self.c.wait_job(job["id"])
            self.assertEqual(job["state"], "succeeded", job)
            res = job["result"]
            self.assertEqual(res["kept_samples"], kept)
            names = [(u["layer"], u["index"]) for u in res["units"]]
            self.assertEqual(names, [("net." + n, j) for n, c in units for j in range(c)])
            got = np.array([u["score"] for u in res["units"]])
            np.testing.assert_allclose(got, want, rtol=1e-9)
            self.assertEqual([ly["layer"] for ly in res["layers"]],
                             ["net.c1.weight", "net.c2.weight", "net.fc1.weight"])
            print(f"jbr confidence {conf}: {len(got)} units, {kept} kept", file=sys.stderr)

    def test_openapi_describes_onnx_candidates(self):
        spec = self.c._request("GET", "/openapi.json")[2]
        schemas = spec["components"]["schemas"]
        model = schemas["CandidateCreate"]["properties"]["model"]["properties"]
        self.assertIn("onnx", model)
        self.assertEqual(model["parameters"]["type"], "array")
        self.assertIn("onnx", schemas["Candidate"]["properties"]["source"]["enum"])

    def test_cancel_a_running_onnx_job(self):
        sid, _, _ = self.wide_cnn_study("cancel", 400, [
            {"name": "iso", "kind": "isotropic", "sigma": 0.1, "estimator": "exact"}])
        out = self.c.add_candidate(sid, "wide", onnx=self.path("cancel.onnx"))
        jid = out["job"]["id"]
        deadline = time.time() + 120
        job = self.c.get_job(jid)
        while (job["state"] != "running" or job["progress"] <= 0) and time.time() < deadline:
            self.assertIn(job["state"], ("queued", "running"), job)
            time.sleep(0.05)
            job = self.c.get_job(jid)
        self.assertEqual(job["state"], "running")
        self.assertGreater(job["progress"], 0)
        self.assertLess(job["progress"], 1)
        self.c.cancel_job(jid)
        job = self.c.wait_job(jid, timeout=60)
        self.assertEqual(job["state"], "canceled", job)
        cand = self.c.get_candidate(sid, out["candidate"]["id"])
        self.assertEqual(cand["state"], "canceled")
        self.assertEqual(cand["scores"], [])

    def test_auto_takes_the_projected_path_over_the_budget(self):
        sid, model, x = self.wide_cnn_study("auto", 48, [
            {"name": "iso", "kind": "isotropic", "sigma": 1.0, "target_rel_error": 0.05,
             "seed": 5},
            {"name": "qc", "kind": "quantization", "bits": 8, "scope": "per_channel",
             "target_rel_error": 0.05, "seed": 5}])
        t0 = time.time()
        out = self.c.add_candidate(sid, "wide", onnx=self.path("auto.onnx"))
        job = self.c.wait_job(out["job"]["id"], timeout=600)
        self.assertEqual(job["state"], "succeeded", job)
        cand = self.c.get_candidate(sid, out["candidate"]["id"])
        G, W, _ = grads(model, x.double())
        want = (flat(G) ** 2).sum() / x.shape[0]
        for s in cand["scores"]:
            self.assertEqual(s["estimator"], "hutchinson", s)
            self.assertGreater(s["samples"], 0)
            self.assertGreater(s["stderr"], 0)
        iso = next(s for s in cand["scores"] if s["noise"] == "iso")
        qc = next(s for s in cand["scores"] if s["noise"] == "qc")
        want_qc = quant_ref(G, W, 8, "per_channel", x.shape[0])
        # Unbiased with a reported standard error: the exact value within 5 of them.
        self.assertLess(abs(iso["value"] - want), 5 * iso["stderr"] + 1e-9 * want)
        self.assertLess(abs(qc["value"] - want_qc), 5 * qc["stderr"] + 1e-9 * want_qc)
        print(f"auto: hutchinson iso {iso['value']:.6g} +- {iso['stderr']:.2g} (exact "
              f"{want:.6g}, {iso['samples']} samples), {time.time() - t0:.2f} s",
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
