#!/usr/bin/python3
"""test_manifests.py: the deploy files say only what exists.

Parses deploy/k8s/tpvd.yaml, deploy/docker-compose.yml, the Dockerfile and the docs (python3-yaml)
and checks that
  - every Secret, ConfigMap and PersistentVolumeClaim a Deployment names is created by the manifest
    or, for a Secret/ConfigMap, created by a `kubectl create secret|configmap` command the
    manifest's comments and deploy/README.md both give;
  - every container has resources.limits.cpu and TPVD_WORKERS comes from it (downward API), and the
    TPVD_BOOTSTRAP_TOKEN_FILE path is a key of a mounted Secret volume;
  - every TPVD_* variable and --option the files set exists in `tpvd --help`;
  - compose's volumes are named as the docs' `-v NAME:` mounts and `docker run` lines name them,
    and its token secret is the file TPVD_BOOTSTRAP_TOKEN_FILE points at;
  - the image installs tpvctl and tpvd, builds with the packages scripts/tpv builds with, and its
    runtime stage has the package of every shared library the two binaries need (readelf, dpkg);
    its user is the uid the Kubernetes pod runs as.
No Kubernetes schema check: Debian 12 packages no validator (kubeconform, kubeval) and the tests
use nothing from outside Debian.
Needs TPVD_BIN, TPVCTL_BIN, TPV_SOURCE_ROOT.
"""
import os
import re
import subprocess
import sys

import yaml

ROOT = os.environ.get("TPV_SOURCE_ROOT") or os.path.join(os.path.dirname(__file__), "..", "..")
TPVD = os.environ["TPVD_BIN"]
TPVCTL = os.environ["TPVCTL_BIN"]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


help_text = subprocess.run([TPVD, "--help"], capture_output=True, text=True).stdout
help_envs = set(re.findall(r"\[env (TPVD_[A-Z0-9_]+)", help_text))
help_opts = set(re.findall(r"^\s+(--[a-z0-9-]+)", help_text, re.M))
check(len(help_envs) > 20 and "TPVD_WORKERS" in help_envs, "tpvd --help lists its variables")

k8s_text = read("deploy/k8s/tpvd.yaml")
k8s_comments = "\n".join(l for l in k8s_text.splitlines() if l.lstrip().startswith("#"))
deploy_readme = read("deploy/README.md")
docs = deploy_readme + read("README.md") + read("Dockerfile")
docs_flat = re.sub(r"\\\n\s*", " ", docs)  # shell continuation lines joined
k8s = [d for d in yaml.safe_load_all(k8s_text) if d]
created = {(d["kind"], d["metadata"]["name"]) for d in k8s}


def documented_create(kind, name):
    word = {"Secret": r"secret\s+generic", "ConfigMap": "configmap"}.get(kind)
    pat = re.compile(r"kubectl\s+create\s+%s\s+%s\b" % (word, re.escape(name))) if word else None
    return bool(pat and pat.search(k8s_comments) and pat.search(deploy_readme))


def named_objects(pod):
    """(kind, name) of every object the pod spec refers to."""
    out = []
    for v in pod.get("volumes", []):
        if "secret" in v:
            out.append(("Secret", v["secret"]["secretName"]))
        if "configMap" in v:
            out.append(("ConfigMap", v["configMap"]["name"]))
        if "persistentVolumeClaim" in v:
            out.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                out.append(("Secret", ref["secretKeyRef"]["name"]))
            if "configMapKeyRef" in ref:
                out.append(("ConfigMap", ref["configMapKeyRef"]["name"]))
        for e in c.get("envFrom", []):
            if "secretRef" in e:
                out.append(("Secret", e["secretRef"]["name"]))
            if "configMapRef" in e:
                out.append(("ConfigMap", e["configMapRef"]["name"]))
        for s in c.get("imagePullSecrets", []):
            out.append(("Secret", s["name"]))
    return out


deployments = [d for d in k8s if d["kind"] == "Deployment"]
check(len(deployments) == 1, "the manifest has one Deployment")
k8s_uid = None
for dep in deployments:
    pod = dep["spec"]["template"]["spec"]
    k8s_uid = pod.get("securityContext", {}).get("runAsUser")
    for kind, name in named_objects(pod):
        check((kind, name) in created or documented_create(kind, name),
              "%s %s named by Deployment %s is created or its kubectl command documented"
              % (kind, name, dep["metadata"]["name"]))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        cname = c["name"]
        check(bool(c.get("resources", {}).get("limits", {}).get("cpu")),
              "container %s has resources.limits.cpu" % cname)
        env = {e["name"]: e for e in c.get("env", [])}
        for n in env:
            check(n in help_envs, "k8s env %s is in tpvd --help" % n)
        for a in c.get("args", []):
            if a.startswith("--"):
                check(a.split("=")[0] in help_opts, "k8s arg %s is in tpvd --help" % a)
        ref = env.get("TPVD_WORKERS", {}).get("valueFrom", {}).get("resourceFieldRef", {})
        check(ref.get("resource") == "limits.cpu" and ref.get("containerName") == cname,
              "TPVD_WORKERS of %s comes from its limits.cpu" % cname)
        check(env.get("TPVD_BLAS_THREADS", {}).get("value") not in (None, "0"),
              "BLAS threads of %s are bounded (0 divides the node's cores)" % cname)
        tok = env.get("TPVD_BOOTSTRAP_TOKEN_FILE", {}).get("value", "")
        found = False
        for m in c.get("volumeMounts", []):
            sec = volumes.get(m["name"], {}).get("secret")
            if sec and tok.startswith(m["mountPath"].rstrip("/") + "/"):
                key = tok[len(m["mountPath"].rstrip("/")) + 1:]
                paths = [i["path"] for i in sec.get("items", [])]
                found = key in paths if paths else True
        check(found, "TPVD_BOOTSTRAP_TOKEN_FILE (%s) is a file of a mounted Secret" % tok)

