"""Patterns of the convolution kinds (conv, dwconv, upconv) and of upsample, as dlc/layers/conv.py
groups them: a zero Pad before a Conv (TensorFlow's `same`) folds into its pad=.
"""

from __future__ import annotations

import numpy as np
import onnx

from dlc.decompile import window_size
from dlc.layers.spatial import resolve_pads, show
from dlc.onnx.analysis import shown
from dlc.onnx.importing.reader import Found, NotImportable, Reader, one
from dlc.onnx.model import attributes


def spatial(a: dict, x: tuple[int, ...], kernel: tuple[int, ...],
            dilation: tuple[int, ...] | None = None) -> tuple[tuple, int | tuple | str]:
    """(stride, the pad= option) of a Conv or pool over 1, 2 or 3 axes, from its strides, pads and auto_pad."""
    ones = (1,) * len(kernel)
    if len(x) - 1 != len(kernel) or not 1 <= len(kernel) <= 3:
        raise NotImportable(f"its {len(kernel)}-axis window on a {show(x)} input: dlc's windows have 1 to 3 "
                            f"spatial axes, those of the input")
    stride = tuple(a.get("strides", ones))
    auto = a.get("auto_pad", b"NOTSET").decode()
    if auto == "SAME_UPPER":
        return stride, "same"
    if auto == "VALID":
        return stride, 0
    if auto == "SAME_LOWER":
        raise NotImportable("auto_pad=SAME_LOWER puts the odd pixel first; dlc's pad=same puts it last")
    pads = tuple(a.get("pads", (0,) * 2 * len(kernel)))
    if len(set(pads)) == 1:
        return stride, pads[0]
    if pads[:len(kernel)] == pads[len(kernel):]:  # before = after on each axis: `pad=1x3x3`
        return stride, pads[:len(kernel)]
    if pads == resolve_pads("same", x[1:], kernel, stride, dilation or ones):
        return stride, "same"
    raise NotImportable(f"pads {list(pads)} (every axis's before, then after) are neither equal on each axis "
                        f"nor `same`, the only forms dlc's pad= writes")


def zero_pad(r: Reader, pad: onnx.NodeProto) -> tuple[onnx.NodeProto, tuple[int, ...]] | None:
    """A Pad with zeros on H and W whose only reader is a Conv (TensorFlow's exports write `same` so):
    (the Conv, its pads with the Pad's added), or None."""
    conv = r.only_consumer(pad.output[0])
    a = attributes(pad)
    pads = a.get("pads") if "pads" in a else r.value(pad.input[1]) if r.optional(pad, 1) else None
    value = r.value(pad.input[2]) if r.optional(pad, 2) else np.zeros(1)
    if (conv is None or conv.op_type != "Conv" or conv.input[0] != pad.output[0] or pads is None or len(pads) != 8
            or a.get("mode", b"constant") != b"constant" or value is None or value.any() or r.optional(pad, 3)
            or attributes(conv).get("auto_pad", b"NOTSET") != b"NOTSET"):
        return None
    pads = [int(p) for p in pads]
    if any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None  # pads the batch or the channels, or crops
    own = attributes(conv).get("pads", [0, 0, 0, 0])
    return conv, (own[0] + pads[2], own[1] + pads[3], own[2] + pads[6], own[3] + pads[7])


def conv_parts(r: Reader, n: onnx.NodeProto):
    """The Conv's weight and options, with a zero Pad before it folded into its pad=."""
    nodes = [n]
    x = r.shape(n.input[0])
    if n.op_type == "Pad":
        folded = zero_pad(r, n)
        if folded is None:
            return None
        n, pads = folded
        nodes.append(n)
        a = dict(attributes(n), pads=pads)
    else:
        a = attributes(n)
    w = r.weight(n, 1, "weight")
    kernel = tuple(w.shape[2:])
    dil = tuple(a.get("dilations", (1,) * len(kernel)))
    stride, pad = spatial(a, x, kernel, dil)
    tensors = {"W": w}
    if r.optional(n, 2):
        tensors["b"] = r.weight(n, 2, "bias")
    if len(set(dil)) != 1:
        raise NotImportable(f"dilations {list(dil)} differ")
    return a, w, x, kernel, stride, {"pad": pad, "dil": dil[0]}, tensors, nodes


