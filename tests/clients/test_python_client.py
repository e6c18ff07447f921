"""test_python_client: clients/python (tpv_export + tpv_client) against the real tpvd.

Run by meson with Debian's /usr/bin/python3 (numpy + torch); TPVD_BIN names the daemon, which this
test starts on 127.0.0.1:0 with a temporary data dir.  It exports three tiny nn.Sequential models
(spec + safetensors) and one non-sequential nn.Module as a Jacobian dump, submits them with the
client (the same weights uploaded twice: the second upload is skipped after HEAD), waits for the
jobs, reads the ranking (ETag, then 304), and checks that every candidate has exactly one score
per (noise model, split), each equal to its closed form from sum_i ||J(x_i)||_F^2 / n computed here
with torch autograd in float64 (isotropic sigma^2 times it, sgd lr/(2 batch_size) times it), to
1e-6 relative.  It also fetches a weights blob by URL from a local http.server and verifies signed
webhooks the way README.md shows: the receiver thread only records what it saw, the test asserts.
Metrics put with set_metrics (merge, None removes, non-finite refused locally) and the agreement
report checked against Spearman / Kendall tau-b computed here (ties from the shared weights).
Errors must raise TPVError with the server's code.
"""

import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import numpy as np
import torch

ROOT = os.environ.get("TPV_SOURCE_ROOT") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import tpv_client  # noqa: E402
import tpv_export  # noqa: E402
from tpv_client import Client, TPVError  # noqa: E402

SIGMA = 0.05
SGD_LR, SGD_BATCH = 0.1, 4
NOISE_MODELS = [{"name": "iso", "kind": "isotropic", "sigma": SIGMA},
                {"name": "sgd", "kind": "sgd", "lr": SGD_LR, "batch_size": SGD_BATCH}]
# TPV of each noise model = factor * sum_i ||J(x_i)||_F^2 / n (DESIGN.md section 3).
FACTORS = {"iso": SIGMA ** 2, "sgd": SGD_LR / (2 * SGD_BATCH)}
RTOL = 1e-6


def jac_sq_per_sample(model, x):
    """sum_i ||d f(x_i) / d w||_F^2 / n in float64, one backward per output."""
    model = model.double().eval()
    params = [p for p in model.parameters()]
    x = torch.as_tensor(x, dtype=torch.float64)
    total = 0.0
    for i in range(x.shape[0]):
        y = model(x[i:i + 1]).reshape(-1)
        for k in range(y.numel()):
            grads = torch.autograd.grad(y[k], params, retain_graph=True, allow_unused=True)
            total += sum(float((g * g).sum()) for g in grads if g is not None)
    return total / x.shape[0]


def expected_scores(model, x_fit, x_probe):
    """{(noise model, split): value} for every noise model of the study on both splits."""
    per = {"fit": jac_sq_per_sample(model, x_fit), "probe": jac_sq_per_sample(model, x_probe)}
    return {(nm, split): f * v for nm, f in FACTORS.items() for split, v in per.items()}


class SkipNet(torch.nn.Module):
    """Not a sequential spec: a residual branch."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(5, 7)
        self.b = torch.nn.Linear(7, 3)
        self.skip = torch.nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))) + self.skip(x)


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver verifying X-TPV-Signature as README.md shows.  It runs on the server's
    thread, where a failed assert would only be printed: it records what it saw in `events` and the
    test asserts on them."""
    secret = b""
    events = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        sig = self.headers.get("X-TPV-Signature", "")
        want = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, sig)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        event = {
            "event": self.headers.get("X-TPV-Event"),
            "event_id": self.headers.get("X-TPV-Event-Id"),
            "hmac_ok": ok,
            "client_ok": tpv_client.verify_webhook(self.secret.decode(), body, sig),
            "client_ok_tampered": tpv_client.verify_webhook(self.secret, body + b" ", sig),
            "payload": payload,
        }
        with Receiver.lock:
            Receiver.events.append(event)
        self.send_response(204 if ok else 401)
        self.end_headers()

    @classmethod
    def seen(cls):
        with cls.lock:
            return list(cls.events)

    def log_message(self, *args):
        pass


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def spearman(x, y):
    """Pearson correlation of average ranks (ties share the mean of their positions)."""
    def ranks(v):
        return [sum(b < a for b in v) + (sum(b == a for b in v) + 1) / 2 for a in v]
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return sxy / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def kendall_tau_b(x, y):
    n, c, d, tx, ty = len(x), 0, 0, 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            sx, sy = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
            tx += sx == 0
            ty += sy == 0
            c += sx * sy > 0
            d += sx * sy < 0
    p = n * (n - 1) / 2
    return (c - d) / ((p - tx) * (p - ty)) ** 0.5


