"""tpv_client: a client for the tpvd REST API (DESIGN.md section 5) using only the standard library.

    from tpv_client import Client
    c = Client("http://127.0.0.1:8080", token=None)       # or TPV_URL / TPV_TOKEN
    study = c.create_study("sweep", [{"name": "iso", "kind": "isotropic", "sigma": 0.01}])
    c.set_inputs(study["id"], "fit", "x_fit.npy")
    r = c.add_candidate(study["id"], "w128", spec="spec.json", weights="w128.safetensors",
                        metadata={"train_loss": 0.02})
    c.wait_job(r["job"]["id"])
    for item in c.ranking(study["id"])["items"]:
        print(item["rank"], item["name"], item["value"])

Every failed call raises TPVError carrying the server's error code, message and details.
Blobs are uploaded by digest and skipped when the server already has them (HEAD first); a blob
argument may also be {"url": "https://..."} for the server to fetch.  A webhook receiver checks
deliveries with verify_webhook(secret, body, headers["X-TPV-Signature"]).
"""

import gzip
import hashlib
import hmac
import http.client
import json
import math
import numbers
import os
import select
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Client", "TPVError", "sha256_file", "verify_webhook"]

_CHUNK = 1 << 20
# How long an upload waits for "100 Continue" before sending its body anyway (RFC 9110 10.1.1:
# a client may proceed when a server that ignores Expect stays silent).
_CONTINUE_WAIT_S = 3.0


class TPVError(Exception):
    """An error answered by tpvd (or a transport failure, with code "unavailable")."""

    def __init__(self, status, code, message, details=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def sha256_file(path):
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_webhook(secret, body, signature):
    """Whether a webhook delivery is authentic: `signature` is its X-TPV-Signature header,
    `body` the exact bytes received, `secret` the study's webhook_secret (shown once, when the
    study was created).  Compares in constant time."""
    if isinstance(secret, str):
        secret = secret.encode()
    want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, signature or "")


class _FileBody:
    """A file object urllib can stream, reporting progress to an optional callback(done, total)."""

    def __init__(self, path, progress=None):
        self._f = open(path, "rb")
        self.total = os.fstat(self._f.fileno()).st_size
        self.done = 0
        self._progress = progress

    def read(self, n=-1):
        data = self._f.read(_CHUNK if n is None or n < 0 else n)
        self.done += len(data)
        if self._progress:
            self._progress(self.done, self.total)
        return data

    def close(self):
        self._f.close()