# docker compose
compose = yaml.safe_load(read("deploy/docker-compose.yml"))
top_volumes = compose.get("volumes") or {}
compose_names = set()
for key, spec in top_volumes.items():
    name = (spec or {}).get("name")
    check(name == key, "compose volume %s has the fixed name %s (no project prefix)" % (key, key))
    compose_names.add(name or key)
for sname, svc in compose["services"].items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source")
        if not src.startswith((".", "/", "~", "$")):
            check(src in top_volumes, "service volume %s is declared" % src)
    env = svc.get("environment", {})
    for n in env:
        check(n in help_envs, "compose env %s is in tpvd --help" % n)
    tok = env.get("TPVD_BOOTSTRAP_TOKEN_FILE")
    secrets = svc.get("secrets", [])
    check(tok is not None and any(tok == "/run/secrets/" + s for s in secrets),
          "compose's TPVD_BOOTSTRAP_TOKEN_FILE is one of its secrets")
    for s in secrets:
        f = compose["secrets"][s].get("file", "")
        rel = os.path.normpath(os.path.join("deploy", f))
        check(rel in docs_flat, "the compose secret file %s is made in the docs" % rel)

# Every named volume the docs and the Dockerfile mount is compose's.
doc_mounts = set(re.findall(r"-v\s+([A-Za-z0-9][A-Za-z0-9_.-]*):/", docs_flat))
check(bool(doc_mounts), "the docs mount a named volume")
for name in sorted(doc_mounts):
    check(name in compose_names, "the docs' volume %s is compose's" % name)
for n in sorted(set(re.findall(r"-e\s+(TPVD_[A-Z0-9_]+)=", docs_flat))):
    check(n in help_envs, "documented -e %s is in tpvd --help" % n)
for n in sorted(set(re.findall(r"\b(TPVD_[A-Z0-9_]+)", read("Dockerfile")))):
    check(n in help_envs, "Dockerfile's %s is in tpvd --help" % n)

# Dockerfile stages.
dockerfile = read("Dockerfile")
stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
check(len(stages) == 2, "the Dockerfile has a build and a runtime stage")


def apt_packages(stage):
    m = re.search(r"apt-get install[^\n]*((?:\n[^\n]*)*?)\n \&\& rm", stage)
    return set(re.findall(r"[a-z0-9][a-z0-9.+-]+", re.sub(r"\\\n", " ", m.group(1)))) if m else set()


build_pkgs, run_pkgs = apt_packages(stages[0]), apt_packages(stages[1])
tpv = read("scripts/tpv")
want_build = set(re.search(r"BUILD_PKGS=\(([^)]*)\)", tpv).group(1).split())
test_only = {"clang", "libcmocka-dev"}  # -Dtests=false; gcc builds the image
missing = sorted(want_build - test_only - build_pkgs)
check(not missing, "the build stage installs scripts/tpv's build packages (missing: %s)" % missing)
for b in ("tpvd", "tpvctl"):
    check(re.search(r"install -Dm755 /build/\S+/%s /out/usr/local/bin/%s\b" % (b, b), stages[0])
          is not None, "the image installs %s in /usr/local/bin" % b)
for pkg in ("libprotobuf-c1",):
    check(pkg in run_pkgs, "the runtime stage keeps %s" % pkg)


def needed_packages(binary):
    """Debian packages of the shared libraries `binary` links directly (DT_NEEDED)."""
    dyn = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
    paths = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run(
        ["ldd", binary], capture_output=True, text=True).stdout, re.M))
    pkgs = {}
    for lib in needed:
        if lib.startswith("ld-linux"):
            continue  # the dynamic loader, libc6's
        path = os.path.realpath(paths.get(lib, lib))
        q = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        if q.returncode != 0:  # usrmerge: dpkg knows /lib/..., ldd says /usr/lib/...
            q = subprocess.run(["dpkg", "-S", path.replace("/usr/lib/", "/lib/", 1)],
                               capture_output=True, text=True)
        pkgs[lib] = q.stdout.split(":")[0] if q.returncode == 0 else None
    return pkgs


