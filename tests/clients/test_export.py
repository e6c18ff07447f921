#!/usr/bin/python3
"""Tests of clients/python/tpv_export.py that need no daemon: ONNX export of models that are not
nn.Sequential (a CNN with batch norm and a residual block, torchvision's ResNet-18), the
tpv.parameters metadata, the model's train/eval mode left as it was, safetensors of a state_dict
with integer buffers, and export_jacobian's mode.  Reads the ONNX files back with Debian's
python3-onnx (onnx.load + onnx.checker), an implementation independent of the exporter.
"""
import json
import os
import sys
import tempfile

import torch

ROOT = os.environ.get("TPV_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import tpv_export  # noqa: E402

import onnx  # noqa: E402  (python3-onnx)

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.block = Block(8)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.stem(x))))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(self.drop(x))


def modes(model):
    return [m.training for m in model.modules()]


def metadata(model_proto):
    return {p.key: p.value for p in model_proto.metadata_props}


def graph_names(model_proto):
    g = model_proto.graph
    names = {i.name for i in g.initializer}
    names |= {o for n in g.node if n.op_type == "Identity" for o in n.output}
    return names


def test_cnn(tmp):
    torch.manual_seed(0)
    net = SmallCNN()
    net.train()
    net.bn.eval()  # a mixed mode must survive the export as it is
    before = modes(net)
    path = tpv_export.export_onnx(net, torch.randn(2, 3, 8, 8), os.path.join(tmp, "cnn.onnx"))
    check(modes(net) == before, "export_onnx leaves every submodule's train/eval mode as it was")
    m = onnx.load(path)
    onnx.checker.check_model(m)
    check(True, "onnx.checker accepts the exported CNN")
    want = [n for n, p in net.named_parameters() if p.requires_grad]
    got = json.loads(metadata(m).get("tpv.parameters", "null"))
    check(got == want, f"tpv.parameters lists named_parameters() in order ({len(want)} names)")
    check("bn.running_mean" not in got, "batch-norm running statistics are not parameters")
    ops = [n.op_type for n in m.graph.node]
    check(ops.count("BatchNormalization") == 3, "the three batch norms stay BatchNormalization nodes")
    check(all(a.name != "training_mode" or a.i == 0 for n in m.graph.node for a in n.attribute),
          "batch norm exported in inference mode (training_mode 0)")
    check("Dropout" not in ops or all(
        len(n.output) == 1 for n in m.graph.node if n.op_type == "Dropout"),
        "dropout exported for inference")
    names = graph_names(m)
    check(set(want) <= names, "every parameter keeps its state_dict name in the graph")
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    check(dim0.dim_param != "" and dim0.dim_value == 0, "the batch dimension is dynamic")
    check(m.opset_import[0].version == 17, "opset 17 by default")

    fixed = tpv_export.export_onnx(net, torch.randn(1, 3, 8, 8), os.path.join(tmp, "cnn1.onnx"),
                                   opset=13, dynamic_batch=False)
    m1 = onnx.load(fixed)
    dim0 = m1.graph.input[0].type.tensor_type.shape.dim[0]
    check(dim0.dim_value == 1, "dynamic_batch=False exports a fixed batch of 1")
    check(m1.opset_import[0].version == 13, "opset 13 on request")


def test_resnet18(tmp):
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    before = modes(net)
    path = tpv_export.export_onnx(net, torch.randn(1, 3, 32, 32), os.path.join(tmp, "r18.onnx"))
    check(modes(net) == before, "ResNet-18 stays in eval mode")
    m = onnx.load(path)
    onnx.checker.check_model(m)
    want = [n for n, p in net.named_parameters()]
    got = json.loads(metadata(m)["tpv.parameters"])
    check(got == want, f"ResNet-18: tpv.parameters has all {len(want)} parameters")
    # A fresh ResNet has equal batch-norm weights, which the exporter deduplicates into one
    # initializer plus an Identity per parameter: every name must still be in the graph.
    check(set(want) <= graph_names(m), "ResNet-18: every parameter name is in the graph "
          "(initializer or Identity alias)")


def test_safetensors_skips_integer_buffers(tmp):
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    path = os.path.join(tmp, "bn.safetensors")
    tpv_export.save_safetensors(net.state_dict(), path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    check("1.num_batches_tracked" not in header, "num_batches_tracked is skipped")
    check("1.running_mean" in header and "0.weight" in header, "float tensors are written")


def test_export_jacobian_keeps_mode(tmp):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    net.train()
    tpv_export.export_jacobian(net, torch.randn(3, 3), os.path.join(tmp, "jac.safetensors"))
    check(net.training and all(m.training for m in net.modules()),
          "export_jacobian leaves a training model in training mode")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        test_cnn(tmp)
        test_resnet18(tmp)
        test_safetensors_skips_integer_buffers(tmp)
        test_export_jacobian_keeps_mode(tmp)
    if FAILURES:
        print(f"{len(FAILURES)} failed")
        sys.exit(1)
    print("all export checks passed")


if __name__ == "__main__":
    main()