def import_conv(r: Reader, n: onnx.NodeProto) -> Found | None:
    parts = conv_parts(r, n)
    if parts is None:
        return None
    a, w, x, kernel, stride, pad_dil, tensors, nodes = parts
    groups = a.get("group", 1)
    if groups > 1 and groups == x[0]:
        return None  # depthwise: dwconv's
    return one("conv", n, f"{w.shape[0]}@{window_size(kernel, stride)}",
               {**pad_dil, "groups": groups, "bias": "b" in tensors}, tensors, nodes[-1].output[0], nodes)


def import_dwconv(r: Reader, n: onnx.NodeProto) -> Found | None:
    parts = conv_parts(r, n)
    if parts is None:
        return None
    a, w, x, kernel, stride, pad_dil, tensors, nodes = parts
    if not (a.get("group", 1) > 1 and a.get("group", 1) == x[0]):
        return None
    return one("dwconv", n, window_size(kernel, stride),
               {**pad_dil, "mult": w.shape[0] // x[0], "bias": "b" in tensors}, tensors, nodes[-1].output[0], nodes)


def import_upconv(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    w = r.weight(n, 1, "weight")
    x = r.shape(n.input[0])
    if len(x) != 3:
        raise NotImportable(f"dlc's upconv works on images C@HxW; this one's input is "
                            f"{show(shown(r.g.tensors[n.input[0]], r.g.signals))}")
    if "output_shape" in a:
        raise NotImportable("output_shape has no upconv option (write the pads and outpad= it implies)")
    outpad = tuple(a.get("output_padding", (0, 0)))
    if len(set(outpad)) != 1:
        raise NotImportable(f"output_padding {list(outpad)} differs between the axes; upconv's outpad= is one number")
    if a.get("auto_pad", b"NOTSET") != b"NOTSET":
        raise NotImportable(f"auto_pad={a['auto_pad'].decode()} has no upconv option")
    pads = a.get("pads", [0, 0, 0, 0])
    if len(set(pads)) != 1:
        raise NotImportable(f"pads {list(pads)} differ; upconv's pad= is one number")
    dil = tuple(a.get("dilations", (1, 1)))
    if dil != (1, 1):
        raise NotImportable(f"dilations {list(dil)}: upconv has no dil=")
    groups = a.get("group", 1)
    tensors = {"W": w}
    if r.optional(n, 2):
        tensors["b"] = r.weight(n, 2, "bias")
    return one("upconv", n, f"{w.shape[1] * groups}@{window_size(w.shape[2:], a.get('strides', (1, 1)))}",
               {"pad": pads[0], "groups": groups, "bias": "b" in tensors, "outpad": outpad[0]}, tensors)


def import_upsample(r: Reader, n: onnx.NodeProto) -> Found | None:
    a = attributes(n)
    if a.get("mode", b"nearest") != b"nearest":
        raise NotImportable(f"mode={a['mode'].decode()}; dlc's upsample copies the nearest pixel")
    x, y = r.shape(n.input[0]), r.shape(n.output[0])
    if len(x) != 3 or y[0] != x[0] or y[1] % x[1] or y[2] % x[2] or y[1] // x[1] != y[2] // x[2]:
        raise NotImportable(f"it resizes {show(x)} to {show(y)}, not by one whole factor on both axes")
    mode = a.get("coordinate_transformation_mode", b"half_pixel").decode()
    nearest = a.get("nearest_mode", b"round_prefer_floor").decode()
    # For a whole factor f, output pixel i reads floor(i / f) under asymmetric+floor and under the
    # half-pixel modes with rounding ((i + 0.5) / f - 0.5 rounds to floor(i / f)); not otherwise.
    if n.op_type == "Resize" and not ((mode == "asymmetric" and nearest == "floor") or
                                      (mode in ("half_pixel", "pytorch_half_pixel") and nearest.startswith("round"))):
        raise NotImportable(f"coordinate_transformation_mode={mode} with nearest_mode={nearest} does not "
                            f"repeat each pixel")
    return one("upsample", n, str(y[1] // x[1]))