def serve(handler):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tpv-pyclient-")
        bin_ = os.environ.get("TPVD_BIN") or os.path.join(ROOT, "build", "server", "tpvd")
        port_file = os.path.join(cls.tmp, "port")
        cls.log = open(os.path.join(cls.tmp, "tpvd.log"), "w")
        cls.proc = subprocess.Popen(
            [bin_, "--listen", "127.0.0.1:0", "--port-file", port_file,
             "--data-dir", os.path.join(cls.tmp, "data"), "--workers", "2",
             "--fetch-allow", "127.0.0.1", "--webhook-backoff-ms", "100"],
            stdout=cls.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if os.path.exists(port_file):
                break
            if cls.proc.poll() is not None:
                raise RuntimeError("tpvd exited: " + open(cls.log.name).read())
            time.sleep(0.05)
        with open(port_file) as f:
            cls.url = "http://127.0.0.1:%d" % int(f.read())
        cls.files = serve(lambda *a, **k: Files(*a, directory=cls.tmp, **k))
        cls.receiver = serve(Receiver)

    @classmethod
    def tearDownClass(cls):
        cls.files.shutdown()
        cls.receiver.shutdown()
        cls.proc.send_signal(signal.SIGTERM)
        code = cls.proc.wait(timeout=30)
        cls.log.close()
        if code != 0:
            sys.stderr.write(open(cls.log.name).read())
        shutil.rmtree(cls.tmp)
        assert code == 0, f"tpvd exited with {code}"

    def test_flow(self):
        torch.manual_seed(0)
        c = Client(self.url)
        calls = []
        request = c._request

        def recording(method, path, *a, **k):
            out = request(method, path, *a, **k)
            calls.append((method, path, out[0]))
            return out
        c._request = recording

        x_fit = torch.randn(12, 5)
        x_probe = torch.randn(8, 5)
        fit_path = os.path.join(self.tmp, "x_fit.npy")
        probe_path = os.path.join(self.tmp, "x_probe.npy")
        tpv_export.save_inputs(x_fit, fit_path)
        tpv_export.save_inputs(x_probe, probe_path)
        x_fit64 = torch.as_tensor(np.load(fit_path), dtype=torch.float64)
        x_probe64 = torch.as_tensor(np.load(probe_path), dtype=torch.float64)

        nets = {
            "relu-w8": torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(),
                                           torch.nn.Linear(8, 3)),
            "tanh-w16": torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(),
                                            torch.nn.Linear(16, 3)),
            "gelu-d2": torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.GELU(),
                                           torch.nn.Linear(6, 6), torch.nn.Softplus(),
                                           torch.nn.Linear(6, 3)),
        }
        Receiver.secret = b""
        study = c.create_study("pyclient", NOISE_MODELS,
                               webhook_url="http://127.0.0.1:%d/hook" % self.receiver.server_port)
        Receiver.secret = study["webhook_secret"].encode()
        sid = study["id"]
        c.set_inputs(sid, "fit", fit_path)
        c.set_inputs(sid, "probe", probe_path)

        want, jobs = {}, []
        for name, net in nets.items():
            spec, weights = tpv_export.export_sequential(net, os.path.join(self.tmp, name), [5])
            jobs.append(c.add_candidate(sid, name, spec=spec, weights=weights,
                                        metadata={"train_loss": 0.01})["job"]["id"])
            net64 = torch.nn.Sequential(*[m for m in net]).double()
            want[name] = expected_scores(net64, x_fit64, x_probe64)

        # The same weights again: HEAD finds the blob, nothing is uploaded.
        spec, weights = os.path.join(self.tmp, "relu-w8", "spec.json"), \
            os.path.join(self.tmp, "relu-w8", "weights.safetensors")
        digest = "sha256:" + tpv_client.sha256_file(weights)
        calls.clear()
        jobs.append(c.add_candidate(sid, "relu-w8-again", spec=spec, weights=weights)["job"]["id"])
        self.assertIn(("HEAD", "/v1/blobs/" + digest, 200), calls)
        self.assertFalse([m for m in calls if m[0] == "PUT"], calls)
        want["relu-w8-again"] = want["relu-w8"]

        # The same weights by URL: fetched by the server from the local file server.
        url = "http://127.0.0.1:%d/relu-w8/weights.safetensors" % self.files.server_port
        jobs.append(c.add_candidate(sid, "relu-w8-url", spec=spec,
                                    weights={"url": url})["job"]["id"])
        want["relu-w8-url"] = want["relu-w8"]

        # Any nn.Module: a per-parameter Jacobian dump.
        skip = SkipNet()
        jf = tpv_export.export_jacobian(skip, x_fit64.float(), os.path.join(self.tmp, "jf.st"))
        jp = tpv_export.export_jacobian(skip, x_probe64.float(), os.path.join(self.tmp, "jp.st"))
        jobs.append(c.add_candidate(sid, "skipnet", jacobian_fit=jf, jacobian_probe=jp)["job"]["id"])
        skip64 = SkipNet()
        skip64.load_state_dict(skip.state_dict())
        want["skipnet"] = expected_scores(skip64, x_fit64.float().double(),
                                          x_probe64.float().double())

        for jid in jobs:
            job = c.wait_job(jid, timeout=120)
            self.assertEqual(job["state"], "succeeded", job)

        by_name = {cand["name"]: cand for cand in c.list_candidates(sid)}
        self.assertEqual(set(by_name), set(want))
        for name, expected in want.items():
            scores = by_name[name]["scores"]
            got = {(s["noise"], s["split"]): s["value"] for s in scores}
            self.assertEqual(len(got), len(scores), f"{name}: a (noise, split) twice: {scores}")
            self.assertEqual(set(got), set(expected), f"{name}: scores {scores}")
            for key, ref in expected.items():
                self.assertLessEqual(abs(got[key] - ref), RTOL * abs(ref),
                                     f"{name} {key}: {got[key]} vs torch {ref}")

        ranking = c.ranking(sid)
        self.assertEqual(ranking["split"], "probe")
        values = [it["value"] for it in ranking["items"]]
        self.assertEqual(values, sorted(values))
        self.assertEqual(len(values), len(want))
        self.assertTrue(ranking["etag"])
        self.assertIsNone(c.ranking(sid, etag=ranking["etag"]))  # 304
        # The client takes the gzip coding of a ranking over a kilobyte and inflates it.
        status, rh, body = c._request("GET", f"/v1/studies/{sid}/ranking")
        self.assertEqual(rh.get("Content-Encoding"), "gzip")
        self.assertEqual(rh.get("ETag"), ranking["etag"])
        self.assertEqual(body, {k: v for k, v in ranking.items() if k != "etag"})

        # Metrics and the agreement report: val_loss follows the iso probe ranking except one
        # swap; Spearman and Kendall computed here must match, the interval holds the estimate.
        order = sorted(by_name, key=lambda n: [s["value"] for s in by_name[n]["scores"]
                                               if s["noise"] == "iso" and s["split"] == "probe"][0])
        val = {name: 0.1 + 0.05 * r for r, name in enumerate(order)}
        val[order[0]], val[order[1]] = val[order[1]], val[order[0]]
        for name in order:
            cand = c.set_metrics(sid, by_name[name]["id"], val_loss=np.float64(val[name]),
                                 note=1)
            self.assertEqual(cand["metrics"], {"val_loss": val[name], "note": 1})
        cand = c.set_metrics(sid, by_name[order[0]]["id"], {"note": None, "val/acc": 0.5})
        self.assertEqual(cand["metrics"], {"val_loss": val[order[0]], "val/acc": 0.5})
        with self.assertRaises(ValueError):
            c.set_metrics(sid, by_name[order[0]]["id"], val_loss=float("nan"))
        with self.assertRaises(ValueError):
            c.set_metrics(sid, by_name[order[0]]["id"], val_loss="0.3")
        report = c.agreement(sid, "val_loss")
        items = {(it["noise"], it["split"]): it for it in report["items"]}
        self.assertEqual([(it["noise"], it["split"]) for it in report["items"]],
                         [("iso", "fit"), ("iso", "probe"), ("sgd", "fit"), ("sgd", "probe")])
        it = items[("iso", "probe")]
        self.assertEqual(it["n"], len(order))
        # Three candidates share the relu-w8 weights: tied scores, average ranks.
        x = [[s["value"] for s in by_name[n]["scores"]
              if s["noise"] == "iso" and s["split"] == "probe"][0] for n in order]
        y = [val[n] for n in order]
        self.assertAlmostEqual(it["spearman"], spearman(x, y), places=12)
        self.assertAlmostEqual(it["kendall"], kendall_tau_b(x, y), places=12)
        self.assertLessEqual(it["ci"][0], it["spearman"])
        self.assertLessEqual(it["spearman"], it["ci"][1])
        best = max((x for x in report["items"] if x["ci"] and x["ci"][0] > 0),
                   key=lambda x: x["ci"][0], default=None)
        self.assertEqual(report["recommended"],
                         best and {"noise": best["noise"], "split": best["split"]})
        with self.assertRaises(TPVError) as e:
            c.agreement(sid, "val_los")
        self.assertEqual(e.exception.code, "not_found")
        self.assertIn("val_loss", e.exception.message)

        # Signed webhooks, verified as README.md shows: what the receiver recorded, checked here.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if {"job.succeeded", "ranking.changed"} <= {e["event"] for e in Receiver.seen()}:
                break
            time.sleep(0.05)
        events = Receiver.seen()
        self.assertTrue(events)
        self.assertLessEqual({"job.succeeded", "ranking.changed"}, {e["event"] for e in events})
        for e in events:
            self.assertTrue(e["hmac_ok"], e)
            self.assertTrue(e["client_ok"], e)
            self.assertFalse(e["client_ok_tampered"], e)
            self.assertIsNotNone(e["payload"], e)
            self.assertEqual(e["event_id"], e["payload"]["id"], e)

    def test_lifecycle(self):
        """Delete, retry and blob delete through the client, against the daemon."""
        c = Client(self.url)
        sid = c.create_study("life", [{"name": "iso", "kind": "isotropic", "sigma": 0.1}])["id"]
        good, bad = os.path.join(self.tmp, "life-good.npy"), os.path.join(self.tmp, "life-bad.npy")
        np.save(good, np.arange(12, dtype=np.float64).reshape(4, 3) / 10)
        nan = np.ones((4, 3))
        nan[2, 1] = np.nan
        np.save(bad, nan)
        ok = c.add_candidate(sid, "ok", jacobian_fit=good)
        broken = c.add_candidate(sid, "broken", jacobian_fit=bad)
        self.assertEqual(c.wait_job(ok["job"]["id"], timeout=60)["state"], "succeeded")
        self.assertEqual(c.wait_job(broken["job"]["id"], timeout=60)["state"], "failed")

        # A failed candidate gets a new job; a succeeded one is refused.
        again = c.retry_candidate(sid, broken["candidate"]["id"])
        self.assertNotEqual(again["job"]["id"], broken["job"]["id"])
        self.assertEqual(c.wait_job(again["job"]["id"], timeout=60)["state"], "failed")
        with self.assertRaises(TPVError) as e:
            c.retry_candidate(sid, ok["candidate"]["id"])
        self.assertEqual((e.exception.status, e.exception.code), (409, "failed_precondition"))

        # A blob in use cannot go; once its candidate is deleted it can.
        digest = "sha256:" + tpv_client.sha256_file(good)
        with self.assertRaises(TPVError) as e:
            c.delete_blob(digest)
        self.assertEqual(e.exception.status, 409)
        self.assertIn(ok["candidate"]["id"], e.exception.message)
        c.delete_candidate(sid, ok["candidate"]["id"])
        with self.assertRaises(TPVError) as e:
            c.get_candidate(sid, ok["candidate"]["id"])
        self.assertEqual(e.exception.status, 404)
        c.delete_blob(digest)
        self.assertFalse(c.has_blob(digest))
        again_ok = c.add_candidate(sid, "ok", jacobian_fit=good)  # the name is free again
        self.assertEqual(again_ok["candidate"]["name"], "ok")

        c.delete_study(sid)
        with self.assertRaises(TPVError) as e:
            c.get_study(sid)
        self.assertEqual(e.exception.status, 404)

    def test_errors(self):
        c = Client(self.url)
        with self.assertRaises(TPVError) as e:
            c.create_study("bad", [{"name": "x", "kind": "no-such-kind"}])
        self.assertEqual(e.exception.code, "invalid_argument")
        self.assertEqual(e.exception.status, 400)
        with self.assertRaises(TPVError) as e:
            c.get_job("jb_0000000000000000")
        self.assertEqual(e.exception.code, "not_found")
        sid = c.create_study("errs", [{"name": "iso", "kind": "isotropic", "sigma": 0.1}])["id"]
        with self.assertRaises(TPVError) as e:
            c.add_candidate(sid, "far", jacobian_fit={"url": "http://example.invalid/j.npy"})
        self.assertEqual(e.exception.code, "permission_denied")
        self.assertIn("example.invalid", e.exception.message)
        with self.assertRaises(TPVError) as e:
            Client("http://127.0.0.1:1", timeout=2).list_studies()
        self.assertEqual(e.exception.code, "unavailable")


if __name__ == "__main__":
    unittest.main(verbosity=2)
