"""tpv_export: write PyTorch models in the formats tpvd reads (DESIGN.md section 4).

    import torch, tpv_export
    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    tpv_export.export_sequential(net, "out/w64", input_shape=[20])   # spec.json + weights.safetensors
    tpv_export.save_inputs(x_fit, "out/x_fit.npy")
    tpv_export.export_onnx(any_model, x_fit[:1], "out/model.onnx")   # any nn.Module (CNNs, ResNets...)
    tpv_export.export_jacobian(any_model, x_fit, "out/jac_fit.safetensors")  # a dump, any nn.Module

Checkpoints: an nn.Sequential of Linear, ReLU, LeakyReLU, Tanh, Sigmoid, GELU (erf), Softplus
(beta=1, threshold=20), Identity, Flatten, Dropout (identity at inference) becomes a
`tpv.sequential/v1` spec plus safetensors weights named like its state_dict keys.  Any other
model is exported as ONNX (`export_onnx`: torch.onnx.export keeping batch norm and the
state_dict names, plus the list of perturbed parameters) or as a per-parameter Jacobian dump: one
tensor per parameter, shape (n, K, *param.shape), computed with autograd.  No exporter changes the
model's train/eval mode.

Needs torch and numpy; safetensors files are written directly (8-byte little-endian header length,
JSON header, raw little-endian data), so the safetensors package is not needed.
"""

import json
import os
import struct

import numpy as np
import torch

__all__ = ["export_sequential", "sequential_spec", "save_safetensors", "save_inputs",
           "export_onnx", "export_jacobian", "UnsupportedModule"]

_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
           torch.float64: "F64", torch.uint8: "U8", torch.bool: "BOOL"}
# Integer buffers of a state_dict (BatchNorm's num_batches_tracked) are bookkeeping, not weights.
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


class UnsupportedModule(ValueError):
    """A module the sequential spec cannot express: export a Jacobian dump instead."""


def save_safetensors(tensors, path, metadata=None):
    """Writes {name: tensor} as safetensors, tensors in name order, 8-byte aligned header.
    Integer tensors (such as BatchNorm's num_batches_tracked) are skipped: tpvd reads float
    tensors only, and they carry no weights."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype in _INTEGER_DTYPES:
            continue
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} is not supported by safetensors export")
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)
    os.replace(tmp, path)


def save_inputs(x, path):
    """Writes an input set (n, *input_shape) as a little-endian C-order .npy (float32/float64)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype not in (np.float16, np.float32, np.float64):
        arr = arr.astype(np.float32)
    np.save(path, np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))))


def _layer_of(module, prefix):
    nn = torch.nn
    if isinstance(module, nn.Linear):
        layer = {"type": "linear", "weight": prefix + "weight"}
        if module.bias is not None:
            layer["bias"] = prefix + "bias"
        return layer
    if isinstance(module, nn.ReLU):
        return {"type": "relu"}
    if isinstance(module, nn.LeakyReLU):
        return {"type": "leaky_relu", "negative_slope": float(module.negative_slope)}
    if isinstance(module, nn.Tanh):
        return {"type": "tanh"}
    if isinstance(module, nn.Sigmoid):
        return {"type": "sigmoid"}
    if isinstance(module, nn.GELU):
        if getattr(module, "approximate", "none") != "none":
            raise UnsupportedModule(f"{prefix}: GELU(approximate='tanh') is not supported")
        return {"type": "gelu"}
    if isinstance(module, nn.Softplus):
        if module.beta != 1 or module.threshold != 20:
            raise UnsupportedModule(f"{prefix}: Softplus needs beta=1, threshold=20")
        return {"type": "softplus"}
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return {"type": "identity"}
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedModule(f"{prefix}: Flatten must flatten all but the batch dimension")
        return {"type": "flatten"}
    raise UnsupportedModule(f"{prefix or 'model'}: {type(module).__name__} is not a sequential "
                            "spec layer; export a Jacobian dump with export_jacobian instead")


def sequential_spec(model, input_shape, prefix=""):
    """The tpv.sequential/v1 spec of an nn.Sequential whose state_dict keys start with prefix."""
    if not isinstance(model, torch.nn.Sequential):
        raise UnsupportedModule("only nn.Sequential models have a spec; use export_jacobian")
    layers = [_layer_of(m, f"{prefix}{name}.") for name, m in model.named_children()]
    return {"format": "tpv.sequential/v1", "input_shape": [int(d) for d in input_shape],
            "layers": layers}


