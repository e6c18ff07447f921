#!/usr/bin/python3
"""test_python_upload: the Python client's uploads and waits against the real tpvd.

A daemon with a 4 KiB --max-blob: an upload of 8 MiB must raise the server's 413
payload_too_large (before this client sent Expect: 100-continue it wrote the whole body into a
closed connection and raised "cannot reach ...: Broken pipe"); an upload within the limit stores
the blob; wait_all waits for several jobs at once and names the ones still running when it gives
up.  TPVD_BIN names the daemon.
"""
import os
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.environ.get("TPV_SOURCE_ROOT") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from tpv_client import Client, TPVError, sha256_file  # noqa: E402


class Daemon:
    def __init__(self, *flags):
        self.tmp = tempfile.TemporaryDirectory()
        port_file = os.path.join(self.tmp.name, "port")
        self.log = open(os.path.join(self.tmp.name, "tpvd.log"), "w")
        self.proc = subprocess.Popen(
            [os.environ["TPVD_BIN"], "--listen", "127.0.0.1:0", "--data-dir",
             os.path.join(self.tmp.name, "data"), "--port-file", port_file, *flags],
            stderr=self.log)
        deadline = time.monotonic() + 20
        while not (os.path.exists(port_file) and os.path.getsize(port_file)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("tpvd did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            self.url = f"http://127.0.0.1:{f.read().strip()}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()
        self.tmp.cleanup()


class UploadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--max-blob", "4K")
        cls.c = Client(cls.d.url)

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def write(self, size):
        f = tempfile.NamedTemporaryFile(delete=False)
        f.write(os.urandom(size))
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_refused_upload_raises_the_servers_error(self):
        path = self.write(8 << 20)
        with self.assertRaises(TPVError) as cm:
            self.c.put_blob(path)
        self.assertEqual(cm.exception.status, 413, cm.exception)
        self.assertEqual(cm.exception.code, "payload_too_large")
        self.assertIn("--max-blob", cm.exception.message)
        self.assertFalse(self.c.has_blob("sha256:" + sha256_file(path)))

    def test_upload_within_the_limit_is_stored(self):
        path = self.write(3000)
        seen = []
        digest = self.c.put_blob(path, progress=lambda done, total: seen.append((done, total)))
        self.assertEqual(digest, "sha256:" + sha256_file(path))
        self.assertTrue(self.c.has_blob(digest))
        self.assertEqual(seen[-1], (3000, 3000))
        # A second upload is skipped after HEAD and returns the same digest.
        self.assertEqual(self.c.put_blob(path), digest)

    def test_wait_all(self):
        q = os.path.join(ROOT, "examples", "quickstart")
        big = Daemon()  # the quickstart files are over this daemon's 4 KiB blob limit
        self.addCleanup(big.stop)
        c = Client(big.url)
        sid = c.create_study("wait-all", [{"name": "iso", "kind": "isotropic", "sigma": 0.01}])["id"]
        c.set_inputs(sid, "fit", os.path.join(q, "x_fit.npy"))
        jobs = []
        for name in ("mlp-w8-d1-wd0", "mlp-w32-d1-wd0", "mlp-w32-d2-wd0"):
            r = c.add_candidate(sid, name, spec=os.path.join(q, name, "spec.json"),
                                weights=os.path.join(q, name, "weights.safetensors"))
            jobs.append(r["job"]["id"])
        done = c.wait_all(jobs + jobs[:1], timeout=120)
        self.assertEqual(sorted(done), sorted(jobs))
        self.assertTrue(all(j["state"] == "succeeded" for j in done.values()), done)
        self.assertEqual(c.wait_all([]), {})
        with self.assertRaises(TPVError) as cm:
            self.c.wait_all(["jb_0000000000000000"], timeout=1)
        self.assertEqual(cm.exception.status, 404)


if __name__ == "__main__":
    unittest.main(verbosity=2)
