#!/usr/bin/python3
"""test_doc_paths.py: every file README.md and deploy/README.md point at is in a clone, and no
tracked text file keeps a merge's conflict markers (one reached README once).

Markdown links and `backticked` relative paths (with a '/' or a known suffix; a bare file name
anywhere in the tree) must be files or folders git tracks, unless the docs' own steps make them (build/, var/, out/, the token files).
Needs TPV_SOURCE_ROOT and git.
"""
import os
import re
import subprocess
import sys

ROOT = os.environ.get("TPV_SOURCE_ROOT") or os.path.join(os.path.dirname(__file__), "..", "..")
tracked = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True,
                         check=True).stdout.split()
dirs = {os.path.dirname(p) for p in tracked}
for p in list(dirs):
    while p:
        p = os.path.dirname(p)
        dirs.add(p)
made = ("build/", "./build/", "var", "./var", "out/", "deploy/tpvd-token", "~/", "$")
failures = []
for doc in ("README.md", "deploy/README.md"):
    text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
    base = os.path.dirname(doc)
    cands = set(re.findall(r"\]\(([^)#\s]+)", text))
    for tok in re.findall(r"`([^`\s]+)`", text):
        if re.match(r"^(\.{0,2}/)?[A-Za-z_.][\w.-]*(/[\w.*-]+)+/?$", tok) or \
                re.match(r"^[\w.-]+\.(md|yml|yaml|service|sh|py|c|h)$", tok):
            cands.add(tok)
    for c in sorted(cands):
        if c.startswith(("http://", "https://", "/")) or c.startswith(made):
            continue
        rel = os.path.normpath(os.path.join(base if c.startswith(".") and not c.startswith("./")
                                            else "", c)).rstrip("/")
        if "*" in rel:
            ok = any(re.fullmatch(rel.replace(".", r"\.").replace("*", "[^/]*"), p)
                     for p in tracked)
        else:
            ok = rel in tracked or rel in dirs or os.path.join(base, rel) in tracked
            if "/" not in rel:  # a bare file name, named in a sentence about its folder
                ok = ok or any(os.path.basename(p) == rel for p in tracked)
        print(("ok   " if ok else "FAIL ") + "%s: %s" % (doc, c))
        if not ok:
            failures.append((doc, c))
marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
for p in tracked:
    try:
        text = open(os.path.join(ROOT, p), encoding="utf-8").read()
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
        continue  # binary test data, submodules, files deleted in the work tree
    m = marker.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        print("FAIL %s:%d: a merge conflict marker" % (p, line))
        failures.append((p, "conflict marker"))
if failures:
    print("%d problem(s): paths a clone does not have, conflict markers" % len(failures),
          file=sys.stderr)
    sys.exit(1)
print("every path the docs name is in a clone; no conflict markers")
