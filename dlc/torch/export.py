"""A spec as a standalone PyTorch file: `class Net(nn.Module)` that imports only torch.

One attribute per layer that has a module (named after the layer, dots as underscores), the spec text
beside it; `forward` in graph order, a chain flowing through `x` and a value that a later merge reads
kept under its layer's name; `Net.load_dlc(path)` / `save_dlc(path)` convert dlc checkpoints both
ways through the table of where each dlc tensor lives. Each kind's code comes from MODULES
(dlc.torch.modules); the helpers every file carries (dlc/torch/netlib.py, copied verbatim) come
before the class. The torch trainer runs this same text, so what it trains is what the export writes.
Nothing a user wrote or named reaches the text but the spec's own words (the grammar's ASCII names,
checked numbers) and comments escaped by comment_text.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from dlc import __version__
from dlc.errors import DlcError
from dlc.graph import Graph, Node
from dlc.atomic import atomic_write
from dlc.layers import KINDS, param_count
from dlc.torch.modules import MODULES, TorchLayer

FUSED_OUTPUTS = ("softmax", "sigmoid")  # final activations a fused loss reads the input of
# Names a layer cannot take as an attribute of an nn.Module or a local of forward.
RESERVED = frozenset({"x", "logits", "self", "torch", "nn", "F", "math", "forward", "training", "train", "eval",
                      "to", "type", "float", "double", "half", "cuda", "cpu", "apply", "parameters", "buffers",
                      "children", "modules", "state_dict", "load_dlc", "save_dlc", "from_dlc", "to_dlc",
                      "lrn", "last_states", "zipfile", "json", "ast", "ctypes", "len"})


def identifiers(graph: Graph) -> dict[str, str]:
    """A Python identifier per node name: dots and other marks as underscores, unique."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for n in graph.nodes:
        # ASCII alone: \w takes letters Python refuses in a name, or folds (NFKC) into another one
        ident = re.sub(r"[^A-Za-z0-9_]", "_", n.name)
        if ident[0].isdigit() or keyword.iskeyword(ident) or ident in RESERVED:
            ident += "_"
        while ident in taken:
            ident += "_"
        taken.add(ident)
        out[n.name] = ident
    return out


def layers(graph: Graph) -> dict[str, TorchLayer]:
    """Each node's TorchLayer, from MODULES."""
    out = {}
    for n, ins in _inputs(graph):
        if n.kind == "input":  # an argument of forward itself
            continue
        make = MODULES.get(n.kind)
        if make is None:
            raise DlcError(f"the PyTorch export has no mapping for `{n.kind}` (layer {n.name})", n.pos,
                           graph.file, graph.source)
        out[n.name] = make(n, ins)
    return out


def tensor_table(graph: Graph) -> list[tuple]:
    """(dlc name, torch name, direction, rows, gates) for every tensor, in node order."""
    idents, table = identifiers(graph), []
    for name, layer in layers(graph).items():
        table += [(f"{name}.{t.param}", f"{idents[name]}.{t.attr}", t.direction, t.rows, t.gates)
                  for t in layer.tensors]
    return table


def comment_text(text: str) -> str:
    """Text as it may stand in a comment of the generated file: each character Python would read as a
    line break (\\n, \\r), or refuse (NUL, a lone surrogate), and every other unprintable one is written
    as its escape, so that nothing a user named or wrote (a file name, a spec's comment, a checkpoint's
    metadata) can end the comment and become code."""
    return "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in text)


def _comment(node: Node) -> str:
    return f"  # {comment_text(node.text)}" if node.text and node.row == node.name else ""


def _init_lines(graph: Graph, made: dict[str, TorchLayer], idents: dict[str, str]) -> list[str]:
    """__init__'s body: each module, then each tensor it shares made the owner's Parameter itself
    (as Hugging Face ties GPT-2's output layer), so that it counts once and its gradients sum."""
    lines = []
    for n in graph.nodes:
        if n.kind == "input":
            continue
        layer = made[n.name]
        if layer.module:
            lines.append(f"self.{idents[n.name]} = {layer.module}{_comment(n)}")
        owners = KINDS[n.kind].shared(n.attrs)
        for attr, param in layer.shared:
            owner, owner_param = owners[param].rsplit(".", 1)
            owner_attr = next(t.attr for t in made[owner].tensors if t.param == owner_param)
            lines.append(f"self.{idents[n.name]}.{attr} = self.{idents[owner]}.{owner_attr}  # shares {owners[param]}")
    return lines


