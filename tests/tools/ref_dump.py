#!/usr/bin/python3
"""ref_dump.py: random Jacobian dumps and float64 numpy reference TPVs for tests/unit/test_score.c.

Usage: /usr/bin/python3 tests/tools/ref_dump.py OUTDIR [SEED]

Writes into OUTDIR:
  weights.safetensors   four tensors (two Linear layers), F32
  variances.safetensors per-parameter variances (F64), same names/shapes
  mask.safetensors      a 0/1 prune mask (U8), same names/shapes
  f64_fit.npy, f64_probe.npy                 flat (n, K, p) float64 dumps, columns in LAYOUT order
  f32_fit.safetensors, f32_probe.safetensors named (n, K, *shape) float32 dumps
  ref.json              {"layout": [...], "f64": {model: {"fit": v, "probe": v}}, "f32": {...},
                         "stability": {"f64": ratio, "f32": ratio}}
Every reference is computed in float64 from the values as stored (the float32 dumps are first
rounded to float32).  safetensors files are written by hand (8-byte LE header length, JSON header,
raw little-endian bytes) so that only numpy is needed.  Formulas: DESIGN.md section 3.
"""
import json
import os
import struct
import sys

import numpy as np

SHAPES = {"layer.0.weight": (16, 10), "layer.0.bias": (16,), "layer.1.weight": (3, 16),
          "layer.1.bias": (3,)}
LAYOUT = ["layer.0.weight", "layer.0.bias", "layer.1.weight", "layer.1.bias"]  # not sorted
N_FIT, N_PROBE, K = 30, 20, 3

MODELS = {
    "iso": {"kind": "isotropic", "sigma": 0.1},
    "sgd": {"kind": "sgd", "lr": 0.1, "batch_size": 32, "residual_variance": 1.5},
    "sgdc": {"kind": "sgd_curvature", "lr": 0.1, "batch_size": 32},
    "label": {"kind": "label", "sigma": 0.5},
    "label_rel": {"kind": "label", "sigma": 0.5, "ridge_rel": 0.05},
    "q_global": {"kind": "quantization", "bits": 8, "scope": "global"},
    "q_tensor": {"kind": "quantization", "bits": 6, "scope": "per_tensor"},
    "q_channel": {"kind": "quantization", "bits": 4, "scope": "per_channel"},
    "diag": {"kind": "diagonal", "variances": "sha256:" + "1" * 64},
    "prune_g": {"kind": "prune", "rule": "magnitude", "fraction": 0.3, "scope": "global"},
    "prune_t": {"kind": "prune", "rule": "magnitude", "fraction": 0.3, "scope": "per_tensor"},
    "prune_m": {"kind": "prune", "mask": "sha256:" + "2" * 64},
}