base = {"libc6", "libgcc-s1", "zlib1g"}  # in debian:12-slim
for binary in (TPVD, TPVCTL):
    for lib, pkg in sorted(needed_packages(binary).items()):
        check(pkg is not None and (pkg in run_pkgs or pkg in base),
              "%s needs %s (%s): in the runtime stage" % (os.path.basename(binary), lib, pkg))

uid = re.search(r"useradd [^\n]*--uid (\d+)", dockerfile)
check(uid is not None and k8s_uid is not None and int(uid.group(1)) == int(k8s_uid),
      "the image's user is the uid the pod runs as (%s)" % k8s_uid)


# The PostgreSQL deployments (DESIGN.md section 7): several replicas on one database, the URL from
# a Secret, blobs on a ReadWriteMany volume; compose: PostgreSQL and two nodes sharing blobs.
pg_text = read("deploy/k8s/tpvd-postgres.yaml")
pg_comments = "\n".join(l for l in pg_text.splitlines() if l.lstrip().startswith("#"))
pg_k8s = [d for d in yaml.safe_load_all(pg_text) if d]
pg_created = {(d["kind"], d["metadata"]["name"]) for d in pg_k8s}
pg_deps = [d for d in pg_k8s if d["kind"] == "Deployment"]
check(len(pg_deps) == 1 and pg_deps[0]["spec"]["replicas"] >= 2,
      "the PostgreSQL manifest has one Deployment of several replicas")
pg_pod = pg_deps[0]["spec"]["template"]["spec"]
pg_vols = {v["name"]: v for v in pg_pod["volumes"]}
pg_c = pg_pod["containers"][0]
pg_env = {e["name"]: e for e in pg_c.get("env", [])}
for n in pg_env:
    check(n in help_envs, "PostgreSQL k8s env %s is in tpvd --help" % n)
for a in pg_c.get("args", []):
    if a.startswith("--"):
        check(a in help_opts, "PostgreSQL k8s arg %s is in tpvd --help" % a)
ref = pg_env.get("TPVD_DATABASE", {}).get("valueFrom", {}).get("secretKeyRef", {})
check(bool(ref.get("name")) and bool(ref.get("key")), "TPVD_DATABASE comes from a Secret")
for kind, name in named_objects(pg_pod):
    word = {"Secret": r"secret\s+generic"}.get(kind)
    pat = re.compile(r"kubectl\s+create\s+%s\s+%s\b" % (word, re.escape(name))) if word else None
    check((kind, name) in pg_created or bool(pat and pat.search(pg_comments)
                                              and pat.search(deploy_readme)),
          "%s %s of the PostgreSQL Deployment is created or its kubectl command documented"
          % (kind, name))
args = pg_c.get("args", [])
blob_dir = args[args.index("--blob-dir") + 1] if "--blob-dir" in args else None
check(blob_dir is not None, "the PostgreSQL pods get --blob-dir")
shared = [m for m in pg_c.get("volumeMounts", []) if m["mountPath"] == blob_dir]
check(len(shared) == 1, "the blob dir is a mounted volume")
claim = pg_vols[shared[0]["name"]]["persistentVolumeClaim"]["claimName"]
pvc = [d for d in pg_k8s if d["kind"] == "PersistentVolumeClaim"
       and d["metadata"]["name"] == claim]
check(len(pvc) == 1 and "ReadWriteMany" in pvc[0]["spec"]["accessModes"],
      "the blob volume is a ReadWriteMany claim")

pgc = yaml.safe_load(read("deploy/docker-compose.postgres.yml"))
svcs = pgc["services"]
check(any(str(s.get("image", "")).startswith("postgres:") for s in svcs.values()),
      "the PostgreSQL compose file runs PostgreSQL")
nodes = [s for s in svcs.values() if s.get("image") == "tpvd:latest"]
check(len(nodes) >= 2, "the PostgreSQL compose file runs two tpvd nodes")
blob_envs = {n.get("environment", {}).get("TPVD_BLOB_DIR") for n in nodes}
check(len(blob_envs) == 1 and None not in blob_envs, "the nodes share one --blob-dir")
bd = blob_envs.pop()
mounts = [{v.split(":")[0] for v in n.get("volumes", []) if v.split(":")[1] == bd} for n in nodes]
check(len(mounts[0]) == 1 and all(m == mounts[0] for m in mounts),
      "every node mounts the same named volume on the blob dir")
for n in nodes:
    check("--database" in " ".join(n.get("entrypoint", [])), "each node is given --database")
    for k in n.get("environment", {}):
        check(k in help_envs, "PostgreSQL compose env %s is in tpvd --help" % k)
for name, sec in pgc.get("secrets", {}).items():
    rel = "deploy/" + sec["file"].lstrip("./")
    check(rel in docs_flat or sec["file"].lstrip("./") in read("deploy/docker-compose.postgres.yml"),
          "the compose secret %s is made in the file's comments" % name)
check("When to move from SQLite to PostgreSQL" in deploy_readme,
      "deploy/README.md says when to move from SQLite to PostgreSQL")

if failures:
    print("%d check(s) failed" % len(failures), file=sys.stderr)
    sys.exit(1)
print("all manifest checks passed")

