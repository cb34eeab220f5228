"""Patterns of the merges: add and concat of layer outputs."""

from __future__ import annotations

import onnx

from dlc.onnx.importing.reader import Found, NotImportable, Reader, one
from dlc.onnx.model import attributes


def import_add(r: Reader, n: onnx.NodeProto) -> Found | None:
    return one("add", n) if all(i in r.live for i in n.input) else None


def import_concat(r: Reader, n: onnx.NodeProto) -> Found | None:
    if not all(i in r.live for i in n.input):
        return None
    x = r.shape(n.input[0])
    axis = attributes(n)["axis"] % (len(x) + 1)
    if axis != (2 if len(x) == 2 else 1):
        raise NotImportable(f"it joins along axis {axis}; dlc's concat joins the features")
    return one("concat", n)