class Client:
    """One tpvd server.  url defaults to $TPV_URL or http://127.0.0.1:8080; token to $TPV_TOKEN."""

    def __init__(self, url=None, token=None, timeout=60.0):
        self.url = (url or os.environ.get("TPV_URL") or "http://127.0.0.1:8080").rstrip("/")
        self.token = token if token is not None else os.environ.get("TPV_TOKEN")
        self.timeout = timeout

    # -- transport ---------------------------------------------------------------------------

    def _request(self, method, path, body=None, headers=None, query=None, timeout=None,
                 expect=(200, 201, 202, 204)):
        """Returns (status, headers, parsed JSON or None).  Raises TPVError for other statuses."""
        url = self.url + path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        hdrs = dict(headers or {})
        data = None
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif body is not None:
            data = body
        if self.token:
            hdrs["Authorization"] = "Bearer " + self.token
        # Rankings are large, alike JSON: the server sends them gzip'd, about a fifth of the bytes.
        hdrs.setdefault("Accept-Encoding", "gzip")
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                status, rh, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, rh, raw = e.code, e.headers, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise TPVError(0, "unavailable", f"cannot reach {self.url}: {e}") from e
        if raw and (rh.get("Content-Encoding") or "").strip().lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:
                raise TPVError(status, "bad_response", f"{self.url}: a gzip body that does "
                               f"not inflate: {e}") from e
        return status, rh, self._parse_answer(status, raw, expect)

    @staticmethod
    def _parse_answer(status, raw, expect):
        """The parsed JSON body of an expected status; else raises the server's TPVError."""
        parsed = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        if status in expect:
            return parsed
        err = (parsed or {}).get("error", {}) if isinstance(parsed, dict) else {}
        raise TPVError(status, err.get("code", "unknown"),
                       err.get("message", raw[:200].decode(errors="replace")),
                       err.get("details"))

    def _upload(self, path, body, timeout):
        """PUTs a file with `Expect: 100-continue` and returns (status, raw body).

        The server answers a refusal it can make from the headers alone (a body over --max-blob,
        a missing token, a bad digest) before the body is sent; writing the whole body first
        would end in a broken pipe instead of the server's error.  The body goes only after
        "100 Continue" (or after _CONTINUE_WAIT_S of silence)."""
        u = urllib.parse.urlsplit(self.url)
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        try:
            conn.putrequest("PUT", (u.path.rstrip("/") or "") + path, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(body.total))
            conn.putheader("Expect", "100-continue")
            if self.token:
                conn.putheader("Authorization", "Bearer " + self.token)
            conn.endheaders()
            early = self._interim_or_final(conn)
            if early is not None:
                return early
            while True:
                chunk = body.read(_CHUNK)
                if not chunk:
                    break
                conn.send(chunk)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise TPVError(0, "unavailable", f"cannot reach {self.url}: {e}") from e
        finally:
            conn.close()

    @staticmethod
    def _interim_or_final(conn):
        """After the headers of an Expect: 100-continue request: None when the body should be
        sent (100 Continue, or silence), else the server's early (status, raw body)."""
        sock = conn.sock
        pending = getattr(sock, "pending", lambda: 0)()
        if not pending and not select.select([sock], [], [], _CONTINUE_WAIT_S)[0]:
            return None
        resp = conn.response_class(sock, method="PUT")
        version, status, reason = resp._read_status()  # noqa: SLF001 (interim responses)
        if status == http.client.CONTINUE:
            http.client.parse_headers(resp.fp)  # the interim answer's (empty) header block
            return None
        # A final answer before the body: read its headers and body from the same stream.
        headers = http.client.parse_headers(resp.fp)
        length = int(headers.get("Content-Length") or 0)
        raw = resp.fp.read(length) if length else b""
        return status, raw

    # -- blobs -------------------------------------------------------------------------------

    def has_blob(self, digest):
        status, _, _ = self._request("HEAD", "/v1/blobs/" + digest, expect=(200, 404))
        return status == 200

    def delete_blob(self, digest):
        """Deletes a blob nothing uses; while a study, candidate or job uses it, raises
        TPVError(409, "failed_precondition") naming that user."""
        self._request("DELETE", "/v1/blobs/" + digest)

    def put_blob(self, path, progress=None):
        """Uploads a file unless the server has it; returns "sha256:<hex>"."""
        digest = "sha256:" + sha256_file(path)
        if self.has_blob(digest):
            if progress:
                size = os.path.getsize(path)
                progress(size, size)
            return digest
        body = _FileBody(path, progress)
        try:
            status, raw = self._upload("/v1/blobs/" + digest, body, max(self.timeout, 600))
        finally:
            body.close()
        resp = self._parse_answer(status, raw, (200, 201))
        if resp and resp.get("digest") != digest:
            raise TPVError(0, "internal", f"server stored {resp.get('digest')}, expected {digest}")
        return digest

    def _blob_ref(self, value):
        """A path is uploaded; "sha256:..." and {"url": ...} pass through."""
        if value is None or isinstance(value, dict):
            return value
        if isinstance(value, str) and value.startswith("sha256:"):
            return value
        return self.put_blob(value)

    # -- studies -----------------------------------------------------------------------------

    def create_study(self, name, noise_models, rank_by=None, description="", metadata=None,
                     webhook_url=None):
        body = {"name": name, "description": description, "noise_models": noise_models,
                "rank_by": rank_by or noise_models[0]["name"]}
        if metadata is not None:
            body["metadata"] = metadata
        if webhook_url:
            body["webhook_url"] = webhook_url
        return self._request("POST", "/v1/studies", body)[2]

    def delete_study(self, sid):
        """Deletes the study with its inputs, candidates, scores and jobs."""
        self._request("DELETE", f"/v1/studies/{sid}")

    def get_study(self, sid):
        return self._request("GET", f"/v1/studies/{sid}")[2]

    def _pages(self, path, page_size):
        token = None
        while True:
            page = self._request("GET", path, query={"page_size": page_size,
                                                     "page_token": token})[2]
            yield from page["items"]
            token = page.get("next_page_token")
            if not token:
                return

    def list_studies(self, page_size=100):
        return list(self._pages("/v1/studies", page_size))

    def set_inputs(self, sid, split, path_or_digest):
        """split is "fit" or "probe"; a path is uploaded first."""
        blob = self._blob_ref(path_or_digest)
        return self._request("PUT", f"/v1/studies/{sid}/inputs/{split}", {"blob": blob})[2]

    # -- candidates and jobs -----------------------------------------------------------------

    def add_candidate(self, sid, name, spec=None, weights=None, jacobian_fit=None,
                      jacobian_probe=None, layout=None, metadata=None, idempotency_key=None,
                      onnx=None, parameters=None):
        """A checkpoint (spec: dict, path of a JSON file, or digest; weights: path or digest),
        an ONNX model (onnx: path or digest, e.g. from tpv_export.export_onnx; parameters: the
        names of the perturbed initializers, default the model's own list), or a Jacobian dump
        (jacobian_fit/jacobian_probe: paths or digests).  Returns {"candidate": ..., "job": ...}."""
        body = {"name": name, "metadata": metadata or {}}
        if onnx is not None:
            body["model"] = {"onnx": self._blob_ref(onnx)}
            if parameters is not None:
                body["model"]["parameters"] = list(parameters)
        elif jacobian_fit is not None:
            jac = {"fit": self._blob_ref(jacobian_fit)}
            if jacobian_probe is not None:
                jac["probe"] = self._blob_ref(jacobian_probe)
            if layout is not None:
                jac["layout"] = list(layout)
            body["jacobian"] = jac
            if weights is not None:
                body["weights"] = self._blob_ref(weights)
        else:
            if isinstance(spec, str) and not spec.startswith("sha256:"):
                with open(spec) as f:
                    spec = json.load(f)
            body["model"] = {"spec": spec, "weights": self._blob_ref(weights)}
        hdrs = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", f"/v1/studies/{sid}/candidates", body, headers=hdrs)[2]

    def get_candidate(self, sid, cid):
        return self._request("GET", f"/v1/studies/{sid}/candidates/{cid}")[2]

    def list_candidates(self, sid, page_size=100):
        return list(self._pages(f"/v1/studies/{sid}/candidates", page_size))

    def delete_candidate(self, sid, cid):
        """Deletes the candidate with its scores and jobs (a running job stops within a second);
        its name is free again."""
        self._request("DELETE", f"/v1/studies/{sid}/candidates/{cid}")

    def retry_candidate(self, sid, cid):
        """A new score job for a failed or canceled candidate; returns {"job": ...}.  Any other
        state raises TPVError(409, "failed_precondition")."""
        return self._request("POST", f"/v1/studies/{sid}/candidates/{cid}/retry")[2]

    def get_job(self, jid):
        return self._request("GET", f"/v1/jobs/{jid}")[2]

    def cancel_job(self, jid):
        return self._request("DELETE", f"/v1/jobs/{jid}")[2]

    def wait_job(self, jid, timeout=600.0, poll=0.2, progress=None):
        """Polls until the job is terminal; returns it.  Raises TPVError("deadline_exceeded")."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(jid)
            if progress:
                progress(job)
            if job["state"] in ("succeeded", "failed", "canceled"):
                return job
            if time.monotonic() > deadline:
                raise TPVError(0, "deadline_exceeded", f"job {jid} still {job['state']}")
            time.sleep(poll)

    def wait_all(self, job_ids, timeout=600.0, poll=0.2):
        """Polls until every job is terminal; returns {job id: job}.  One request per job still
        running per round.  Raises TPVError("deadline_exceeded") naming the jobs still running."""
        deadline = time.monotonic() + timeout
        done, waiting = {}, list(dict.fromkeys(job_ids))
        while waiting:
            still = []
            for jid in waiting:
                job = self.get_job(jid)
                if job["state"] in ("succeeded", "failed", "canceled"):
                    done[jid] = job
                else:
                    still.append(jid)
            waiting = still
            if waiting and time.monotonic() > deadline:
                raise TPVError(0, "deadline_exceeded",
                               f"{len(waiting)} job(s) still running: {', '.join(waiting[:5])}",
                               {"job_ids": waiting})
            if waiting:
                time.sleep(poll)
        return done

    def jbr(self, sid, cid, confidence=None, batch_size=None):
        body = {}
        if confidence is not None:
            body["confidence"] = confidence
        if batch_size is not None:
            body["batch_size"] = batch_size
        return self._request("POST", f"/v1/studies/{sid}/candidates/{cid}/jbr", body)[2]

    # -- metrics and agreement ---------------------------------------------------------------

    def set_metrics(self, sid, cid, metrics=None, **kw):
        """Merges labelled numbers you have on a candidate (set_metrics(sid, cid, val_loss=0.31),
        or a dict for names that are not identifiers): keys given replace, None removes a key,
        others stay.  Returns the candidate, with its "metrics".  Values must be finite numbers
        (ValueError otherwise, before anything is sent)."""
        body = dict(metrics or {})
        body.update(kw)
        for k, v in body.items():
            if v is None:
                continue
            # numpy scalars are numbers.Real too; bool is an int but not a measurement.
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"metric {k!r}: {v!r} is not a finite number")
            body[k] = int(v) if isinstance(v, numbers.Integral) else float(v)
        return self._request("PUT", f"/v1/studies/{sid}/candidates/{cid}/metrics", body)[2]

    def agreement(self, sid, metric):
        """How each noise model and split of the study ranks against `metric`: a dict with
        "items" ([{noise, split, n, spearman, kendall, ci}], study order, fit before probe) and
        "recommended" ({noise, split} with the highest interval lower bound above 0, or None).
        Raises TPVError not_found when no candidate has the metric."""
        return self._request("GET", f"/v1/studies/{sid}/agreement", query={"metric": metric})[2]

    # -- rankings ----------------------------------------------------------------------------

    def ranking(self, sid, by=None, split=None, max_train_loss=None, etag=None, wait=None):
        """The ranking, or None when `etag` is still current (304).  With wait=s and etag, the
        server holds the request until the ranking changes or s seconds pass.  The ETag of the
        returned ranking is in its "etag" key."""
        hdrs = {"If-None-Match": etag} if etag else None
        status, rh, body = self._request(
            "GET", f"/v1/studies/{sid}/ranking", headers=hdrs,
            query={"by": by, "split": split, "max_train_loss": max_train_loss, "wait": wait},
            timeout=(wait or 0) + self.timeout, expect=(200, 304))
        if status == 304:
            return None
        body["etag"] = rh.get("ETag")
        return body
