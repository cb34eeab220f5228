"""MODEL of infer and bench: an .onnx file, or a spec with its weights; its onnxruntime session, token
vocabularies and memory guard. numpy, onnx and onnxruntime are imported inside the functions that need them."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import click

from dlc.commands.arguments import is_onnx, load_graph
from dlc.errors import DlcError
from dlc.graph import Graph, Network

DEVICE_HELP = "auto: CUDA where onnxruntime really gets it, else the CPU with a notice; cuda: CUDA or exit 2."


@dataclass
class Model:
    """What infer and bench run: a spec's network, an .onnx model, or both."""

    net: Network | None  # the spec with its weights; None for an .onnx model run by onnxruntime alone
    onnx: object | None  # onnx.ModelProto; None until an onnxruntime session needs it
    path: str | None = None  # an .onnx file: onnxruntime reads it itself, external data included
    # the spec an .onnx file dlc exported carries, where its weights were not read: it tells the token
    # vocabulary and the memory a batch takes
    spec: Graph | None = None
    normalize: dict | None = None  # the input statistics training stored, applied as training applied them

    @property
    def graph(self) -> Graph | None:
        return self.net.graph if self.net is not None else self.spec

    @property
    def class_names(self) -> list | None:
        """The classes by label that training named (an image folder's, CIFAR's), for infer to print."""
        return self.net.class_names if self.net is not None else None

    @property
    def weights(self) -> str:
        """Where the weights came from, for infer's report."""
        return self.net.weights if self.net is not None else f"{self.path}'s initializers"


def model_input(fn):
    """MODEL argument: an .onnx file, or a spec (file, zoo name, `-`; or -e TEXT) with weights."""
    fn = click.option("-e", "--expr", "expr", metavar="TEXT", help="Spec text given inline.")(fn)
    return click.argument("model", required=False, metavar="MODEL")(fn)


def load_model(model: str | None, expr: str | None, weights: str | None, *, need_weights: bool,
               fresh_seed: int | None = None) -> Model:
    """An .onnx file (its weights are its initializers; its spec, if dlc wrote it, in the metadata), or a
    spec with --weights (or fresh weights from fresh_seed where the caller allows them). An .onnx file's
    weights are read only where `need_weights` (the numpy engine): onnxruntime reads them itself."""
    from dlc.onnx import export

    if is_onnx(model) and expr is None:
        if weights:
            raise DlcError(f"{model} carries its own weights; --weights goes with a spec")
        from dlc.onnx.model import check_weights, read_model

        # the numpy engine needs the weights' values; onnxruntime reads external data itself, by path
        onnx_model = read_model(model, weights=need_weights)
        check_weights(onnx_model, model)
        graph = None
        if need_weights or any(p.key == export.META_SPEC for p in onnx_model.metadata_props):
            from dlc.compile import compile_spec

            file, text = export.spec_of(onnx_model, model)
            try:
                graph = compile_spec(text, file=file)
            except DlcError:
                if need_weights:
                    raise
                # onnxruntime needs only the model; the spec served to check token ids
        arrays = export.weights_of(onnx_model, graph, model) if need_weights else None
        normalize = export.normalize_of(onnx_model, model)
        if arrays is None:
            return Model(None, onnx_model, model, graph, normalize)
        net = Network(graph, *arrays, weights=f"{model}'s initializers", onnx_file=model, normalize=normalize)
        return Model(net, onnx_model, model, normalize=normalize)
    net = weights_for(load_graph(model, expr), weights, fresh_seed)
    return Model(net, None, normalize=net.normalize)


def weights_for(graph: Graph, weights: str | None, fresh_seed: int | None) -> Network:
    """The spec with a checkpoint's weights, checked against it, or with fresh ones from fresh_seed."""
    if weights:
        from dlc.engine.params import load_checkpoint

        params, state, meta = load_checkpoint(weights, graph)
        return Network(graph, params, state, weights=weights, checkpoint=weights, normalize=meta.get("normalize"),
                       class_names=meta.get("class_names"))
    if fresh_seed is None:
        raise DlcError("a spec needs its trained weights: --weights CKPT (or give an exported .onnx file)")
    from dlc.engine.params import init_params

    init = graph.train.get("init", "he")
    params, state = init_params(graph, init=init, seed=fresh_seed, std=graph.train.get("init_std", 0.01))
    return Network(graph, params, state, weights=f"fresh {init} weights (seed {fresh_seed})")


def onnx_model_of(loaded: Model):
    if loaded.onnx is None:
        from dlc.onnx.export import to_onnx

        loaded.onnx = to_onnx(loaded.net)
    return loaded.onnx


def session_of(loaded: Model, device: str):
    """An onnxruntime session: on the file itself for an .onnx model (a model over 2 GB cannot travel
    as bytes, and its external data is found beside the file), else on dlc's export of the spec."""
    from dlc.onnx import runtime as rt

    if loaded.path:
        from dlc.onnx.model import check_ranked

        check_ranked(loaded.onnx)
    session = rt.create_session(loaded.path or onnx_model_of(loaded), device)
    if loaded.graph is not None:  # a spec's `shared` inputs have no batch axis, which ONNX does not record
        from dataclasses import replace

        shared = {n.name for n in loaded.graph.inputs if n.attrs.get("shared")}
        session.inputs = [replace(p, batched=p.name not in shared) for p in session.inputs]
    return session


def vocabularies(loaded: Model) -> dict[str, int]:
    """Input name -> the vocabulary its token ids must stay below, where the spec or the graph says it."""
    vocab = {}
    if loaded.onnx is not None:
        from dlc.onnx.model import token_vocabularies

        vocab.update(token_vocabularies(loaded.onnx))
    if loaded.graph is not None:
        from dlc.layers.dense import token_vocab

        for node in loaded.graph.inputs:  # each input of token ids (or a padding mask), not the first alone
            spec_vocab = token_vocab(loaded.graph, node.name)
            if spec_vocab:
                vocab[node.name] = spec_vocab
    return vocab


def refuse_to_overrun(graph, ports: list, batch: int, what: str, per_sample: int = 0) -> None:
    """Refuse a batch whose forward pass (and `per_sample` bytes more for each sample) cannot fit in
    memory (dlc.memory), before allocating it."""
    from dlc.machine import refuse_unless_fits
    from dlc.memory import forward_bytes, input_bytes

    if graph is not None:
        refuse_unless_fits(forward_bytes(graph, batch) + batch * per_sample, what)
    elif all(isinstance(d, int) for p in ports for d in p.shape[1:]):
        refuse_unless_fits(sum(input_bytes(tuple(p.shape[1:]), batch) for p in ports) + batch * per_sample, what)


def drawn_bytes(ports: list) -> int:
    """Per sample, the float64 batch --random draws before casting it."""
    return sum(8 * prod(d for d in p.shape[1:] if isinstance(d, int)) for p in ports)
