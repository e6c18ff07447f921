"""test_python_client: clients/python (tpv_export + tpv_client) against the real tpvd.

Run by meson with Debian's /usr/bin/python3 (numpy + torch); TPVD_BIN names the daemon, which this
test starts on 127.0.0.1:0 with a temporary data dir.  It exports three tiny nn.Sequential models
(spec + safetensors) and one non-sequential nn.Module as a Jacobian dump, submits them with the
client (the same weights uploaded twice: the second upload is skipped after HEAD), waits for the
jobs, reads the ranking (ETag, then 304), and checks every isotropic TPV against
sigma^2/n sum_i ||J(x_i)||_F^2 computed here with torch autograd in float64, to 1e-6 relative.
It also fetches a weights blob by URL from a local http.server and verifies a signed webhook the
way README.md shows.  Errors must raise TPVError with the server's code.
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
RTOL = 1e-6


def iso_tpv(model, x):
    """sigma^2 / n * sum_i ||d f(x_i) / d w||_F^2 in float64, one backward per output."""
    model = model.double().eval()
    params = [p for p in model.parameters()]
    x = torch.as_tensor(x, dtype=torch.float64)
    total = 0.0
    for i in range(x.shape[0]):
        y = model(x[i:i + 1]).reshape(-1)
        for k in range(y.numel()):
            grads = torch.autograd.grad(y[k], params, retain_graph=True, allow_unused=True)
            total += sum(float((g * g).sum()) for g in grads if g is not None)
    return SIGMA ** 2 * total / x.shape[0]


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
    """A webhook receiver verifying X-TPV-Signature as README.md shows."""
    secret = b""
    events = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        want = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, self.headers.get("X-TPV-Signature", ""))
        assert ok == tpv_client.verify_webhook(self.secret.decode(), body,
                                               self.headers.get("X-TPV-Signature"))
        assert not tpv_client.verify_webhook(self.secret, body + b" ",
                                             self.headers.get("X-TPV-Signature"))
        Receiver.events.append((self.headers.get("X-TPV-Event"), self.headers.get("X-TPV-Event-Id"),
                                ok, json.loads(body)))
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


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
        study = c.create_study("pyclient", [{"name": "iso", "kind": "isotropic", "sigma": SIGMA}],
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
            want[name] = {"fit": iso_tpv(net64, x_fit64), "probe": iso_tpv(net64, x_probe64)}

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
        want["skipnet"] = {"fit": iso_tpv(skip64, x_fit64.float().double()),
                           "probe": iso_tpv(skip64, x_probe64.float().double())}

        for jid in jobs:
            job = c.wait_job(jid, timeout=120)
            self.assertEqual(job["state"], "succeeded", job)

        by_name = {cand["name"]: cand for cand in c.list_candidates(sid)}
        self.assertEqual(set(by_name), set(want))
        for name, splits in want.items():
            for s in by_name[name]["scores"]:
                if s["noise"] == "iso":
                    ref = splits[s["split"]]
                    self.assertLessEqual(abs(s["value"] - ref), RTOL * abs(ref),
                                         f"{name} {s['split']}: {s['value']} vs torch {ref}")

        ranking = c.ranking(sid)
        self.assertEqual(ranking["split"], "probe")
        values = [it["value"] for it in ranking["items"]]
        self.assertEqual(values, sorted(values))
        self.assertEqual(len(values), len(want))
        self.assertTrue(ranking["etag"])
        self.assertIsNone(c.ranking(sid, etag=ranking["etag"]))  # 304

        # Signed webhooks, verified as README.md shows.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            kinds = {e[0] for e in Receiver.events}
            if {"job.succeeded", "ranking.changed"} <= kinds:
                break
            time.sleep(0.05)
        self.assertTrue(Receiver.events)
        self.assertTrue(all(e[2] for e in Receiver.events), Receiver.events)
        self.assertIn("ranking.changed", {e[0] for e in Receiver.events})
        self.assertTrue(all(e[1] == e[3]["id"] for e in Receiver.events))

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
