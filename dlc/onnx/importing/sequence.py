"""Patterns of the sequence kinds but attention: layernorm and rmsnorm (one operator or the decomposed
forms), posembed, clstoken, tokens and seqpool.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from dlc.engine.kernels.sequence import sinusoids
from dlc.onnx.importing.reader import (Found, NotImportable, Reader, const_scalar, one, other_input, producer_node,
                                       reduce_axes)
from dlc.onnx.model import attributes


def import_posembed(r: Reader, n: onnx.NodeProto) -> Found | None:
    """A (T, D) table added to a sequence: stored, or the first T rows of a longer stored one gathered at
    positions 0..T-1 (Hugging Face's BERT reads its 512 at the sequence's length: `posembed 512`); a
    table of Whisper's sinusoids is `posembed fixed`."""
    if len(n.input) != 2 or n.op_type != "Add":
        return None
    x = next((i for i in n.input if i in r.live), None)
    rows = next((i for i in n.input if i not in r.live), None)
    if x is None or rows is None or len(r.shape(x)) != 2:
        return None
    t, d = r.shape(x)
    gather = producer_node(r, rows)
    if gather is not None and gather.op_type == "Gather" and attributes(gather).get("axis", 0) == 0:
        table, positions = r.value(gather.input[0]), r.evaluated([gather.input[1]])[gather.input[1]]
        if table is not None and table.ndim == 2 and table.shape[1] == d and positions is not None \
                and np.array_equal(positions.reshape(-1), np.arange(t)):
            size = str(len(table)) if len(table) != t else ""
            return one("posembed", n, size, tensors={"P": table.astype(np.float32)})
    table = r.evaluated([rows])[rows]
    if table is None or table.size != t * d:
        return None
    table = table.reshape(t, d)
    # Whisper's sinusoids, stored (Hugging Face) or a buffer (openai/whisper): computed in float32 there, so
    # 1e-4 off at position 1500, which dlc's float64 table replaces
    if d % 2 == 0 and d >= 4 and np.abs(table - sinusoids(0, t, d, np.float64)).max() <= 2e-4:
        return one("posembed", n, options={"fixed": True})
    return one("posembed", n, tensors={"P": table.astype(np.float32)})


