"""Attention, a few dozen operators that every exporter lays out its own way (or ONNX's one Attention
operator, opset 23), is found by its softmax (or that operator) and then run beside dlc's kernel on a
random input (import_attention), so what is not dlc's attention is refused at its first operator rather
than taken apart into other layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dlc.decompile import SpecLayer
from dlc.engine.kernels import Ctx, KERNELS
from dlc.errors import ShapeError
from dlc.layers import KINDS
from dlc.layers.sequence import ROPE_THETA
from dlc.onnx.importing.dense import dense_parts
from dlc.onnx.importing.reader import Found, Reader, Refused, other_input, producer_node
from dlc.onnx.model import attributes


# Operators that move values without changing them: the layouts between a layer's input and its
# projections, and between the joined heads and the output projection.
LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")


# Between a projection and the scores (or the values): its bias, the heads split out, one part of a
# packed projection taken (Split, or SplitToSequence and SequenceAt in dynamo's unoptimised graphs), the
# scale (TorchScript multiplies q and k by the square root of it each), rotary positions (RotaryEmbedding,
# or x·cos + rotate_half(x)·sin: Split or Slice, Neg, Concat, Mul, Add) and grouped key/value heads
# repeated to the query heads (Expand, Tile).
TO_HEADS = (*LAYOUT, "Add", "Gather", "Slice", "Split", "SplitToSequence", "SequenceAt", "Mul", "Div", "Cast", "Neg",
            "Concat", "Expand", "Tile", "RotaryEmbedding")


# Between the scores and the softmax: the scale, and a mask added or put in with Where (Reshape: Swin's
# scores seen by window to add the shifted windows' mask).
TO_SOFTMAX = ("Mul", "Div", "Add", "Sub", "Where", "Cast", "Reshape")


# An attention's own softmax is a few dozen operators after its first one (about 25 in TorchScript's
# layout); a search that goes on longer has left the layer.
SEARCH = 200


# The model's operators and dlc's kernel, run on one random input, agree to float32 rounding (1e-6
# here); a mask, scale or head split dlc's attention does not have differs by tens of percent.
AGREE = 1e-3


def live_inputs(r: Reader, n: onnx.NodeProto) -> list[str]:
    return [i for i in n.input if i in r.live]


def stored_dense(r: Reader, n: onnx.NodeProto | None) -> bool:
    """A MatMul or Gemm by a stored 2-D weight: a projection."""
    if n is None or n.op_type not in ("MatMul", "Gemm") or len(live_inputs(r, n)) != 1 or n.input[0] not in r.live:
        return False
    w = r.value(n.input[1])
    return w is not None and w.ndim == 2


# What a model does to a padding mask (1 keep, 0 pad) before adding it to the scores: Hugging Face's BERT
# writes (1 - mask[:, None, None, :]) * the lowest float; others compare, negate or select.
MASK_PREPARATION = ("Unsqueeze", "Cast", "Sub", "Mul", "Not", "Equal", "Where", "Expand", "Reshape")

# The operators a search for the attention itself starts at (its projections and their input's layout;
# Slice: the roll of Swin's shifted windows; Gather: dlc's own windows, the steps gathered into them).
STARTS = ("Transpose", "Reshape", "MatMul", "Gemm", "Slice", "Gather")


def padding_mask_input(r: Reader, name: str) -> str | None:
    """The model's input a tensor is prepared from by MASK_PREPARATION operators (with constants): an
    integer or boolean input of one value per step that no embedding reads; None if it is not one."""
    while name not in r.g.inputs:
        p = producer_node(r, name)
        if p is None or p.op_type not in MASK_PREPARATION or len(live_inputs(r, p)) != 1:
            return None
        name = live_inputs(r, p)[0]
    readers = r.consumers.get(name, [])
    if r.g.tensors[name].is_float or len(r.shape(name)) != 1 or any(c.op_type == "Gather" for c in readers):
        return None
    return name


def import_attention(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Attention (attention_layer), or a step in the preparation of its padding mask, which passes the mask
    on: dlc's attention takes the mask as the data gives it (`mask=LABEL`)."""
    if n.op_type in MASK_PREPARATION and padding_mask_input(r, n.output[0]) is not None:
        return Found(None, [n], n.output[0])
    return attention_layer(r, n) if n.op_type in STARTS else None


