#!/usr/bin/python3
"""test_readme_session.py: README's Python snippet, then its tpvctl session, run as written.

Both blocks are taken from README.md (the indented block after "**Python**" and the `$ ` lines of
the one after "**tpvctl**"), with the README's http://127.0.0.1:8080 replaced by a throw-away
daemon's address, in a fresh folder that has `clients/` and `build/clients/tpvctl` where a clone
has them.  Every command must succeed; the ranking must list w64 and jbr must print units.
Needs TPVD_BIN, TPVCTL_BIN, TPV_SOURCE_ROOT, and python3-torch for the snippet.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.environ["TPV_SOURCE_ROOT"]
readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def block_after(marker):
    """The first indented block after the paragraph that starts with `marker`."""
    rest = readme[readme.index(marker):]
    m = re.search(r"\n\n((?:    [^\n]*\n|\n(?=    ))+)", rest)
    return "\n".join(l[4:] for l in m.group(1).splitlines())


tmp = tempfile.mkdtemp()
daemon = subprocess.Popen([os.environ["TPVD_BIN"], "--listen", "127.0.0.1:0", "--port-file",
                           tmp + "/port", "--data-dir", tmp + "/data"],
                          stdout=subprocess.DEVNULL, stderr=open(tmp + "/log", "w"))
try:
    for _ in range(200):
        if os.path.exists(tmp + "/port") and open(tmp + "/port").read().strip():
            break
        time.sleep(0.05)
    url = "http://127.0.0.1:%s" % open(tmp + "/port").read().strip()
    work = os.path.join(tmp, "clone")
    os.makedirs(os.path.join(work, "build", "clients"))
    shutil.copytree(os.path.join(ROOT, "clients"), os.path.join(work, "clients"))
    shutil.copy(os.environ["TPVCTL_BIN"], os.path.join(work, "build", "clients", "tpvctl"))

    py = block_after("**Python**").replace("http://127.0.0.1:8080", url)
    r = subprocess.run(["/usr/bin/python3", "-c", py], cwd=work, capture_output=True, text=True)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, "the Python snippet failed"
    assert "'name': 'w64'" in r.stdout, "the snippet's ranking lacks w64"

    lines = [l for l in block_after("**tpvctl**").splitlines()]
    script, cont = [], False
    for l in lines:  # the `$ ` commands and their continuation lines
        if l.startswith("$ ") or cont:
            script.append(l[2:] if l.startswith("$ ") else l)
            cont = l.rstrip().endswith("\\")
    sh = "set -euo pipefail\n" + "\n".join(script).replace("http://127.0.0.1:8080", url)
    # PATH as a fresh shell has it: tpvctl is found only through the README's export.
    env = {"PATH": "/usr/bin:/bin", "HOME": tmp}
    r = subprocess.run(["bash", "-c", sh], cwd=work, capture_output=True, text=True, env=env)
    print(sh, r.stdout, r.stderr, sep="\n")
    assert r.returncode == 0, "the tpvctl session failed"
    assert re.search(r"^1\s+w64\s", r.stdout, re.M), "the ranking table lacks w64"
    assert re.search(r"^order\s+layer\s+index\s+score$", r.stdout, re.M), "jbr printed no units"
    assert re.search(r"^1\s+0\.weight\s+\d+\s", r.stdout, re.M), "no first unit"
finally:
    daemon.terminate()
    daemon.wait()
    shutil.rmtree(tmp)
print("README's Python snippet and tpvctl session: all commands passed")
