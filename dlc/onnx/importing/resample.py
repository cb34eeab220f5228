"""Patterns of the kinds that move values without weights (pad, pixelshuffle, tile, slice, reshape), as
dlc/layers/resample.py groups them."""

from __future__ import annotations

import numpy as np
import onnx

from dlc.layers.resample import SIDES, SLICE_AXES
from dlc.layers.spatial import show
from dlc.onnx.importing.reader import Found, NotImportable, Reader, one
from dlc.onnx.lower import PAD_MODES
from dlc.onnx.model import attributes

PAD_KINDS = {onnx_mode: mode for mode, onnx_mode in PAD_MODES.items()}


def import_pad(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Pad on H and W (a zero Pad that only feeds a Conv is conv's pad=). Its amounts and fill are an
    attribute before opset 11, inputs from then on: stored, or computed from constants (TorchScript writes
    a ConstantOfShape/Concat/Slice/Transpose chain)."""
    a = attributes(n)
    mode = a.get("mode", b"constant").decode()
    if mode not in PAD_KINDS:
        raise NotImportable(f"mode={mode} has no pad mode; dlc's are constant, reflect and edge (replicate)")
    if r.optional(n, 3):
        raise NotImportable("it pads chosen axes (its axes input); dlc's pad works on height and width")
    values = r.evaluated([i for i in n.input[1:3] if i])
    pads = a["pads"] if "pads" in a else values.get(n.input[1]) if r.optional(n, 1) else None
    value = a.get("value", 0.0) if len(n.input) < 3 or not n.input[2] else values.get(n.input[2])
    if pads is None or value is None:
        raise NotImportable("its pads or fill value are computed from the input")
    x = r.shape(n.input[0])
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if len(x) != 3 or len(pads) != 8:
        raise NotImportable(f"dlc's pad works on an image's height and width; this one pads {len(pads) // 2} axes")
    if any(pads[i] for i in (0, 1, 4, 5)):
        raise NotImportable(f"pads {pads} pad the batch or the channels; dlc's pad works on height and width")
    if min(pads) < 0:
        raise NotImportable(f"pads {pads} crop (negative amounts); dlc's pad only adds")
    sides = dict(zip(SIDES, (pads[2], pads[3], pads[6], pads[7])))
    # `pad P` with P the smallest amount, and the sides above it written out
    least = min(sides.values())
    options = {side: p for side, p in sides.items() if p != least}
    fill = float(np.asarray(value).reshape(-1)[0])
    if mode == "constant" and fill:
        options["value"] = fill
    if mode != "constant":
        options["mode"] = PAD_KINDS[mode]
    return one("pad", n, str(least), options)


def import_pixelshuffle(r: Reader, n: onnx.NodeProto) -> Found | None:
    """DepthToSpace in CRD mode, or the Reshape/Transpose/Reshape that older exporters write for it:
    (C·r², H, W) -> (C, r, r, H, W) -> permuted to (C, H, r, W, r) -> (C, H·r, W·r)."""
    x = r.shape(n.input[0])
    if n.op_type == "DepthToSpace":
        a = attributes(n)
        if a.get("mode", b"DCR") != b"CRD":
            raise NotImportable("mode=DCR (TensorFlow's depth_to_space) orders the channels otherwise than "
                                "pixelshuffle (PyTorch's PixelShuffle, mode=CRD)")
        return one("pixelshuffle", n, str(a["blocksize"]))
    blocks = r.shape(n.output[0])
    swap = r.only_consumer(n.output[0])
    if len(x) != 3 or len(blocks) != 5 or blocks[1] != blocks[2] or blocks[3:] != x[1:] or swap is None \
            or swap.op_type != "Transpose" or list(attributes(swap).get("perm", [])) != [0, 1, 4, 2, 5, 3]:
        return None
    joined = r.only_consumer(swap.output[0])
    f = blocks[1]
    if joined is None or joined.op_type != "Reshape" or r.shape(joined.output[0]) != (blocks[0], x[1] * f, x[2] * f):
        return None
    return one("pixelshuffle", n, str(f), output=joined.output[0], nodes=[n, swap, joined])


def import_tile(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Tile; PyTorch's x.repeat writes an Expand to the same shape before it (it would add the leading
    axes of a repeat longer than x's rank), which is part of the pattern."""
    nodes = [n]
    if n.op_type == "Expand":
        after = r.only_consumer(n.output[0])
        if r.shape(n.output[0]) != r.shape(n.input[0]) or after is None or after.op_type != "Tile" \
                or after.input[0] != n.output[0]:
            return None
        n, nodes = after, [n, after]
    repeats = r.evaluated([n.input[1]])[n.input[1]]
    if repeats is None:
        raise NotImportable("its repeats are computed from the input")
    repeats = [int(v) for v in repeats.reshape(-1)]
    if repeats[0] != 1:
        raise NotImportable(f"repeats {repeats} repeat the batch; dlc's tile repeats each sample's axes")
    return one("tile", n, show(tuple(repeats[1:])), nodes=nodes)


def import_slice(r: Reader, n: onnx.NodeProto) -> Found | None:
    """Slice of one axis with step 1: its starts, ends and axes are attributes before opset 10, inputs
    (stored or computed from constants) from then on."""
    x = r.shape(n.input[0])
    a = attributes(n)
    if "starts" in a:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        values = r.evaluated([i for i in n.input[1:5] if i])
        starts, ends, axes, steps = (values.get(n.input[i]) if r.optional(n, i) else None for i in range(1, 5))
        if starts is None or ends is None or (r.optional(n, 3) and axes is None) or (r.optional(n, 4) and steps is None):
            raise NotImportable("its starts, ends, axes or steps are computed from the input")
    starts, ends = [int(v) for v in np.asarray(starts).reshape(-1)], [int(v) for v in np.asarray(ends).reshape(-1)]
    axes = list(range(len(starts))) if axes is None else [int(v) % (len(x) + 1) for v in np.asarray(axes).reshape(-1)]
    if steps is not None and any(int(v) != 1 for v in np.asarray(steps).reshape(-1)):
        raise NotImportable("it takes every k-th entry (steps); dlc's slice keeps consecutive ones")
    cut = []
    for axis, start, end in zip(axes, starts, ends):
        if axis == 0:  # the whole batch, whatever its size, is 0 to the largest int64 (or int32)
            if start != 0 or end < 2 ** 31 - 1:
                raise NotImportable("it slices the batch axis (it picks samples); dlc's layers work on each sample "
                                    "alike")
            continue
        size = x[axis - 1]
        begin, stop = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
        if (begin, stop) != (0, size):
            cut.append((axis - 1, begin, stop))
    if not cut:
        return Found(None, [n], n.output[0])  # the whole tensor
    if len(x) not in SLICE_AXES:
        raise NotImportable(f"dlc's slice works on images, sequences and vectors; this input has {len(x)} axes "
                            f"per sample")
    if len(cut) > 1:
        raise NotImportable(f"it slices {len(cut)} axes at once; dlc's slice takes one")
    dim, begin, stop = cut[0]
    if stop <= begin:
        raise NotImportable("it keeps nothing")
    axis = SLICE_AXES[len(x)][dim]
    return one("slice", n, str(stop - begin), {"start": begin, **({"axis": axis} if axis != "features" else {})})


def import_reshape(r: Reader, n: onnx.NodeProto) -> Found | None:
    """A Reshape that keeps the batch and gives an image, a sequence or a vector (after every other kind's
    Reshape pattern has declined it); or Unsqueezes in a row, as PyTorch writes `v[:, :, None, None]` to
    add a vector to every pixel (a diffusion block's time embedding): `reshape C@1x1`."""
    nodes = [n]
    while n.op_type == "Unsqueeze" and r.only_consumer(nodes[-1].output[0]) is not None \
            and r.only_consumer(nodes[-1].output[0]).op_type == "Unsqueeze":
        nodes.append(r.only_consumer(nodes[-1].output[0]))
    if len(nodes) > 1 or n.op_type == "Unsqueeze":
        x, y = r.shape(n.input[0]), r.shape(nodes[-1].output[0])
        if not 1 <= len(y) <= 3 or r.g.tensors[nodes[-1].output[0]].batch_axis != 0:
            return None
        return one("reshape", n, show(y), output=nodes[-1].output[0], nodes=nodes)
    x, y = r.shape(n.input[0]), r.shape(n.output[0])
    t, u = r.g.tensors[n.input[0]], r.g.tensors[n.output[0]]
    if t.batch_axis != 0 or u.batch_axis != 0 or not 1 <= len(y) <= 3:
        return None
    if y == x:
        return Found(None, [n], n.output[0])
    return one("reshape", n, show(y))