def attention_layer(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Multi-head self-attention in whatever layout an exporter writes it (one packed or three
    projections, heads split by Reshape/Transpose or Gather/Slice, the scale anywhere, the causal mask
    as a constant to add or a Where): found by its softmax, the queries, keys and values traced back
    from the two products around it to their projections, and the subgraph from the input to the output
    projection evaluated once beside dlc's kernel on a random input, so that a mask, scale or head
    layout that dlc's attention does not have is refused, never imported wrongly."""
    inputs = live_inputs(r, n)
    if len(inputs) != 1 or len(r.shape(inputs[0])) != 2 and inputs[0] not in r.grids or \
            n.op_type == "Gather" and steps_order(r, n) is None:
        return None
    x = inputs[0]
    core = nearest_core(r, n)
    if core is None:
        return None
    branches = {"queries": core.queries, "keys": core.keys, "values": core.values}
    projections = {role: projection_of(r, t) for role, t in branches.items()}
    if None in projections.values():
        return None
    paths = {role: layout_path(r, p.input[0], x) for role, p in projections.items()}
    own = [role for role, path in paths.items() if path is not None]
    if not any(m is n for role in own for m in [*paths[role], projections[role]]):
        return None  # n is not where this attention starts (an fc before it, say)
    source = x
    if "queries" not in own and len(own) < 3:
        return None  # the keys' side of a cross-attention: the queries' side imports it (the source's layers first)
    if len(own) < 3:
        # cross-attention: keys and values from one other sequence (`from=`), found from its queries' side
        origins = {projections[role].input[0] for role in ("keys", "values")}
        source = origins.pop() if len(origins) == 1 else None
        # a source computed from the queries' own input (keys from fc(x)) is no other sequence: a spec's
        # step reads the current tensor and labelled ones, so it could not write both
        if own != ["queries"] or source is None or len(r.shape(source)) != 2 or depends_on(r, source, x):
            other = [role for role in projections if role not in own]
            raise Refused(f"its {' and '.join(other)} are not computed from the tensor its {' and '.join(own)} "
                          f"are, nor its keys and values from one sequence its queries do not come from, read "
                          f"after them (dlc's cross-attention, from=)")
    computed = next((p for p in projections.values() if not stored_dense(r, p)), None)
    if computed is not None:
        raise Refused(f"its projection `{computed.name}` multiplies by a weight the graph computes, not a stored one")
    y, out_proj = attention_output(r, core.output, x)
    region, shape_only, mask = attention_region(r, x, y, source)
    *grid, d = r.shape(x)
    t = int(np.prod(grid))
    values = core.scores
    if values is None:
        raise Refused(f"ONNX shape inference gives no shape for its scores (node `{core.node}`)")
    gathered = next((o for o in map(partial(steps_order, r), r.consumers.get(x, [])) if o is not None), None)
    windowed = x in r.grids or gathered is not None
    # Swin: a window's tokens; else the source's steps (the queries' own without from=)
    keys = full_shape(r, core.scores_tensor)[-1] if windowed else r.shape(source)[0]
    heads, rest = divmod(values, full_shape(r, x)[0] * t * keys)  # the batch, t x keys scores per head
    if rest or not heads or d % heads:
        raise Refused(f"its scores hold {values} values, not {t}x{keys} for each of a number of heads dividing "
                      f"its {d} features")
    tensors, stored = attention_weights(r, projections, out_proj, d, heads, r.shape(source)[-1])
    reads = {**({"from": source} if source != x else {}), **({"mask": mask} if mask else {})}
    # Layers laid out alike (every block of one model) are run once: what the run checks is the layout.
    layout = (heads, layout_key(r, region, x, stored))
    settings = r.checked.get(layout)
    if settings is None and windowed:
        grids = [r.shape(x)[:2]] if x in r.grids else grids_of(gathered, keys)
        settings = windows_checked(r, region, shape_only, x, y, tensors, heads, keys, grids)
    elif settings is None:
        settings = r.checked[layout] = attention_checked(r, region, shape_only, x, y, tensors, heads, core.masked,
                                                         reads)
    if "B" in settings:  # Swin's bias table, read off this layer's own constants
        tensors["B"] = settings.pop("B")
    computing = [m for m in region if any(o in r.live for o in m.output)]
    return Found(SpecLayer("attention", [], str(heads), {**settings, **biases_written(tensors)}), computing, y,
                 tensors, n.name, reads=reads)


def depends_on(r: Reader, name: str, x: str) -> bool:
    """Whether the computed tensor `name` is computed from x."""
    stack, seen = [name], set()
    while stack:
        t = stack.pop()
        if t == x:
            return True
        p = producer_node(r, t)
        if t in seen or p is None:
            continue
        seen.add(t)
        stack += live_inputs(r, p)
    return False


@dataclass
class Core:
    """Attention between its projections and its output projection: the queries, keys and values as the
    scores read them (heads split), the weighted values (heads not yet joined), how many scores it
    computes (None if shape inference does not say), and whether a mask lies on their way to the softmax."""

    queries: str
    keys: str
    values: str
    output: str
    scores: int | None
    masked: bool
    node: str  # the Softmax or Attention node, for messages
    scores_tensor: str = ""  # the product of queries and keys


def nearest_core(r: Reader, n: onnx.NodeProto) -> Core | None:
    """The attention around the first Softmax (attention_core) or ONNX Attention operator (operator_core)
    computed from n's output, breadth first, within SEARCH operators."""
    queue, seen = list(n.output), set()
    while queue and len(seen) < SEARCH:
        for c in r.consumers.get(queue.pop(0), []):
            if id(c) in seen or not any(o in r.live for o in c.output):
                continue
            if c.op_type == "Softmax":
                return attention_core(r, c)
            if c.op_type == "Attention" and c.domain in ("", "ai.onnx"):
                return operator_core(r, c)
            seen.add(id(c))
            queue += c.output
    return None


def operator_core(r: Reader, att: onnx.NodeProto) -> Core | None:
    """ONNX's Attention operator (opset 23), which the dynamo exporter writes for PyTorch's
    scaled_dot_product_attention from opset 23 on: queries, keys and values (batch, heads, T, head_dim),
    or (batch, T, features) with q_num_heads, a causal flag or a mask input; its other settings (scale,
    softcap, grouped heads) are for the evaluation beside dlc's kernel to accept or refuse."""
    if len(att.input) < 3 or any(i not in r.live for i in att.input[:3]):
        return None
    q, k = full_shape(r, att.input[0]), full_shape(r, att.input[1])
    a = attributes(att)
    heads = q[1] if q is not None and len(q) == 4 else a.get("q_num_heads")
    known = q is not None and k is not None and None not in (*q, *k) and heads is not None
    scores = q[0] * heads * q[-2] * k[-2] if known else None
    masked = bool(a.get("is_causal", 0)) or r.optional(att, 3)
    return Core(*att.input[:3], att.output[0], scores, masked, att.name)


def attention_core(r: Reader, softmax: onnx.NodeProto) -> Core | None:
    """Attention around a Softmax over the last axis: the product of queries and keys before it (through
    scale and mask), the product of the weights and the values after it; or None."""
    rank = len(full_shape(r, softmax.input[0]) or ())
    if attributes(softmax).get("axis", -1) % max(rank, 1) != rank - 1:
        return None
    found = scores_before(r, softmax.input[0])
    probs = softmax.output[0]
    after = r.only_consumer(probs)
    while after is not None and after.op_type in ("Cast", "Identity", "Dropout"):
        probs = after.output[0]
        after = r.only_consumer(probs)
    # other readers of the weights (returned with need_weights) are refused with the region
    weighted = next((c for c in r.consumers.get(probs, []) if c.op_type == "MatMul" and c.input[0] == probs
                     and len(live_inputs(r, c)) == 2), None)
    if found is None or weighted is None:
        return None
    scores, path = found
    scale_only = all(p.op_type == "Cast" or (p.op_type in ("Mul", "Div") and len(live_inputs(r, p)) == 1
                                              and elements(r, other_input(p, live_inputs(r, p)[0])) == 1)
                     for p in path)
    return Core(scores.input[0], scores.input[1], weighted.input[1], weighted.output[0],
                elements(r, scores.output[0]), not scale_only, softmax.name, scores.output[0])


def full_shape(r: Reader, name: str) -> tuple[int | None, ...] | None:
    """The tensor's shape with the batch (1) in it, as the model's operators see it; None if unknown."""
    t = r.g.tensors.get(name)
    return t.shape if t is not None else None


def elements(r: Reader, name: str) -> int | None:
    t = r.g.tensors.get(name)
    return t.elements if t is not None else None


def scores_before(r: Reader, name: str) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """The MatMul of two computed tensors that `name` comes from through scaling and masking, with the
    operators on the way."""
    p = producer_node(r, name)
    if p is None:
        return None
    if p.op_type == "MatMul" and len(live_inputs(r, p)) == 2:
        return p, []
    if p.op_type not in TO_SOFTMAX:
        return None
    for i in live_inputs(r, p):
        found = scores_before(r, i)
        if found is not None:
            return found[0], [p, *found[1]]
    return None


def projection_of(r: Reader, name: str) -> onnx.NodeProto | None:
    """The MatMul or Gemm that queries, keys or values come from, back through the ops that split heads;
    an op reading several computed tensors (rope's x·cos + rotate_half(x)·sin) must read them all from
    the one projection."""
    p = producer_node(r, name)
    if p is None or (p.op_type in ("MatMul", "Gemm") and p.input[0] in r.live):
        return p
    inputs = live_inputs(r, p)
    if p.op_type not in TO_HEADS or not inputs:
        return None
    found = [projection_of(r, i) for i in inputs]
    return found[0] if found[0] is not None and all(f is found[0] for f in found) else None


def layout_path(r: Reader, name: str, x: str) -> list[onnx.NodeProto] | None:
    """The layout operators that make `name` from x (none if it is x), or None if it is not x so moved;
    a roll of a token grid (Slices of one tensor concatenated: torch.roll) is one of them."""
    path = []
    while name != x:
        p = producer_node(r, name)
        rolled = rolled_from(r, p)
        if rolled is not None:
            path += [p, *(producer_node(r, i) for i in p.input)]
            name = rolled
            continue
        if steps_order(r, p) is not None:  # dlc's own export: the steps gathered into windows
            path.append(p)
            name = p.input[0]
            continue
        if p is None or p.op_type not in LAYOUT or len(live_inputs(r, p)) != 1:
            return None
        path.append(p)
        name = live_inputs(r, p)[0]
    return path


def steps_order(r: Reader, p: onnx.NodeProto | None) -> np.ndarray | None:
    """The stored permutation of a sequence's steps a Gather on axis 1 reads them in, or None."""
    if p is None or p.op_type != "Gather" or attributes(p).get("axis", 0) != 1 or p.input[0] not in r.live:
        return None
    order = r.value(p.input[1])
    shape = full_shape(r, p.input[0])
    if order is None or order.ndim != 1 or shape is None or len(shape) != 3 or \
            not np.array_equal(np.sort(order), np.arange(shape[1])):
        return None
    return order


def rolled_from(r: Reader, p: onnx.NodeProto | None) -> str | None:
    """The tensor a Concat of Slices of one tensor of the same shape rolls (torch.roll's export), or None."""
    if p is None or p.op_type != "Concat" or len(p.input) != 2:
        return None
    slices = [producer_node(r, i) for i in p.input]
    if any(m is None or m.op_type != "Slice" for m in slices) or slices[0].input[0] != slices[1].input[0]:
        return None
    source = slices[0].input[0]
    return source if full_shape(r, source) == full_shape(r, p.output[0]) else None


def attention_output(r: Reader, weighted: str, x: str) -> tuple[str, onnx.NodeProto]:
    """(the output, back in the input's layout, and the output projection) after the weighted sum."""
    after = r.only_consumer(weighted)
    while after is not None and after.op_type in LAYOUT:
        after = r.only_consumer(after.output[0])
    if not stored_dense(r, after):
        raise Refused("its heads, joined, are not projected by a stored weight (dlc's attention ends with Wo)")
    _, _, y = dense_parts(r, after)
    while full_shape(r, y) != full_shape(r, x):
        nxt = r.only_consumer(y)
        if nxt is None or nxt.op_type not in LAYOUT:
            raise Refused(f"its output is not brought back to its input's layout {full_shape(r, x)}")
        y = nxt.output[0]
    back = r.only_consumer(y)
    while back is not None and back.op_type in LAYOUT and full_shape(r, back.output[0]) == full_shape(r, x):
        back = r.only_consumer(back.output[0])  # a window as large as the sequence: Reshapes to itself
    if x not in r.grids and steps_order(r, back) is not None:  # dlc's own windows put back on their steps
        y = back.output[0]
    while x in r.grids:  # Swin's windows rolled back
        readers = r.consumers.get(y, [])
        join = {id(c): c for m in readers if m.op_type == "Slice" for c in r.consumers.get(m.output[0], [])}
        if len(readers) != 2 or len(join) != 1 or rolled_from(r, next(iter(join.values()))) != y:
            break
        y = next(iter(join.values())).output[0]
    return y, after


def attention_region(r: Reader, x: str, y: str, source: str) -> tuple[list[onnx.NodeProto], list[str], str | None]:
    """The operators that compute y from x and the source of keys and values (helpers included, and the
    preparation of a padding mask), in the model's order; the other computed tensors they read only the
    shape of; and the padding mask's input, if it reads one. Reading another computed tensor's values,
    or letting one of its own be read outside (the attention weights), is not dlc's attention."""
    downstream, queue = {x, source}, [x, source]
    while queue:
        for c in r.consumers.get(queue.pop(), []):
            new = [o for o in c.output if o in r.live and o not in downstream]
            downstream.update(new)
            queue += new
    region, shape_only, seen, stack, mask, shared = set(), set(), set(), [y], None, set()
    while stack:
        t = stack.pop()
        if t in seen or t in (x, source):
            continue
        seen.add(t)
        p = producer_node(r, t)
        if t in r.live and t not in downstream:
            found = padding_mask_input(r, t)
            if found is None or mask not in (None, found):
                raise Refused(f"it reads `{t}` besides its input: a sequence or a mask computed from the data "
                              f"other than a padding mask of one value per key (1 keep, 0 pad) and one "
                              f"sequence of keys and values (dlc's mask= and from=)")
            mask = found
            if p is None:
                continue
            shared.add(id(p))  # the mask's preparation, which every layer may read
        if p is None:
            continue
        region.add(id(p))
        if p.op_type in ("Shape", "Size") and p.input[0] in r.live and p.input[0] not in downstream:
            shape_only.add(p.input[0])
            continue
        stack += [i for i in p.input if i]
    nodes = [m for m in r.g.nodes if id(m) in region]
    for m in nodes:
        if id(m) in shared:
            continue
        for o in m.output:
            if o == y or o not in r.live:
                continue
            outside = [c for c in r.consumers.get(o, []) if id(c) not in region and c.op_type not in ("Shape", "Size")]
            if outside or o in r.g.outputs:
                raise Refused(f"`{o}`, computed inside it, is read outside it" +
                              (f" by node `{outside[0].name}`" if outside else " as a model output") +
                              "; dlc's attention gives its output only")
    return nodes, sorted(shape_only), mask


def attention_weights(r: Reader, projections: dict[str, onnx.NodeProto], out_proj: onnx.NodeProto,
                      d: int, heads: int, e: int) -> tuple[dict[str, np.ndarray], set[str]]:
    """Wq, Wo (D, D), Wk, Wv (kv·head_dim, D) and, if any projection has one, every bias (zeros where one
    has none, but no bk where the keys alone have none: keybias=off), with the names of the stored tensors
    they come from. A packed projection holds the parts it feeds in the order queries, keys, values, as
    PyTorch's in_proj_weight does (the evaluation afterwards checks that). Keys and values as wide as the queries are plain heads; narrower, grouped ones."""
    roles = {"queries": "q", "keys": "k", "values": "v"}
    tensors: dict[str, np.ndarray] = {}
    stored: set[str] = set()
    for node in {id(p): p for p in projections.values()}.values():
        parts, nodes, _ = dense_parts(r, node)
        stored.update(i for m in nodes for i in m.input if i and i not in r.live)
        mine = [roles[role] for role, p in projections.items() if p is node]
        rows, cols = parts["W"].shape
        kv_parts = len(mine) - (mine[0] == "q")  # the keys' and values' share of the rows, kd each
        kd = (rows - d * (mine[0] == "q")) // kv_parts if kv_parts else 0
        widths = {"q": d, "k": kd, "v": kd}
        dh = d // heads
        grouping = not kv_parts or (kd and not kd % dh and not heads % (kd // dh))
        width = d if "q" in mine else e  # keys and values from the source's e features (e = d but with from=)
        if cols != width or sum(widths[w] for w in mine) != rows or not grouping:
            raise Refused(f"its projection `{node.name}` is {cols} -> {rows}; dlc's attention projects {d} features "
                          f"to {d} queries and {e} to key/value heads of {d // heads} features, a number of them "
                          f"dividing its {heads} heads")
        start = 0
        for w in mine:
            tensors["W" + w] = parts["W"][start:start + widths[w]]
            if "b" in parts:
                tensors["b" + w] = parts["b"][start:start + widths[w]]
            start += widths[w]
    if tensors["Wk"].shape != tensors["Wv"].shape:
        raise Refused(f"its keys have {tensors['Wk'].shape[0]} features and its values {tensors['Wv'].shape[0]}; "
                      f"dlc's attention has as many of each")
    out, nodes, _ = dense_parts(r, out_proj)
    stored.update(i for m in nodes for i in m.input if i and i not in r.live)
    if out["W"].shape != (d, d):
        raise Refused(f"its output projection is {out['W'].shape[1]} -> {out['W'].shape[0]}, not {d} -> {d}")
    tensors["Wo"] = out["W"]
    if "b" in out:
        tensors["bo"] = out["b"]
    if any(k.startswith("b") for k in tensors):
        # a missing key bias is keybias=off (Whisper's k_proj); any other missing one a bias of zeros
        tensors.update({"b" + w: tensors.get("b" + w, np.zeros(len(tensors["W" + w]), np.float32))
                        for w in ("qkvo" if "bk" in tensors else "qvo")})
    return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, stored


def biases_written(tensors: dict[str, np.ndarray]) -> dict[str, bool]:
    """attention's bias options for the tensors attention_weights gives."""
    return {"bias": "bo" in tensors, "keybias": "bo" not in tensors or "bk" in tensors}


def layout_key(r: Reader, nodes: list[onnx.NodeProto], x: str, stored: set[str]) -> tuple:
    """What two attentions must share for one run to check both: operators, settings and wiring, the
    shapes of their weights, and every other constant (mask, scale, shapes) by value."""
    weights = set(stored)
    stack = list(stored)
    while stack:  # and what the graph computes them from: a Transpose, Identity or Split of a stored one
        p = producer_node(r, stack.pop())
        for i in p.input if p is not None else ():
            if i and i not in weights:
                weights.add(i)
                stack.append(i)
    made: dict[str, tuple[int, int]] = {}
    key = [full_shape(r, x)]
    for k, m in enumerate(nodes):
        inputs = []
        for i in m.input:
            v = None if i in made or i == x or i in weights else r.value(i)
            inputs.append(made.get(i) or ("x" if i == x else ("weight", full_shape(r, i)) if i in weights else
                                          (v.dtype.str, v.shape, v.tobytes()) if v is not None else
                                          ("shape of", full_shape(r, i))))
        made.update((o, (k, j)) for j, o in enumerate(m.output))
        settings = tuple(sorted((a, value_key(v)) for a, v in attributes(m).items()))
        key.append((m.domain, m.op_type, tuple(inputs), settings))
    return tuple(key)


def value_key(v):
    """An attribute's value as a comparable key; a tensor by its values, not its name."""
    if isinstance(v, onnx.TensorProto):
        a = numpy_helper.to_array(v)
        return a.dtype.str, a.shape, a.tobytes()
    if isinstance(v, list):
        return tuple(value_key(e) for e in v)
    return v.SerializeToString() if hasattr(v, "SerializeToString") else v


def attention_checked(r: Reader, region: list[onnx.NodeProto], shape_only: list[str], x: str, y: str,
                      tensors: dict[str, np.ndarray], heads: int, masked: bool, reads: dict[str, str]) -> dict:
    """The settings of dlc's attention that compute what the operators do (causal, and kv, rope and window
    when they are not the plain ones), from running both on one random input; a Refused if none does.
    Rope's base and the window are read off the region's constants (the cos table, the mask), then
    checked by the run like the rest."""
    rng = np.random.default_rng(0)
    probe = rng.standard_normal(full_shape(r, x)).astype(np.float32)
    feeds = {x: probe, **shape_feeds(r, shape_only)}
    read = []  # the kernel's inputs after x: the source's probe, then the mask's, as the options order them
    if "from" in reads:
        read.append(rng.standard_normal(full_shape(r, reads["from"])).astype(np.float32))
        feeds[reads["from"]] = read[-1]
    if "mask" in reads:  # the last third of the keys padding, the first always kept
        shape = full_shape(r, reads["mask"])
        kept = (np.arange(shape[-1]) < max(1, shape[-1] - shape[-1] // 3)).astype(np.int64)
        read.append(np.broadcast_to(kept, shape).copy())
        feeds[reads["mask"]] = read[-1].astype(helper.tensor_dtype_to_np_dtype(r.g.tensors[reads["mask"]].elem_type))
    want = run_operators(r, region, feeds, y)
    t, d = r.shape(x)
    kv = len(tensors["Wk"]) // (d // heads)
    grouped = {"kv": kv} if kv != heads else {}
    constants = region_constants(r, region)
    masks = [(False, None)]
    if masked:
        masks = [(True, None), *((True, w) for w in mask_windows(constants, t)), (False, None)]
    settings = [{"causal": causal, **grouped, **({"window": w} if w else {}), **({"rope": rope} if rope else {})}
                for rope in rotary_bases(constants, d // heads) or [False] for causal, w in masks]
    errors = []
    kind = KINDS["attention"]
    for setting in settings:
        written = {**kind.default_attrs(), **setting, **reads, "heads": heads, **biases_written(tensors)}
        try:
            _, attrs = kind.resolve(written, [(t, d), *(a.shape[1:] for a in read)])
        except ShapeError:  # causal or rope with from=: not a setting cross-attention has
            continue
        got, _ = KERNELS["attention"](attrs, tensors, {}, [probe, *read], Ctx())
        errors.append(float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)))
        if errors[-1] <= AGREE:
            return setting
    computes = f"softmax(Q Kᵀ / sqrt(head_dim)) V over {heads} heads with the weights it holds"
    if masked:
        raise Refused(f"its scores are masked, and it does not compute {computes}, with the causal mask (each step "
                      f"sees itself and the steps before it, or a window of them) or without one, as dlc's "
                      f"attention does (relative difference {min(errors):.2g} on a random input)")
    raise Refused(f"it does not compute {computes}, as dlc's attention does (relative difference {min(errors):.2g} "
                  f"on a random input)")


def grids_of(order: np.ndarray, keys: int) -> list[tuple[int, int]]:
    """The token grids (H, W) whose windows of `keys` tokens, shifted or not, read the steps in `order`
    (dlc's export gathers them so: window_order)."""
    from dlc.engine.kernels.attention import window_order

    t = len(order)
    return [(h, t // h) for h in range(1, t + 1) if not t % h and any(
        np.array_equal(window_order((h, t // h), (wh, keys // wh), (sh, sw)), order)
        for wh in range(1, keys + 1) if not keys % wh and not h % wh and not (t // h) % (keys // wh)
        for sh in range(wh) for sw in range(keys // wh))]


def shape_feeds(r: Reader, shape_only: list[str]) -> dict[str, np.ndarray]:
    """Zeros for the tensors a region reads for their shape only: zeros of that shape do."""
    feeds = {}
    for name in shape_only:
        t = r.g.tensors.get(name)
        if t is None or not t.known:
            raise Refused(f"it reads the shape of {name}, which ONNX shape inference does not give")
        feeds[name] = np.zeros(t.shape, helper.tensor_dtype_to_np_dtype(t.elem_type))
    return feeds


def windows_checked(r: Reader, region: list[onnx.NodeProto], shape_only: list[str], x: str, y: str,
                    tensors: dict[str, np.ndarray], heads: int, keys: int, grids: list[tuple[int, int]]) -> dict:
    """The window, shift and bias table of Swin's attention on a token grid (N, H, W, C) that compute what
    the operators do: windows of `keys` tokens tiling the grid, the table read off the region's constants
    (a stored heads x N x N bias, bias_table), each shift tried; run on one random input beside dlc's
    kernel. A Refused if none does."""
    from dlc.engine.kernels.attention import bias_table
    from dlc.layers import Grid

    d = r.shape(x)[-1]
    probe = np.random.default_rng(0).standard_normal(full_shape(r, x)).astype(np.float32)
    want = run_operators(r, region, {x: probe, **shape_feeds(r, shape_only)}, y).reshape(1, -1, d)
    constants = region_constants(r, region)
    kind, errors = KINDS["attention"], []
    for h, w, window in ((h, w, (wh, keys // wh)) for h, w in grids for wh in range(1, keys + 1)
                         if keys % wh == 0 and not h % wh and not w % (keys // wh)):
        table = next((t for t in (bias_table(v, window) for v in constants) if t is not None), None)
        if table is None:
            continue
        for shift in range(min(window)):
            written = {**kind.default_attrs(), "heads": heads, **biases_written(tensors), "window": window,
                       "shift": shift}
            _, attrs = kind.resolve(written, [Grid((h, w), d)])
            if shift and not any(attrs["shift"]):
                break  # the window spans the grid: no shift to try
            got, _ = KERNELS["attention"](attrs, {**tensors, "B": table}, {}, [probe.reshape(1, h * w, d)], Ctx())
            errors.append(float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)))
            if errors[-1] <= AGREE:
                return {"window": window, **({"shift": shift} if shift else {}), "B": table}
    raise Refused(f"it attends within windows of {keys} tokens of a grid, and no window, shift and "
                  f"relative position bias of Swin's that dlc's attention has computes what it does" +
                  (f" (relative difference {min(errors):.2g} on a random input)" if errors else
                   ": no stored heads x N x N bias among its constants"))


def region_constants(r: Reader, region: list[onnx.NodeProto]) -> list[np.ndarray]:
    """The values of the tensors the region's computing operators read that do not depend on its input:
    stored ones, Constants, and ones computed from them alone (PyTorch's cos and sin tables, Cos and Sin
    of stored angles; its masks, from Trilu), evaluated once. Candidates' sources only: a tensor that
    cannot be evaluated so is left out."""
    computing = [m for m in region if any(o in r.live for o in m.output)]
    names = sorted({i for m in computing for i in m.input if i and i not in r.live})
    return [v for v in r.evaluated(names).values() if v is not None]


def mask_windows(constants: list[np.ndarray], t: int) -> list[int]:
    """Sliding windows a (T, T) mask among the region's constants (region_constants) may hold: how many
    steps its last row lets through, read as booleans either way round (hidden or seen) or as a float
    mask of 0 and -inf (or a large negative number). Candidates only: the run decides."""
    found = set()
    for v in constants:
        if v.ndim < 2 or v.shape[-2:] != (t, t) or v.size != t * t:
            continue
        last = v.reshape(t, t)[-1]
        seen = [int(last.sum()), t - int(last.sum())] if last.dtype == np.bool_ else [int((last > -1e4).sum())]
        found.update(w for w in seen if 1 <= w < t)
    return sorted(found)


def rotary_bases(constants: list[np.ndarray], dh: int) -> list[float]:
    """Rope's base theta read off the cos and sin tables among the region's constants: (positions,
    head_dim) or (positions, head_dim/2) with any axes of 1, cos 1 and sin 0 at position 0, and at
    position 1 feature 1 turned by theta^(-2/head_dim) (read as atan2(|sin|, cos): a small angle's cos
    alone is 1 to float32's precision). Thetas are round numbers (10000, 500000, 1e6): one within 1e-3 of
    three significant digits is taken as that. Candidates only: the run decides."""
    tables = [v.reshape(-1, v.shape[-1]).astype(np.float64) for v in constants
              if v.dtype.kind == "f" and v.ndim >= 2 and dh >= 4 and v.shape[-1] in (dh, dh // 2)
              and v.size // v.shape[-1] >= 2]
    found = []
    for cos in (c for c in tables if np.allclose(c[0], 1, atol=1e-6)):
        sin = next((s for s in tables if s.shape == cos.shape and np.allclose(s[0], 0, atol=1e-6)
                    and np.allclose(s ** 2 + cos ** 2, 1, atol=1e-5)), None)
        angle = float(np.arctan2(abs(sin[1, 1]), cos[1, 1]) if sin is not None
                      else np.arccos(np.clip(cos[1, 1], -1, 1)))
        if not 0 < angle < 1:
            continue
        theta = angle ** (-dh / 2)
        rounded = float(f"{theta:.3g}")
        theta = rounded if abs(rounded / theta - 1) < 1e-3 else theta
        found.append(True if theta == ROPE_THETA else theta)
    return list(dict.fromkeys(found))


def run_operators(r: Reader, nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray], y: str) -> np.ndarray:
    """y computed by the model's own operators from the tensors fed, with onnx's reference evaluator (plain
    NumPy, beside onnx already)."""
    from onnx.reference import ReferenceEvaluator

    used = {i for m in nodes for i in m.input}
    graph = helper.make_graph(
        nodes, "part", [helper.make_tensor_value_info(k, r.g.tensors[k].elem_type, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(r.value(k), k) for k in sorted(used) if k in r.init])
    model = helper.make_model(graph, opset_imports=r.g.model.opset_import, ir_version=r.g.model.ir_version)
    try:
        return ReferenceEvaluator(model).run(None, feeds)[0]
    except Exception as e:  # the evaluator raises whatever its operator implementations do
        raise Refused(f"its operators could not be run to check them against dlc's kind: {e}")