def export_sequential(model, out_dir, input_shape, prefix="", dtype=None):
    """Writes out_dir/spec.json and out_dir/weights.safetensors; returns their paths.
    dtype (e.g. torch.float32) converts the weights; default keeps them as they are."""
    os.makedirs(out_dir, exist_ok=True)
    spec = sequential_spec(model, input_shape, prefix)
    state = {prefix + k: (v.to(dtype) if dtype else v) for k, v in model.state_dict().items()}
    spec_path = os.path.join(out_dir, "spec.json")
    weights_path = os.path.join(out_dir, "weights.safetensors")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    save_safetensors(state, weights_path, metadata={"format": "tpv.sequential/v1"})
    return spec_path, weights_path


class _InferenceMode:
    """Puts every submodule in eval mode for the block and then restores each one's own mode
    (model.train(flag) would overwrite a mix such as frozen batch norm inside a training model)."""

    def __init__(self, model):
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]

    def __enter__(self):
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for m, training in self.modes:
            m.training = training
        return False


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _metadata_prop(key, value):
    """A serialized ModelProto.metadata_props entry (field 14, StringStringEntryProto {key = 1,
    value = 2}).  Protocol buffers concatenate repeated fields wherever they appear in a message,
    so appending this to a serialized ModelProto adds the entry without the onnx package."""
    k, v = key.encode(), value.encode()
    entry = b"\x0a" + _varint(len(k)) + k + b"\x12" + _varint(len(v)) + v
    return b"\x72" + _varint(len(entry)) + entry


def export_onnx(model, example_input, path, opset=17, dynamic_batch=True):
    """Writes any nn.Module as an ONNX model for `add_candidate(..., onnx=path)`.

    The graph is the model's inference function (batch norm with its running statistics, dropout
    off), exported by torch.onnx.export with training=PRESERVE around eval mode and
    do_constant_folding=False, so batch norm stays a BatchNormalization node and every initializer
    keeps its state_dict name; the batch dimension is dynamic unless dynamic_batch=False.  The
    metadata key `tpv.parameters` lists the names of named_parameters() that require grad: the
    parameters tpvd perturbs (batch-norm running statistics are buffers, not parameters).  The
    model's train/eval mode is left as it was.  Returns path."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(example_input)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    tmp = path + ".tmp"
    with _InferenceMode(model), torch.no_grad():
        torch.onnx.export(model, (x,), tmp, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes, export_params=True,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    with open(tmp, "ab") as f:
        f.write(_metadata_prop("tpv.parameters", json.dumps(names)))
    os.replace(tmp, path)
    return path


def export_jacobian(model, inputs, path, dtype=torch.float64, params=None):
    """Writes a per-parameter Jacobian dump of model over inputs: tensors named like the model's
    parameters, each of shape (n, K, *param.shape), from one backward pass per (sample, output).
    The Jacobian is the inference function's (eval mode for the computation; the model's own
    train/eval mode is restored afterwards); K is the flattened output size."""
    with _InferenceMode(model):
        return _export_jacobian(model, inputs, path, dtype, params)


def _export_jacobian(model, inputs, path, dtype, params):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is not None:
        named = [(n, p) for n, p in named if n in set(params)]
    x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(inputs)
    x = x.to(next(model.parameters()).dtype)
    n = x.shape[0]
    with torch.no_grad():
        K = model(x[:1]).reshape(-1).numel()
    out = {name: torch.zeros((n, K) + tuple(p.shape), dtype=dtype) for name, p in named}
    tensors = [p for _, p in named]
    for i in range(n):
        y = model(x[i:i + 1]).reshape(-1)
        for k in range(K):
            grads = torch.autograd.grad(y[k], tensors, retain_graph=k + 1 < K, allow_unused=True)
            for (name, p), g in zip(named, grads):
                if g is not None:
                    out[name][i, k] = g.to(dtype)
    save_safetensors(out, path, metadata={"format": "tpv.jacobian/v1", "n": n, "K": K})
    return path
