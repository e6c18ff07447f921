#!/usr/bin/python3
"""make_tensors.py OUTDIR: NumPy-written reference tensors for tests/unit/test_tensor.c.

Run with Debian's /usr/bin/python3 (python3-numpy).  For every NAME.npy / NAME.safetensors written
here, NAME.txt holds the expected shape and values that the C reader must reproduce:
    shape D0 D1 ...          (just "shape" for a scalar)
    one float.hex() per element, C order
Files that the reader must refuse are listed in refuse.txt as "NAME SUBSTRING-OF-THE-ERROR".
"""
import json
import struct
import sys

import numpy as np


def expect(outdir, name, arr):
    with open(f"{outdir}/{name}.txt", "w") as f:
        f.write(" ".join(["shape"] + [str(d) for d in arr.shape]) + "\n")
        for x in np.ascontiguousarray(arr).reshape(-1):
            f.write(float(x).hex() + "\n")


def save(outdir, name, arr, version=None):
    path = f"{outdir}/{name}.npy"
    if version is None:
        np.save(path, arr)
    else:
        with open(path, "wb") as f:
            np.lib.format.write_array(f, arr, version=version)
    expect(outdir, name, arr)


def save_safetensors(outdir, name, tensors):
    """Minimal writer following the safetensors spec (the package is not a dependency):
    tensors in the given order, contiguous, header padded with spaces to a multiple of 8."""
    header, blobs, offset = {"__metadata__": {"format": "np"}}, [], 0
    dtypes = {np.dtype("<f2"): "F16", np.dtype("<f4"): "F32", np.dtype("<f8"): "F64",
              np.dtype("u1"): "U8", np.dtype("bool"): "BOOL"}
    for tname, arr in tensors:
        data = np.ascontiguousarray(arr).tobytes()
        header[tname] = {"dtype": dtypes[arr.dtype], "shape": list(arr.shape),
                         "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(f"{outdir}/{name}.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    for tname, arr in tensors:
        expect(outdir, f"{name}.{tname}", arr)


def main():
    outdir = sys.argv[1]
    rng = np.random.default_rng(20240611)
    save(outdir, "f32_v1", rng.standard_normal((3, 4)).astype(np.float32))
    save(outdir, "f64_v2", rng.standard_normal((2, 3, 5)), version=(2, 0))
    save(outdir, "f32_v3", rng.standard_normal((7,)).astype(np.float32), version=(3, 0))
    # float16 edge values: subnormals, the largest finite, signed zero
    save(outdir, "f16_v1", np.array([0.0, -0.0, 1.0, -2.5, 6e-8, 6.1e-5, 65504.0, 1 / 3],
                                    dtype=np.float16).reshape(2, 4))
    save(outdir, "f64_scalar", np.array(3.25))
    save(outdir, "f32_empty", np.zeros((0, 3), dtype=np.float32))
    save(outdir, "u8", np.arange(10, dtype=np.uint8))
    save(outdir, "bool", np.array([True, False, True]))
    save_safetensors(outdir, "model", [
        ("net.0.weight", rng.standard_normal((4, 3)).astype(np.float32)),
        ("net.0.bias", rng.standard_normal((4,)).astype(np.float16)),
        ("net.2.weight", rng.standard_normal((2, 4))),
    ])

    np.save(f"{outdir}/fortran.npy", np.asfortranarray(np.ones((3, 2), dtype=np.float32)))
    np.save(f"{outdir}/bigendian.npy", np.ones(3, dtype=">f4"))
    np.save(f"{outdir}/int64.npy", np.arange(3, dtype=np.int64))
    np.save(f"{outdir}/object.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with open(f"{outdir}/refuse.txt", "w") as f:
        f.write("fortran fortran_order\nbigendian big-endian\nint64 unsupported dtype\n"
                "object object dtype\n")


if __name__ == "__main__":
    main()
