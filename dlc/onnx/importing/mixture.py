"""The mixture of experts: refused at its router's TopK, named in the message."""

from __future__ import annotations

import onnx

from dlc.onnx.importing.reader import Reader, Refused


def import_experts(r: Reader, n: onnx.NodeProto) -> None:
    # dlc exports a mixture densely (every expert's branch, then TopK, Softmax, ScatterElements and the
    # masked sum), and other exporters write it with Loop, If or index arithmetic around the TopK; no
    # pattern recovers the E expert branches and their order from those yet, so the import stops here
    # rather than take the pieces apart into layers that would compute something else.
    raise Refused("a TopK routes steps to experts (a mixture of experts, `experts E top=K { … }`), which dlc "
                  "does not import yet; write the mixture in a spec")
