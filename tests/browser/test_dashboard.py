"""test_dashboard: the built-in dashboard (/ui/) in headless chromium against the real tpvd.

Run by meson with Debian's /usr/bin/python3; TPVD_BIN names the daemon, TPV_ARTIFACT_DIR the
folder (in the build dir) the screenshots and the render timing go to.  The page is driven over
the WebDriver protocol (tests/browser/webdriver.py, chromium-driver).

A study of the six quickstart MLPs in two runs of three epochs, with max_train_loss in its
metadata so that the widest-loss MLP is underfit: the ranking table lists the candidates in the
API's order, each plot has a mark per candidate, the runs are drawn with their peaks, the underfit
candidate is flagged and marked; a candidate added while the page is open appears without a
reload, within a second of its job ending, with never more than one request in flight; a
500-candidate study renders (time reported); and once a token exists the page asks for it.

JBR: a JBR job submitted for one MLP candidate shows in its detail, its units by rank.

Confidence and agreement: every ranked row shows the API's stderr_inputs and, but on the last,
p_lower_than_next (two decimals, a cue when 0.05 < p < 0.95); metrics put on the candidates
(PUT .../metrics) while the page is open bring the agreement table without a reload, its rows
and recommended mark those of GET agreement, for each metric of the selector; its button ranks
by the recommended noise model and split.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("TPV_SOURCE_ROOT") or os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, HERE)

from tpv_client import Client  # noqa: E402
from webdriver import Browser  # noqa: E402

QS = os.path.join(ROOT, "examples", "quickstart")


def write_npy(path, n, p):
    """A float64 .npy of shape (n, p) with reproducible values in [-1, 1) (an LCG)."""
    hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d, %d), }" % (n, p)
    hdr += " " * (64 - (10 + len(hdr) + 1) % 64) + "\n"
    s, vals = 12345, []
    for _ in range(n * p):
        s = (s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        vals.append((s >> 11) / float(1 << 52) - 1.0)
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
        f.write(struct.pack("<%dd" % len(vals), *vals))
ART = os.environ.get("TPV_ARTIFACT_DIR") or tempfile.mkdtemp(prefix="tpv-ui-artifacts-")
MAX_TRAIN_LOSS = 0.1
NOISE = [{"name": "iso", "kind": "isotropic", "sigma": 0.01},
         {"name": "label", "kind": "label", "sigma": 0.1, "ridge_rel": 0.05}]


def quickstart_models():
    """(name, train_loss) of the quickstart MLPs, in candidates.tsv order."""
    out = []
    with open(os.path.join(QS, "candidates.tsv")) as f:
        next(f)
        for line in f:
            name, train, _ = line.rstrip("\n").split("\t")
            out.append((name, float(train)))
    return out


# Counts the page's requests in flight (window.fetch is looked up at each call, so wrapping it
# after load sees every later request of the page).
WRAP_FETCH = """
window.__inflight = 0; window.__maxInflight = 0; window.__requests = 0; window.__urls = [];
const orig = window.fetch;
window.fetch = function (...a) {
  window.__inflight++; window.__requests++; window.__urls.push(String(a[0]));
  window.__maxInflight = Math.max(window.__maxInflight, window.__inflight);
  return orig.apply(this, a).finally(() => { window.__inflight--; });
};
window.__noReload = 'kept';
return true;
"""


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(ART, exist_ok=True)
        cls.tmp = tempfile.mkdtemp(prefix="tpv-ui-")
        cls.data = os.path.join(cls.tmp, "data")
        bin_ = os.environ.get("TPVD_BIN") or os.path.join(ROOT, "build", "server", "tpvd")
        cls.bin = bin_
        port_file = os.path.join(cls.tmp, "port")
        cls.log = open(os.path.join(cls.tmp, "tpvd.log"), "w")
        cls.proc = subprocess.Popen(
            [bin_, "--listen", "127.0.0.1:0", "--port-file", port_file, "--data-dir", cls.data,
             "--workers", "2"], stdout=cls.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if os.path.exists(port_file) and os.path.getsize(port_file):
                break
            if cls.proc.poll() is not None:
                raise RuntimeError("tpvd exited: " + open(cls.log.name).read())
            time.sleep(0.05)
        with open(port_file) as f:
            cls.url = "http://127.0.0.1:%d" % int(f.read())
        cls.client = Client(cls.url)
        cls.models = quickstart_models()
        cls.sid, cls.names = cls.make_runs_study()
        cls.browser = Browser()

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.proc.send_signal(signal.SIGTERM)
        code = cls.proc.wait(timeout=30)
        cls.log.close()
        if code != 0:
            sys.stderr.write(open(cls.log.name).read())
        shutil.rmtree(cls.tmp)
        assert code == 0, "tpvd exited with %d" % code

    @classmethod
    def add_model(cls, sid, model, name, metadata):
        d = os.path.join(QS, model)
        return cls.client.add_candidate(sid, name, spec=os.path.join(d, "spec.json"),
                                        weights=os.path.join(d, "weights.safetensors"),
                                        metadata=metadata)

    @classmethod
    def make_study(cls, name, noise, metadata=None):
        st = cls.client.create_study(name, noise, metadata=metadata)
        cls.client.set_inputs(st["id"], "fit", os.path.join(QS, "x_fit.npy"))
        cls.client.set_inputs(st["id"], "probe", os.path.join(QS, "x_probe.npy"))
        return st["id"]

    @classmethod
    def make_runs_study(cls):
        sid = cls.make_study("mlp-runs", NOISE, {"max_train_loss": MAX_TRAIN_LOSS})
        jobs, names = [], []
        for i, (model, train) in enumerate(cls.models):
            run, epoch = ("run-a", i + 1) if i < 3 else ("run-b", i - 2)
            meta = {"train_loss": train, "run": run, "epoch": epoch, "width": model}
            jobs.append(cls.add_model(sid, model, model, meta)["job"]["id"])
            names.append(model)
        done = cls.client.wait_all(jobs, timeout=300)
        for job in done.values():
            assert job["state"] == "succeeded", job
        return sid, names

    def ranking(self, sid):
        return self.client.ranking(sid, max_train_loss=MAX_TRAIN_LOSS)

    def open_study(self, sid):
        b = self.browser
        b.get(self.url + "/ui/studies/" + sid)
        b.wait_for("return document.body.getAttribute('data-version')", 20)

    def shot(self, name):
        return self.browser.screenshot(os.path.join(ART, name))

    def test_a_study_page(self):
        b, sid = self.browser, self.sid
        self.open_study(sid)
        rk = self.ranking(sid)
        rows = b.execute("return [...document.querySelectorAll('#ranking tbody tr')]"
                         ".map(r => r.getAttribute('data-candidate-id'))")
        self.assertEqual(rows, [it["candidate_id"] for it in rk["items"]])
        self.assertGreaterEqual(len(rows), 4)
        # The underfit MLP (train loss above the threshold) is apart, flagged, marked.
        under = [it for it in rk["excluded"] if "underfit" in it["flags"]]
        self.assertEqual([it["name"] for it in under],
                         [m for m, t in self.models if t > MAX_TRAIN_LOSS])
        ex = b.execute("return [...document.querySelectorAll('#excluded tbody tr')].map(r => "
                       "[r.getAttribute('data-candidate-id'), r.querySelector('.flag.underfit') !== null])")
        self.assertEqual(ex, [[it["candidate_id"], True] for it in under])
        marks = b.execute("""
            const q = (s) => [...document.querySelectorAll(s)].map(m => m.getAttribute('data-candidate-id'));
            return {loss: q('#plot-loss .mark'), under: q('#plot-loss .mark.underfit'),
                    runs: q('#plot-runs .mark'), peaks: q('#plot-runs .mark.peak'),
                    groups: [...document.querySelectorAll('#plot-runs .run-group')].map(g => g.getAttribute('data-run')),
                    stab: q('#plot-stability .mark'), diag: document.querySelectorAll('#plot-stability .diag').length,
                    thr: document.querySelectorAll('#plot-loss .threshold').length,
                    titles: [...document.querySelectorAll('#plot-loss .mark title')].length,
                    xl: document.querySelector('#plot-loss .x-label').textContent,
                    yl: document.querySelector('#plot-loss .y-label').textContent};""")
        every = sorted(it["candidate_id"] for it in rk["items"] + rk["excluded"])
        self.assertEqual(sorted(marks["loss"]), every)
        self.assertEqual(marks["under"], [it["candidate_id"] for it in under])
        self.assertEqual(sorted(marks["runs"]), every)
        self.assertEqual(sorted(marks["groups"]), ["run-a", "run-b"])
        self.assertEqual(sorted(marks["peaks"]),
                         sorted(t["peak_candidate_id"] for t in rk["trajectories"]))
        self.assertEqual(sorted(marks["stab"]), every)
        self.assertEqual((marks["diag"], marks["thr"], marks["titles"]), (1, 1, len(every)))
        self.assertIn("train loss", marks["xl"])
        self.assertIn("TPV", marks["yl"])
        # No candidate has metrics: the agreement card stays hidden (it slots in once they do).
        self.assertTrue(b.execute("return document.getElementById('card-agreement').hidden"))
        self.shot("study.png")

        # A candidate's detail: click its mark.
        cid = rk["items"][0]["candidate_id"]
        b.execute("document.querySelector('#plot-loss .mark[data-candidate-id=\"' + arguments[0] + '\"]')"
                  ".dispatchEvent(new MouseEvent('click', {bubbles: true}))", cid)
        detail = b.wait_for("const d = document.getElementById('detail'); return d && "
                            "d.textContent.includes('succeeded') && d.textContent", 10)
        cand = self.client.get_candidate(sid, cid)
        self.assertIn(cand["name"], detail)
        nscores = b.execute("return document.querySelectorAll('#detail-scores tbody tr').length")
        self.assertEqual(nscores, len(cand["scores"]))
        self.assertEqual(len(cand["scores"]), 4)  # two noise models, fit and probe
        self.shot("study-detail.png")

        # Live: a candidate added while the page is open appears without a reload.
        b.execute(WRAP_FETCH)
        time.sleep(0.5)  # the page is now in its long-poll
        acc = self.add_model(sid, "mlp-w32-d2-wd0", "late-arrival",
                             {"train_loss": 0.01, "run": "run-b", "epoch": 4})
        job = self.client.wait_job(acc["job"]["id"], timeout=120, poll=0.02)
        self.assertEqual(job["state"], "succeeded")
        t0 = time.monotonic()
        b.wait_for("return [...document.querySelectorAll('#ranking tbody tr .name')]"
                   ".some(td => td.textContent === 'late-arrival')", 10, 0.02)
        latency = time.monotonic() - t0
        state = b.execute("return [window.__noReload, window.__maxInflight, window.__requests, "
                          "document.querySelectorAll('#plot-loss .mark').length]")
        self.assertEqual(state[0], "kept")  # no reload
        self.assertEqual(state[1], 1)  # one request in flight, never two
        self.assertEqual(state[3], len(every) + 1)
        # Nothing the page did was blocked by its Content-Security-Policy (it counts violations).
        self.assertIsNone(b.execute("return document.documentElement.getAttribute('data-csp-violations')"))
        # ... and the policy is in force: an inline style attribute is refused and counted.
        b.execute("document.getElementById('main').setAttribute('style', 'color: red'); return 1")
        self.assertEqual(b.wait_for("return document.documentElement.getAttribute("
                                    "'data-csp-violations')", 5), "1")
        self.assertLess(latency, 1.0, "page updated %.3f s after the job ended" % latency)
        self.shot("study-live.png")
        with open(os.path.join(ART, "live.json"), "w") as f:
            json.dump({"update_after_job_end_s": latency, "requests": state[2]}, f)
        print("live update %.3f s after the job ended, %d requests" % (latency, state[2]))

    def ranking_cells(self):
        """Per ranking row: candidate id, stderr_inputs (text, data-value), p_lower_than_next
        (text, data-value, whether the within-sampling-error cue is on)."""
        return self.browser.execute("""
            return [...document.querySelectorAll('#ranking tbody tr')].map(r => {
              const si = r.querySelector('td.stderr-inputs'), p = r.querySelector('td.p-next');
              return [r.getAttribute('data-candidate-id'), si.textContent, si.getAttribute('data-value'),
                      p.textContent, p.getAttribute('data-value'), p.classList.contains('close'),
                      fmt(Number(si.getAttribute('data-value')))];
            });""")

    def assert_ranking_confidence(self, rk):
        """The ranking table shows the API's stderr_inputs on every item and p_lower_than_next
        (two decimals, the cue exactly when 0.05 < p < 0.95) on every item but the last."""
        cells = self.ranking_cells()
        items = rk["items"]
        self.assertEqual([c[0] for c in cells], [it["candidate_id"] for it in items])
        for k, (it, c) in enumerate(zip(items, cells)):
            si = it["stderr_inputs"]
            self.assertIsInstance(si, float, it)  # MLPs on iso/label: split by input
            self.assertGreater(si, 0.0)
            self.assertEqual(float(c[2]), si)
            self.assertEqual(c[1], c[6])  # the page's number format, not a dash
            p = it["p_lower_than_next"]
            if k == len(items) - 1:
                self.assertIsNone(p)
                self.assertEqual((c[3], c[4], c[5]), ("\u2013", None, False))
                continue
            self.assertIsInstance(p, float, it)
            self.assertTrue(0.0 <= p <= 1.0, p)
            self.assertEqual(float(c[4]), p)
            self.assertEqual(c[3].split()[0], "%.2f" % p)
            self.assertEqual(c[5], 0.05 < p < 0.95)

    def agreement_rows(self):
        return self.browser.execute("""
            return [...document.querySelectorAll('#agreement tbody tr')].map(r => [
              r.getAttribute('data-noise'), r.getAttribute('data-split'),
              r.querySelector('.n').textContent, r.querySelector('.spearman').getAttribute('data-value'),
              r.querySelector('.kendall').getAttribute('data-value'), r.querySelector('.ci').textContent,
              r.classList.contains('recommended'), r.querySelector('.flag.recommended') !== null]);""")

    def assert_agreement(self, ag):
        """The agreement table has GET agreement's rows, in its order, the recommended marked."""
        b = self.browser
        rows = self.agreement_rows()
        rec = ag["recommended"]
        want = []
        for it in ag["items"]:
            ci = ("[%s, %s]" % tuple(b.execute("return fmtOr(arguments[0])", v) for v in it["ci"])
                  if it["ci"] is not None else "\u2013")  # no interval (n too small)
            mark = bool(rec) and (it["noise"], it["split"]) == (rec["noise"], rec["split"])
            want.append([it["noise"], it["split"], str(it["n"]),
                         it["spearman"], it["kendall"], ci, mark, mark])
        got = [[r[0], r[1], r[2], None if r[3] is None else float(r[3]),
                None if r[4] is None else float(r[4]), r[5], r[6], r[7]] for r in rows]
        self.assertEqual(got, want)
        self.assertEqual(b.execute("return document.getElementById('sel-metric').value"), ag["metric"])

    def test_ab_confidence_agreement(self):
        b, sid = self.browser, self.sid
        self.open_study(sid)
        rk = self.ranking(sid)
        self.assertGreaterEqual(len(rk["items"]), 3)
        self.assert_ranking_confidence(rk)
        self.assertTrue(b.execute("return document.getElementById('card-agreement').hidden"))
        b.execute(WRAP_FETCH)
        time.sleep(0.5)  # in the long-poll

        # Metrics on the candidates, through PUT .../metrics, while the page is open: val_loss on
        # every candidate follows the label noise model's probe TPV (so some model agrees), acc
        # on three of them.
        label = {it["candidate_id"]: it["value"] for it in
                 self.client.ranking(sid, by="label", split="probe")["items"]}
        every = rk["items"] + rk["excluded"]
        for k, it in enumerate(every):
            cid = it["candidate_id"]
            m = {"val_loss": label.get(cid, 1.0) * 1.5 + 0.001 * k}
            if k < 3:
                m["acc"] = 0.9 - 0.05 * k
            self.client.set_metrics(sid, cid, m)
        ag = self.client.agreement(sid, "acc")  # the first key in name order
        self.assertIsNotNone(ag["items"])
        b.wait_for("return !document.getElementById('card-agreement').hidden && "
                   "document.querySelectorAll('#agreement tbody tr').length === arguments[0] && "
                   "document.body.getAttribute('data-version') === String(arguments[1])", 10, 0.05,
                   len(ag["items"]), self.client.get_study(sid)["version"])
        self.assert_agreement(ag)
        self.assertEqual(b.execute("return [...document.querySelectorAll('#sel-metric option')]"
                                   ".map(o => o.value)"), ["acc", "val_loss"])

        # Another metric: the table is GET agreement?metric=val_loss's, still without a reload.
        b.execute("const s = document.getElementById('sel-metric'); s.value = 'val_loss';"
                  "s.dispatchEvent(new Event('change')); return 1")
        ag = self.client.agreement(sid, "val_loss")
        b.wait_for("return document.getElementById('sel-metric').value === 'val_loss' && "
                   "document.querySelectorAll('#agreement tbody tr').length === arguments[0]",
                   10, 0.05, len(ag["items"]))
        self.assert_agreement(ag)
        rec = ag["recommended"]
        self.assertIsNotNone(rec, ag)  # val_loss follows label/probe: some interval is above 0
        self.shot("study-agreement.png")
        b.execute("document.getElementById('card-agreement').scrollIntoView(); return 1")
        self.shot("agreement.png")
        b.execute("window.scrollTo(0, 0); return 1")

        # The button ranks by the recommended noise model and split.
        b.click(b.find("#use-recommended"))
        want = self.client.ranking(sid, by=rec["noise"], split=rec["split"],
                                   max_train_loss=MAX_TRAIN_LOSS)
        b.wait_for("return document.getElementById('sel-by').value === arguments[0] && "
                   "document.getElementById('sel-split').value === arguments[1] && "
                   "[...document.querySelectorAll('#ranking tbody tr')].map(r => "
                   "r.getAttribute('data-candidate-id')).join() === arguments[2]", 10, 0.05,
                   rec["noise"], rec["split"], ",".join(it["candidate_id"] for it in want["items"]))
        self.assertTrue(b.execute("return document.getElementById('use-recommended').disabled"))
        self.assert_ranking_confidence(want)
        self.assertTrue(b.execute("return document.querySelector('#agreement tr.recommended')"
                                  ".classList.contains('current')"))
        state = b.execute("return [window.__noReload, window.__maxInflight]")
        self.assertEqual(state, ["kept", 1])

        # A candidate's detail: every score with its stderr_inputs, and its metrics.
        cid = want["items"][0]["candidate_id"]
        b.execute("document.querySelector('#ranking tr[data-candidate-id=\"' + arguments[0] + '\"]')"
                  ".click(); return 1", cid)
        b.wait_for("return document.getElementById('detail-metrics') !== null", 10)
        cand = self.client.get_candidate(sid, cid)
        si = b.execute("return [...document.querySelectorAll('#detail tbody td.stderr-inputs')]"
                       ".map(td => Number(td.getAttribute('data-value')))")
        self.assertEqual(si, [x["stderr_inputs"] for x in cand["scores"]])
        metrics = b.execute("return [...document.querySelectorAll('#detail-metrics dt')].map(d => d.textContent)")
        self.assertEqual(sorted(metrics), sorted(cand["metrics"]))
        self.shot("study-confidence-detail.png")
        # Back to the study's own ranking for the tests after this one.
        b.get(self.url + "/ui/studies/" + sid)

    def jbr_rows(self):
        return self.browser.execute("""
            return [...document.querySelectorAll('#jbr-units tbody tr')].map(r => [
              Number(r.querySelector('.rank').textContent), r.querySelector('.layer').textContent,
              Number(r.querySelector('.index').textContent),
              Number(r.querySelector('.score').getAttribute('data-value'))]);""")

    def select_row(self, cid):
        self.browser.execute("document.querySelector('#card-ranking tr[data-candidate-id=\"' + "
                             "arguments[0] + '\"], #card-excluded tr[data-candidate-id=\"' + "
                             "arguments[0] + '\"]').click(); return 1", cid)

    def test_ac_jbr_detail(self):
        """A candidate's JBR results in its detail: "none" without a JBR job; a JBR job submitted
        while the page shows the candidate appears with the next version (one GET of the job),
        its state and its units by rank, lowest score first, the first 50 with a note of how
        many there are; a job not over when read is followed until it ends."""
        b, sid = self.browser, self.sid
        rk = self.ranking(sid)
        by_name = {it["name"]: it["candidate_id"] for it in rk["items"] + rk["excluded"]}
        cid = by_name["mlp-w64-d2-wd0.1"]  # two hidden layers of 64: more units than shown
        other = by_name["mlp-w32-d1-wd0"]
        self.assertEqual(self.client.get_candidate(sid, cid)["jbr_jobs"], [])
        b.get(self.url + "/ui/studies/" + sid + "?candidate=" + cid)
        # The page's own address with a selection (a reload, a shared link) is the page.
        b.wait_for("const d = document.getElementById('detail-jbr'); return d && "
                   "d.textContent === 'JBRnone'", 20)
        b.execute(WRAP_FETCH)
        time.sleep(0.5)  # in the long-poll

        acc = self.client.jbr(sid, cid, confidence=0)
        job = self.client.wait_job(acc["job"]["id"], timeout=120, poll=0.05)
        self.assertEqual(job["state"], "succeeded", job)
        jobs = self.client.get_candidate(sid, cid)["jbr_jobs"]
        self.assertEqual([(j["id"], j["state"]) for j in jobs], [(job["id"], "succeeded")])
        units, order = job["result"]["units"], job["result"]["order"]
        self.assertGreater(len(order), 50)
        self.assertEqual(sorted(order), list(range(len(units))))
        # A JBR job moves no study version: the next one (a metric changed) brings it.
        self.client.set_metrics(sid, other, {"val_loss": 0.123})
        n = b.wait_for("return document.querySelectorAll('#jbr-units tbody tr').length", 10, 0.05)
        self.assertEqual(n, 50)
        rows = self.jbr_rows()
        want = [[k + 1, units[u]["layer"], units[u]["index"], units[u]["score"]]
                for k, u in enumerate(order[:50])]
        self.assertEqual(rows, want)
        self.assertEqual(rows[0][1], units[order[0]]["layer"])
        scores = [r[3] for r in rows]
        self.assertEqual(scores, sorted(scores))  # lowest first
        info = b.execute("const d = document.getElementById('detail-jbr'); return "
                         "[d.getAttribute('data-job-id'), d.getAttribute('data-state'), "
                         "document.getElementById('jbr-note').getAttribute('data-units'), "
                         "document.getElementById('jbr-note').textContent]")
        self.assertEqual(info[:3], [job["id"], "succeeded", str(len(order))])
        self.assertIn("of %d units" % len(order), info[3])
        urls = b.execute("return window.__urls")
        self.assertEqual(sum(u == "/v1/jobs/" + job["id"] for u in urls), 1, urls)
        b.execute("document.getElementById('detail-jbr').scrollIntoView(); return 1")
        self.shot("study-jbr.png")

        # Another candidate has none; back on this one, its JBR job is read again (one GET).
        self.select_row(other)
        b.wait_for("const d = document.getElementById('detail-jbr'); return d && "
                   "d.textContent === 'JBRnone' && "
                   "document.getElementById('detail').textContent.includes(arguments[0])", 10,
                   0.05, "mlp-w32-d1-wd0")
        self.select_row(cid)
        b.wait_for("return document.querySelectorAll('#jbr-units tbody tr').length === 50", 10, 0.05)
        self.assertEqual(self.jbr_rows(), want)
        state = b.execute("return [window.__noReload, window.__maxInflight, window.__urls]")
        self.assertEqual(state[:2], ["kept", 1])
        self.assertEqual(sum(u == "/v1/jobs/" + job["id"] for u in state[2]), 2, state[2])

        # A JBR job that is not over when the page reads it is followed until it ends, though it
        # moves no version of this study: queued behind two slow jobs of another study that hold
        # both workers (exact unridged label TPV of a 4000 x 64 dump: an eigendecomposition of
        # seconds), canceled once the page has shown it queued.
        filler = self.client.create_study("jbr-filler", [{"name": "lab", "kind": "label",
                                                          "sigma": 0.1, "estimator": "exact"}])
        dump = os.path.join(self.tmp, "slow-dump.npy")
        write_npy(dump, 4000, 64)
        fill = [self.client.add_candidate(filler["id"], "slow%d" % i,
                                          jacobian_fit=dump)["job"]["id"] for i in range(2)]
        for jid in fill:
            for _ in range(600):
                if self.client.get_job(jid)["state"] == "running":
                    break
                time.sleep(0.02)
        acc = self.client.jbr(sid, cid, confidence=0)
        self.client.set_metrics(sid, other, {"val_loss": 0.124})  # brings the new job's id
        version = self.client.get_study(sid)["version"]
        t0 = time.monotonic()
        seen = b.wait_for("const d = document.getElementById('detail-jbr'); return d && "
                          "d.getAttribute('data-job-id') === arguments[0] && "
                          "d.getAttribute('data-state')", 10, 0.02, acc["job"]["id"])
        for jid in fill:
            self.client.cancel_job(jid)
        self.assertIn(seen, ["queued", "running"])  # read before it ended
        b.wait_for("const d = document.getElementById('detail-jbr'); return "
                   "d.getAttribute('data-state') === 'succeeded' && "
                   "document.querySelectorAll('#jbr-units tbody tr').length === 50", 120, 0.05)
        followed = time.monotonic() - t0
        job2 = self.client.get_job(acc["job"]["id"])
        self.assertEqual(job2["state"], "succeeded")
        self.assertEqual(self.client.get_study(sid)["version"], version)  # no version moved
        self.assertEqual(self.jbr_rows(), want)  # same model, same inputs, same scores
        self.assertEqual(b.execute("return window.__maxInflight"), 1)
        print("JBR job followed: seen %s, shown succeeded %.2f s later" % (seen, followed))
        self.assertEqual({j["state"] for j in self.client.wait_all(fill, timeout=60).values()},
                         {"canceled"})
        b.get(self.url + "/ui/studies/" + sid)

    def test_b_study_list(self):
        b = self.browser
        b.get(self.url + "/ui/")
        row = b.wait_for("const r = document.querySelector('#studies tr[data-study-id=\"' + "
                         "arguments[0] + '\"]'); return r && r.children[4].textContent && "
                         "[...r.children].map(c => c.textContent)", 10, 0.05, self.sid)
        rk = self.ranking(self.sid)
        study = self.client.get_study(self.sid)
        self.assertEqual(row[0], "mlp-runs")
        n = len(rk["items"]) + len(rk["excluded"]) + len(rk["pending"])
        self.assertEqual(row[1], str(n))
        self.assertEqual(row[2], str(study["version"]))
        self.assertEqual(row[4], rk["items"][0]["name"])
        self.shot("studies.png")

    def test_c_render_500(self):
        sid = self.make_study("render-500", NOISE[:1], {"max_train_loss": MAX_TRAIN_LOSS})
        jobs = []
        for i in range(500):
            model, train = self.models[i % len(self.models)]
            meta = {"train_loss": train * (1 + (i % 10) / 10), "run": "r%02d" % (i // 10),
                    "epoch": i % 10 + 1}
            jobs.append(self.add_model(sid, model, "c%03d-%s" % (i, model), meta)["job"]["id"])
        done = self.client.wait_all(jobs, timeout=900)
        self.assertTrue(all(j["state"] == "succeeded" for j in done.values()))
        b = self.browser
        times = []
        for _ in range(3):
            b.get(self.url + "/ui/studies/" + sid)
            v = b.wait_for("return document.body.getAttribute('data-rendered-at') && "
                           "[Number(document.body.getAttribute('data-rendered-at')), "
                           "Number(document.body.getAttribute('data-render-ms')), "
                           "document.querySelectorAll('#ranking tbody tr').length + "
                           "document.querySelectorAll('#excluded tbody tr').length, "
                           "document.querySelectorAll('#plot-loss .mark').length]", 30, 0.02)
            times.append(v)
        self.assertEqual(times[-1][2], 500)
        self.assertEqual(times[-1][3], 500)
        best = min(t[0] for t in times)
        self.shot("study-500.png")
        with open(os.path.join(ART, "render.json"), "w") as f:
            json.dump({"candidates": 500, "page_ready_ms": [t[0] for t in times],
                       "draw_ms": [t[1] for t in times]}, f)
        print("500 candidates: page ready %s ms after navigation (draw %s ms)" %
              ([t[0] for t in times], [t[1] for t in times]))
        # The target is 1 s (bench/RESULTS.md has the measurements); the bound asserted here is
        # looser so that a CI runner shared with compilations does not fail on load alone.
        budget = float(os.environ.get("TPV_UI_RENDER_BUDGET_MS", "3000"))
        self.assertLess(best, budget)

    def test_d_auth_prompt(self):
        out = subprocess.run([self.bin, "token", "create", "--name", "ui", "--role", "read",
                              "--data-dir", self.data], check=True, capture_output=True,
                             text=True)
        token = out.stdout.strip().split()[-1]
        time.sleep(1.5)  # the daemon notices the first token within a second
        b = self.browser
        b.get(self.url + "/ui/")
        b.execute("sessionStorage.clear(); return true")
        b.get(self.url + "/ui/studies/" + self.sid)
        b.wait_for("return !document.getElementById('auth').hidden", 10)
        self.shot("auth-prompt.png")
        self.assertFalse(b.execute("return document.body.hasAttribute('data-version')"))
        b.send_keys(b.find("#auth-token"), token)
        b.click(b.find("#auth-submit"))
        b.wait_for("return document.body.getAttribute('data-version')", 10)
        self.assertTrue(b.execute("return document.getElementById('auth').hidden"))
        self.assertEqual(b.execute("return sessionStorage.getItem('tpvd.token')"), token)
        # A bad token stored: the prompt comes back saying so.
        b.execute("sessionStorage.setItem('tpvd.token', 'tpv_wrong'); return true")
        b.get(self.url + "/ui/")
        msg = b.wait_for("return !document.getElementById('auth').hidden && "
                         "document.getElementById('auth-msg').textContent", 10)
        self.assertIn("refused", msg)


if __name__ == "__main__":
    unittest.main(verbosity=2)