def import_clstoken(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Concat along the steps of a stored token (expanded to the batch) and the sequence."""
    if len(n.input) != 2 or n.input[1] not in r.live or n.input[0] in r.live:
        return None
    x = r.shape(n.input[1])
    token = producer_node(r, n.input[0])
    cls = r.value(token.input[0]) if token is not None and token.op_type == "Expand" else r.value(n.input[0])
    if len(x) != 2 or attributes(n).get("axis") not in (1, -2) or cls is None or cls.size != x[1]:
        return None
    return one("clstoken", n, tensors={"cls": cls.reshape(-1).astype(np.float32)})


def import_layernorm(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type == "Transpose":
        return layernorm_channels(r, n)
    return layernorm_last(r, n, ranks=(1, 2))


def layernorm_channels(r: Reader, n: onnx.NodeProto) -> Found | None:
    """`layernorm channels` as PyTorch writes ConvNeXt's LayerNorm2d: a Transpose to channels-last, the norm
    of the last axis, and the Transpose back."""
    x = r.shape(n.input[0])
    rank = len(x) + 1
    readers = r.consumers.get(n.output[0], [])  # the decomposed form's ReduceMean and Sub both read it
    norm = next((c for c in readers if c.op_type in ("LayerNormalization", "ReduceMean")), None)
    if not 3 <= rank <= 5 or list(attributes(n).get("perm", ())) != [0, *range(2, rank), 1] or norm is None:
        return None
    found = layernorm_last(r, norm, ranks=(len(x),))
    back = found and r.only_consumer(found.output)
    if back is None or not {id(c) for c in readers} <= {id(m) for m in found.nodes} or back.op_type != "Transpose" or \
            list(attributes(back).get("perm", ())) != [0, rank - 1, *range(1, rank - 1)]:
        return None
    found.layer.options["channels"] = True
    return Found(found.layer, [n, *found.nodes, back], back.output[0], found.tensors, n.name)


def layernorm_last(r: Reader, n: onnx.NodeProto, ranks: tuple[int, ...]) -> Found | None:
    """LayerNormalization over the last axis of a tensor of one of `ranks` (batch left out), or its
    decomposed form."""
    if n.op_type == "ReduceMean":
        return layernorm_decomposed(r, n, ranks)
    x = r.shape(n.input[0])
    a = attributes(n)
    if a.get("axis", -1) % (len(x) + 1) != len(x) or len(x) not in ranks and n.input[0] not in r.grids:
        raise NotImportable("dlc's layernorm normalises the last axis of a vector or a sequence")
    if len(n.output) > 1 and any(r.consumers.get(o) for o in n.output[1:] if o):
        raise NotImportable("its mean or inverse deviation is read by the graph")
    gamma = r.weight(n, 1, "scale")
    beta = r.weight(n, 2, "bias") if r.optional(n, 2) else np.zeros_like(gamma)
    return one("layernorm", n, options={"eps": float(np.float32(a.get("epsilon", 1e-5)))},
               tensors={"gamma": gamma, "beta": beta})


def layernorm_decomposed(r: Reader, n: onnx.NodeProto, ranks: tuple[int, ...]) -> Found | None:
    """LayerNorm as the TorchScript exporter writes it below opset 17 (and dlc's own lowering): ReduceMean,
    Sub, Pow 2 (or Mul by itself), ReduceMean, Add eps, Sqrt, Div, then Mul gamma and Add beta if it
    has them, every mean over the last axis only and kept as an axis."""
    x = n.input[0]
    shape = r.shape(x)
    if len(shape) not in ranks or not last_axis_mean(r, n, len(shape) + 1):
        return None
    sub = r.only_consumer(n.output[0])
    if sub is None or sub.op_type != "Sub" or list(sub.input) != [x, n.output[0]]:
        return None
    centred = sub.output[0]
    readers = list({id(c): c for c in r.consumers.get(centred, [])}.values())  # Mul(d, d) reads it twice
    square = next((c for c in readers if is_square(r, c, centred)), None)
    div = next((c for c in readers if c.op_type == "Div" and c.input[0] == centred), None)
    if len(readers) != 2 or square is None or div is None:
        return None
    root = root_of_mean(r, square, len(shape) + 1)
    if root is None or div.input[1] != root[0][-1].output[0]:
        return None
    (var, add, sqrt), eps = root
    nodes, out = [n, sub, square, var, add, sqrt, div], div.output[0]
    tensors = {"gamma": np.ones(shape[-1], np.float32), "beta": np.zeros(shape[-1], np.float32)}
    for op_type, key in (("Mul", "gamma"), ("Add", "beta")):
        after = r.only_consumer(out)
        v = None if after is None or after.op_type != op_type else r.value(other_input(after, out))
        if v is not None and v.size == shape[-1]:
            tensors[key] = v.reshape(-1).astype(np.float32)
            nodes.append(after)
            out = after.output[0]
    return one("layernorm", n, options={"eps": float(np.float32(eps))}, tensors=tensors, output=out, nodes=nodes)


def last_axis_mean(r: Reader, n: onnx.NodeProto, rank: int) -> bool:
    """A ReduceMean over the last axis of a rank-`rank` tensor (batch included) that keeps that axis."""
    axes = reduce_axes(r, n)
    return axes is not None and [ax % rank for ax in axes] == [rank - 1] and attributes(n).get("keepdims", 1) == 1


def is_square(r: Reader, n: onnx.NodeProto, t: str) -> bool:
    """n squares t: Pow(t, 2), or Mul(t, t)."""
    return n.input[0] == t and ((n.op_type == "Pow" and const_scalar(r, n.input[1]) == 2)
                                or (n.op_type == "Mul" and n.input[1] == t))


def root_of_mean(r: Reader, square: onnx.NodeProto, rank: int) -> tuple[list[onnx.NodeProto], float] | None:
    """sqrt(mean(square) + eps) over the last axis, the denominator of both norms: its ReduceMean, Add and
    Sqrt nodes, and eps."""
    mean = r.only_consumer(square.output[0])
    add = mean and r.only_consumer(mean.output[0])
    if mean is None or mean.op_type != "ReduceMean" or not last_axis_mean(r, mean, rank) \
            or add is None or add.op_type != "Add":
        return None
    eps = const_scalar(r, other_input(add, mean.output[0]))
    sqrt = r.only_consumer(add.output[0])
    if not eps > 0 or sqrt is None or sqrt.op_type != "Sqrt":
        return None
    return [mean, add, sqrt], eps


def import_rmsnorm(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.op_type != "RMSNormalization":
        return rmsnorm_decomposed(r, n)
    x = r.shape(n.input[0])
    if attributes(n).get("axis", -1) % (len(x) + 1) != len(x) or len(x) not in (1, 2):
        raise NotImportable("dlc's rmsnorm normalises the last axis of a vector or a sequence")
    return one("rmsnorm", n, options={"eps": float(np.float32(attributes(n).get("epsilon", 1e-5)))},
               tensors={"gamma": r.weight(n, 1, "scale")})


def rmsnorm_decomposed(r: Reader, n: onnx.NodeProto) -> Found | None:
    """RMSNorm as written out: the square (Pow 2, or Mul by itself), ReduceMean over the last axis kept as
    an axis, Add eps, Sqrt, then the division (Div of x: dlc's lowering below opset 23), or the
    reciprocal (Div of 1: TorchScript's rsqrt; Reciprocal: dynamo's) times x; then Mul by the scale if
    it has one. Llama's `x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight`."""
    x = n.input[0]
    shape = r.shape(x)
    if len(shape) not in (1, 2) or not is_square(r, n, x):
        return None
    root = root_of_mean(r, n, len(shape) + 1)
    sqrt = root and root[0][-1]
    after = sqrt and r.only_consumer(sqrt.output[0])
    if after is None:
        return None
    eps = root[1]
    nodes = [n, *root[0], after]
    if after.op_type == "Div" and list(after.input) == [x, sqrt.output[0]]:
        out = after.output[0]
    else:
        reciprocal = after.op_type == "Reciprocal" or (
            after.op_type == "Div" and after.input[1] == sqrt.output[0] and const_scalar(r, after.input[0]) == 1)
        times = reciprocal and r.only_consumer(after.output[0])
        if not times or times.op_type != "Mul" or other_input(times, after.output[0]) != x:
            return None
        nodes.append(times)
        out = times.output[0]
    gamma = np.ones(shape[-1], np.float32)
    scale = r.only_consumer(out)
    v = None if scale is None or scale.op_type != "Mul" else r.value(other_input(scale, out))
    if v is not None and v.size == shape[-1]:
        gamma = v.reshape(-1).astype(np.float32)
        nodes.append(scale)
        out = scale.output[0]
    return one("rmsnorm", n, options={"eps": float(np.float32(eps))}, tensors={"gamma": gamma}, output=out,
               nodes=nodes)


def import_tokens(r: Reader, n: onnx.NodeProto) -> Found | None:
    """An image read as its pixels: Reshape (N, C, H·W) then Transpose to (N, H·W, C); or Transpose to
    (N, H, W, C), a token grid kept channels last (Swin's exports, r.grids); a signal read as its
    positions: Transpose (N, C, L) to (N, L, C) (PyTorch's permute), after a Reshape that keeps it or not."""
    if n.op_type == "Transpose" and n.output[0] in r.grids:
        if len(r.shape(n.input[0])) != 3:
            return None
        # diffusers' Transformer2DModel: permute(0, 2, 3, 1), then the grid reshaped to its H·W steps
        after = r.only_consumer(n.output[0])
        h, w, c = r.shape(n.output[0])
        if after is not None and after.op_type == "Reshape" and r.shape(after.output[0]) == (h * w, c):
            return one("tokens", n, output=after.output[0], nodes=[n, after])
        return one("tokens", n)
    x, y = r.shape(n.input[0]), r.shape(n.output[0])
    if n.op_type == "Transpose":  # a signal's Transpose alone
        if len(x) != 2 or list(attributes(n).get("perm", [])) != [0, 2, 1]:
            return None
        return one("tokens", n)
    after = r.only_consumer(n.output[0])
    if len(x) not in (2, 3) or y != (x[0], math.prod(x[1:])) or after is None or after.op_type != "Transpose" \
            or list(attributes(after).get("perm", [])) != [0, 2, 1]:
        return None
    return one("tokens", n, output=after.output[0], nodes=[n, after])


def import_image(r: Reader, n: onnx.NodeProto) -> Found | None:
    """A sequence (N, H·W, C) laid back out as an image: Transpose to (N, C, H·W) then Reshape to
    (N, C, H, W) (dlc's own export); or Reshape to (N, H, W, C) then Transpose to (N, C, H, W) (diffusers'
    Transformer2DModel: reshape, permute(0, 3, 1, 2))."""
    x = r.shape(n.input[0])
    after = r.only_consumer(n.output[0])
    if len(x) != 2 or n.input[0] not in r.live or after is None:
        return None
    perm = list(attributes(n).get("perm", [])) if n.op_type == "Transpose" else \
        list(attributes(after).get("perm", [])) if after.op_type == "Transpose" else None
    t, c = x
    y = r.shape(after.output[0])
    if n.op_type == "Transpose" and after.op_type == "Reshape" and perm == [0, 2, 1]:
        grid = y[1:] if len(y) == 3 and y[0] == c else None
    elif n.op_type == "Reshape" and perm == [0, 3, 1, 2]:
        grid = y[1:] if len(y) == 3 and y[0] == c and r.shape(n.output[0]) == (*y[1:], c) else None
    else:
        return None
    if grid is None or grid[0] * grid[1] != t:
        return None
    return one("image", n, size=f"{grid[0]}x{grid[1]}", output=after.output[0], nodes=[n, after])


def import_seqpool(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Step 0 or T-1 of a sequence (a Gather of a scalar index on axis 1), or its mean over the steps; or
    a token grid's mean: Transpose back to (N, C, H, W), the global average pool, Flatten (torchvision's
    Swin: permute, AdaptiveAvgPool2d(1), flatten)."""
    if n.op_type == "Transpose":
        return grid_mean(r, n)
    x = r.shape(n.input[0])
    if len(x) != 2 or n.input[0] not in r.live:
        return None
    if n.op_type == "Gather":
        index = r.value(n.input[1])
        if attributes(n).get("axis", 0) != 1 or index is None or index.ndim != 0:
            return None
        step = int(index) % x[0]
        return one("seqpool", n, options={"first": True}) if step == 0 else \
            one("seqpool", n, options={"last": True}) if step == x[0] - 1 else None
    axes = reduce_axes(r, n)
    if axes is None or [ax % 3 for ax in axes] != [1] or r.shape(n.output[0]) != x[1:]:
        return None
    return one("seqpool", n)


def grid_mean(r: Reader, n: onnx.NodeProto) -> Found | None:
    if n.input[0] not in r.grids or list(attributes(n).get("perm", [])) != [0, 3, 1, 2]:
        return None
    pool = r.only_consumer(n.output[0])
    c = r.shape(n.input[0])[-1]
    if pool is None or pool.op_type not in ("GlobalAveragePool", "ReduceMean") or (
            pool.op_type == "ReduceMean" and sorted(ax % 4 for ax in reduce_axes(r, pool) or []) != [2, 3]):
        return None
    nodes, out = [n, pool], pool.output[0]
    while r.shape(out) != (c,):  # flattened: Flatten, or dynamo's Reshapes around a Gather of every value in order
        flat = r.only_consumer(out)
        if flat is None or flat.op_type not in ("Flatten", "Reshape", "Squeeze", "Gather") or (
                flat.op_type == "Gather" and not every_value_in_order(r, flat)):
            return None
        nodes, out = [*nodes, flat], flat.output[0]
    return one("seqpool", n, output=out, nodes=nodes)


def every_value_in_order(r: Reader, n: onnx.NodeProto) -> bool:
    index, data = r.value(n.input[1]), r.g.tensors.get(n.input[0])
    return index is not None and data is not None and data.elements == index.size and \
        np.array_equal(index.reshape(-1), np.arange(index.size)) and attributes(n).get("axis", 0) == 0


def import_patchmerge(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Swin's 2x2 neighbours of a token grid (N, H, W, C) joined along the channels: four strided Slices
    (rows, columns from 0 or 1 by 2; one Slice of both axes, or one per axis) and their Concat, in the
    order x0 (0, 0), x1 (1, 0), x2 (0, 1), x3 (1, 1) (torchvision's PatchMerging). Or dlc's own: a
    sequence's steps Reshaped to (H/2, 2, W/2, 2, C), Transposed to put each 2x2 together in that order,
    Reshaped to (H/2·W/2, 4C)."""
    x = n.input[0]
    if n.op_type == "Reshape":
        return merged_by_layout(r, n)
    if x not in r.grids:
        return None
    h, w, c = r.shape(x)
    concat, stack = None, [x]  # the Slices from x form a tree (rows, then columns of each) up to the Concat
    while stack:
        for m in r.consumers.get(stack.pop(), []):
            if m.op_type == "Slice":
                stack.append(m.output[0])
            elif m.op_type == "Concat" and len(m.input) == 4 and attributes(m).get("axis") in (3, -1):
                concat = m
    if concat is None or r.shape(concat.output[0]) != (h // 2, w // 2, 4 * c):
        return None
    starts, nodes = [], {id(concat): concat}
    for part in concat.input:
        chain = slice_chain(r, part, x)
        if chain is None:
            return None
        offsets, used = chain
        starts.append(offsets)
        nodes.update((id(m), m) for m in used)
    if starts != [(0, 0), (1, 0), (0, 1), (1, 1)]:
        return None
    return one("patchmerge", n, output=concat.output[0], nodes=list(nodes.values()))


def merged_by_layout(r: Reader, n: onnx.NodeProto) -> Found | None:
    x, grid = r.shape(n.input[0]), r.shape(n.output[0])
    turn = r.only_consumer(n.output[0])
    back = turn and r.only_consumer(turn.output[0])
    if len(x) != 2 or len(grid) != 5 or grid[1] != 2 or grid[3] != 2 or grid[4] != x[1] or \
            grid[0] * grid[2] * 4 != x[0] or turn is None or turn.op_type != "Transpose" or \
            list(attributes(turn).get("perm", [])) != [0, 1, 3, 4, 2, 5] or back is None or \
            back.op_type != "Reshape" or r.shape(back.output[0]) != (x[0] // 4, 4 * x[1]):
        return None
    return one("patchmerge", n, output=back.output[0], nodes=[n, turn, back])


def slice_chain(r: Reader, t: str, x: str) -> tuple[tuple[int, int], list[onnx.NodeProto]] | None:
    """(the row and column each take from, by 2) of the Slices from x to t, and those Slices."""
    offsets, used = {}, []
    while t != x:
        m = producer_node(r, t)
        if m is None or m.op_type != "Slice":
            return None
        starts, _, axes, steps = (r.value(m.input[i]) if len(m.input) > i and m.input[i] else None
                                  for i in (1, 2, 3, 4))
        if starts is None:
            return None
        starts = starts.reshape(-1).tolist()
        axes = range(len(starts)) if axes is None else axes.reshape(-1).tolist()
        steps = [1] * len(starts) if steps is None else steps.reshape(-1).tolist()
        for start, axis, step in zip(starts, axes, steps):
            if step != 1 or start != 0:
                if step != 2 or axis % 4 not in (1, 2):
                    return None
                offsets[axis % 4] = start
        used.append(m)
        t = m.input[0]
    return (offsets.get(1, 0), offsets.get(2, 0)), used