DT = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("u1"): "U8"}


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        raw = arr.tobytes()
        header[name] = {"dtype": DT[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def offsets():
    out, o = {}, 0
    for name in LAYOUT:
        c = int(np.prod(SHAPES[name]))
        out[name] = (o, c)
        o += c
    return out, o


def references(Jf, Jp, w, var, mask):
    """Jf (n, K, p), Jp (m, K, p) float64 in LAYOUT column order; w, var, mask flat (p,)."""
    offs, p = offsets()
    n, m = Jf.shape[0], Jp.shape[0]
    Ff, Fp = Jf.reshape(n * K, p), Jp.reshape(m * K, p)
    dfit, dprobe = (Ff ** 2).sum(0) / n, (Fp ** 2).sum(0) / m
    out = {}

    def both(cvec):
        return {"fit": float(cvec @ dfit), "probe": float(cvec @ dprobe)}

    for name, md in MODELS.items():
        kind = md["kind"]
        if kind == "isotropic":
            out[name] = both(np.full(p, md["sigma"] ** 2))
        elif kind == "sgd":
            out[name] = both(np.full(p, md["lr"] * md["residual_variance"] / (2 * md["batch_size"])))
        elif kind == "quantization":
            levels = 2.0 ** md["bits"] - 1
            c = np.zeros(p)
            if md["scope"] == "global":
                c[:] = ((w.max() - w.min()) / levels) ** 2 / 12
            for t in LAYOUT:
                o, cnt = offs[t]
                blk = w[o:o + cnt]
                if md["scope"] == "per_tensor":
                    c[o:o + cnt] = ((blk.max() - blk.min()) / levels) ** 2 / 12
                elif md["scope"] == "per_channel":
                    shp = SHAPES[t]
                    rows = blk.reshape(shp[0], -1) if len(shp) >= 2 else blk.reshape(1, -1)
                    d = (rows.max(1) - rows.min(1)) / levels
                    c[o:o + cnt] = np.repeat(d ** 2 / 12, rows.shape[1])
            out[name] = both(c)
        elif kind == "diagonal":
            out[name] = both(var)
        elif kind == "prune":
            if "mask" in md:
                mk = mask.astype(np.float64)
            else:
                mk = np.zeros(p)
                names = sorted(t for t in LAYOUT if len(SHAPES[t]) >= 2)  # lexicographic
                if md["scope"] == "global":
                    cols = np.concatenate([np.arange(offs[t][0], offs[t][0] + offs[t][1])
                                           for t in names])
                    order = np.argsort(np.abs(w[cols]), kind="stable")
                    mk[cols[order[:int(np.floor(md["fraction"] * len(cols)))]]] = 1
                else:
                    for t in names:
                        cols = np.arange(offs[t][0], offs[t][0] + offs[t][1])
                        order = np.argsort(np.abs(w[cols]), kind="stable")
                        mk[cols[order[:int(np.floor(md["fraction"] * len(cols)))]]] = 1
            dw = -(mk * w)
            out[name] = {"fit": float(((Ff @ dw) ** 2).sum() / n),
                         "probe": float(((Fp @ dw) ** 2).sum() / m)}
        elif kind == "sgd_curvature":
            a = md["lr"] / (2 * md["batch_size"])
            G = Ff @ Ff.T
            self_terms = sum(float((G[i * K:(i + 1) * K, i * K:(i + 1) * K] ** 2).sum())
                             for i in range(n))
            out[name] = {"fit": a * (float((G ** 2).sum()) - self_terms) / (n * (n - 1)),
                         "probe": a * float(((Fp @ Ff.T) ** 2).sum()) / (m * n)}
        elif kind == "label":
            s2 = md["sigma"] ** 2
            G = Ff @ Ff.T
            lam, Q = np.linalg.eigh(G)
            lam = np.clip(lam, 0, None)
            rho = md.get("ridge_rel", 0) * np.trace(G) / (n * K)
            if rho > 0:
                keep = np.ones_like(lam, dtype=bool)
                fitv = s2 * float((lam ** 2 / (lam + rho) ** 2).sum()) / n
                proj = ((Fp @ Ff.T @ Q) ** 2).sum(0)
                probev = s2 * float((proj / (lam + rho) ** 2)[keep].sum()) / m
            else:
                # independent route: the pseudo-inverse of J_fit (s > sqrt(rcond) s_max)
                pinv = np.linalg.pinv(Ff, rcond=1e-5)
                rank = int((lam > 1e-10 * lam.max()).sum())
                fitv = s2 * rank / n
                probev = s2 * float(((Fp @ pinv) ** 2).sum()) / m
            out[name] = {"fit": fitv, "probe": probev}
    stab = float(dprobe.sum() / dfit.sum())
    return out, stab


def main():
    outdir = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = np.random.default_rng(seed)
    offs, p = offsets()
    os.makedirs(outdir, exist_ok=True)
    w = {t: rng.normal(size=SHAPES[t]).astype("<f4") for t in LAYOUT}
    # ties in |w| so that the prune rule's tie order is exercised
    w["layer.0.weight"][0, :4] = [0.5, -0.5, 0.5, -0.5]
    w["layer.1.weight"][0, :2] = [0.5, -0.5]
    var = {t: rng.uniform(0, 1e-3, size=SHAPES[t]) for t in LAYOUT}
    mask = {t: (rng.uniform(size=SHAPES[t]) < 0.2).astype("u1") for t in LAYOUT}
    write_safetensors(os.path.join(outdir, "weights.safetensors"), w)
    write_safetensors(os.path.join(outdir, "variances.safetensors"), var)
    write_safetensors(os.path.join(outdir, "mask.safetensors"), mask)
    wflat = np.concatenate([w[t].astype(np.float64).ravel() for t in LAYOUT])
    vflat = np.concatenate([var[t].ravel() for t in LAYOUT])
    mflat = np.concatenate([mask[t].ravel() for t in LAYOUT])

    # Jacobians with decaying column scales (realistic conditioning, still full rank)
    scale = np.exp(-np.linspace(0, 2, p))
    Jf = rng.normal(size=(N_FIT, K, p)) * scale
    Jp = rng.normal(size=(N_PROBE, K, p)) * scale
    ref = {"layout": LAYOUT, "models": MODELS}
    np.save(os.path.join(outdir, "f64_fit.npy"), Jf.astype("<f8"))
    np.save(os.path.join(outdir, "f64_probe.npy"), Jp.astype("<f8"))
    ref["f64"], s64 = references(Jf, Jp, wflat, vflat, mflat)
    Jf32, Jp32 = Jf.astype("<f4"), Jp.astype("<f4")
    for name, J in (("f32_fit", Jf32), ("f32_probe", Jp32)):
        tensors = {t: J[:, :, offs[t][0]:offs[t][0] + offs[t][1]].reshape(
            (J.shape[0], K) + SHAPES[t]) for t in sorted(LAYOUT, reverse=True)}
        write_safetensors(os.path.join(outdir, name + ".safetensors"), tensors)
    ref["f32"], s32 = references(Jf32.astype(np.float64), Jp32.astype(np.float64), wflat, vflat,
                                 mflat)
    ref["stability"] = {"f64": s64, "f32": s32}
    ref["n_fit"], ref["n_probe"] = N_FIT, N_PROBE
    with open(os.path.join(outdir, "ref.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main()