def _forward_lines(graph: Graph, made: dict[str, TorchLayer], idents: dict[str, str]) -> list[str]:
    """forward's body: a value read only by the next layer flows through `x`; others keep a name."""
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.nodes):
        for name in n.inputs:
            readers.setdefault(name, []).append(i)
    var: dict[str, str] = {}
    lines = []
    fused = graph.output.kind in FUSED_OUTPUTS and len(graph.outputs) == 1
    several = len(graph.inputs) > 1
    ends = {n.name for n in graph.outputs[:-1]}  # an output that a later layer reads keeps its own name
    for i, n in enumerate(graph.nodes):
        if several and n.kind == "input":  # an argument of forward, by its name
            var[n.name] = idents[n.name]
            continue
        chained = readers.get(n.name) == [i + 1] and graph.nodes[i + 1].inputs == [n.name] and n.name not in ends
        var[n.name] = "x" if chained or i == len(graph.nodes) - 1 else idents[n.name]
        if i == 0:
            if var[n.name] != "x":
                lines.append(f"{var[n.name]} = x")
            continue
        ins = [var[name] for name in n.inputs]
        expr = made[n.name].forward.format(m=f"self.{idents[n.name]}", x=ins[0], xs=", ".join(ins),
                                           plus=" + ".join(ins))
        if i == len(graph.nodes) - 1 and fused:
            lines.append("if logits:  # the fused loss reads the input of the final activation")
            lines.append(f"    return {ins[0]}")
        lines.append(f"{var[n.name]} = {expr}{_comment(n)}")
    lines.append(f"return {', '.join(var[n.name] for n in graph.outputs)}")  # a tuple in `output`'s order
    return lines


def pytorch_source(graph: Graph) -> str:
    """The text of the standalone file for `graph`."""
    made, idents = layers(graph), identifiers(graph)
    inits = _init_lines(graph, made, idents)
    table = tensor_table(graph)
    idents = identifiers(graph)
    dtypes = {n.name: "torch.int64" if n.dtype.startswith("int") else "torch.float32" for n in graph.inputs}
    if len(graph.inputs) == 1:
        args = "x"
        about = f'input_shape = {tuple(graph.input.out_shape)!r}  # one sample, batch left out\n' \
                f'    input_dtype = {dtypes[graph.input.name]}'
    else:  # forward takes one tensor per input, named as the spec labels them
        args = ", ".join(idents[n.name] for n in graph.inputs)
        about = (f'input_shapes = {{{", ".join(f"{idents[n.name]!r}: {tuple(n.out_shape)!r}" for n in graph.inputs)}}}'
                 f'  # one sample each, batch left out\n'
                 f'    input_dtypes = {{{", ".join(f"{idents[n.name]!r}: {dtypes[n.name]}" for n in graph.inputs)}}}')
    shapes_doc = ", ".join(
        f"{'x' if len(graph.inputs) == 1 else idents[n.name]}: "
        + (f"{' x '.join(map(str, n.out_shape))}, one for every sample" if n.attrs.get("shared") else
           f"N x {' x '.join(map(str, n.out_shape)) or '(one number)'}")
        + f" ({dtypes[n.name].split('.')[1]})" for n in graph.inputs)
    spec = "\n".join(f"# {comment_text(line)}".rstrip() for line in graph.source.rstrip().splitlines())
    indent = "\n        "
    fused = graph.output.kind in FUSED_OUTPUTS and len(graph.outputs) == 1
    signature = f"self, {args}, logits: bool = False" if fused else f"self, {args}"
    logits_doc = (" logits=True stops before the final\n        "
                  f"{graph.output.kind} (the fused loss reads its input).") if fused else ""
    returns_doc = (f" Returns ({', '.join(graph.output_names)}), the spec's outputs in order."
                   if len(graph.outputs) > 1 else "")
    # The docstring is fixed text: the file's name, which may hold quotes and backslashes, is only
    # ever written through comment_text.
    return f'''"""A dlc spec as a PyTorch module, written by `dlc export --format pytorch` (dlc {__version__}).

Net.load_dlc(path) builds a Net with the weights of a dlc checkpoint (.npz), net.load_dlc(path) loads
them into net; net.save_dlc(path) writes one that dlc reads (export, infer, train --resume). The file
needs torch alone.
"""
# The spec, {comment_text(Path(graph.file).name)}:
{spec}

import ast
import ctypes
import json
import math
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

{NETLIB}

class Net(nn.Module):
    {about}
    # (dlc tensor, torch tensor, direction, rows, gate order): where each tensor of a dlc checkpoint
    # lives; recurrent kinds keep one matrix per direction, torch's gate order and the biases apart.
    DLC_TENSORS = (
        {indent.join(f"{row!r}," for row in table) if table else ""}
    )
    DLC_STATE = {state_names(graph)!r}  # the non-trainable ones

    def __init__(self):
        super().__init__()
        {indent.join(inits) if inits else "pass"}

    def forward({signature}):
        """{shapes_doc}.{logits_doc}{returns_doc}"""
        {indent.join(_forward_lines(graph, made, idents))}

    @class_or_instance_method
    def load_dlc(net, path) -> "Net":
        """Net.load_dlc(path): a new Net with the weights of a dlc checkpoint; net.load_dlc(path): those
        weights in net itself, as load_state_dict does (net is returned)."""
        net = net() if isinstance(net, type) else net
        net.from_dlc(read_npz(path)[0])
        return net

    def save_dlc(self, path) -> None:
        """Write the weights as a dlc checkpoint."""
        write_npz(path, self.to_dlc(), {{"schema": "dlc.checkpoint/1", "state_tensors": sorted(self.DLC_STATE)}})

    def from_dlc(self, arrays: dict) -> None:
        """Copy dlc's tensors (by dlc name) into this module's parameters and buffers."""
        mine = dict(self.named_parameters()) | dict(self.named_buffers())
        with torch.no_grad():
            for key, t in to_torch_layout(self.DLC_TENSORS, arrays).items():
                mine[key].copy_(t)

    def to_dlc(self) -> dict:
        """This module's parameters and buffers as dlc's tensors (by dlc name)."""
        mine = dict(self.named_parameters()) | dict(self.named_buffers())
        return {{k: v.detach().clone() for k, v in to_dlc_layout(self.DLC_TENSORS, mine).items()}}
'''


def write_pytorch(graph: Graph, output: str, **onnx_only) -> list[str]:
    """Write the file; the lines to print. The file holds no weights: Net.load_dlc reads a checkpoint."""
    given = [f"--{k}" for k, v in onnx_only.items() if v is not None]
    if given:
        raise DlcError(f"{', '.join(given)}: the pytorch format writes the network's code alone; "
                       "load weights in Python with Net.load_dlc(CKPT)")
    folder = Path(output).resolve().parent
    if not folder.is_dir():
        raise DlcError(f"cannot write {output}: no folder {folder}")
    with atomic_write(output) as f:  # UTF-8, as Python reads source, whatever the locale's encoding
        f.write(pytorch_source(graph).encode("utf-8"))
    trainable, fixed = (sum(c) for c in zip(*(param_count(KINDS[n.kind], n.attrs, ins)
                                               for n, ins in _inputs(graph))))
    return [f"wrote {output}: class Net, {len(graph.nodes) - len(graph.inputs)} layers, {trainable:,} params + {fixed:,} "
            "non-trainable (weights: Net.load_dlc(CKPT))"]


def _inputs(graph: Graph):
    shapes = {n.name: n.out_shape for n in graph.nodes}
    return [(n, [shapes[i] for i in n.inputs]) for n in graph.nodes]


def state_names(graph: Graph) -> tuple[str, ...]:
    """The graph's non-trainable tensors (bn statistics) by dlc name, as the registry names them."""
    return tuple(f"{n.name}.{k}" for n, ins in _inputs(graph) for k in KINDS[n.kind].state(n.attrs, ins))


NETLIB = (Path(__file__).parent / "netlib.py").read_text(encoding="utf-8")  # holds Kᵀ: not the locale's encoding
