"""Time on a device by the roofline model: each node takes max(FLOPs / peak, bytes moved / bandwidth),
and a pass the sum over its nodes (docs/conventions.md, "Serving and the roofline").

A causal network generates: a prefill of the prompt (the time to the first token), then one decode
step per generated token, the context growing by one each step. Any other network runs batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dlc.analysis import Analysis
from dlc.devices import Device, compute_precision, peak_for
from dlc.errors import DlcError
from dlc.serving import LayerCost, Pass, batch_pass, causal_attention, decode_step, prefill, steps, time_of

COST_FIELDS = ("macs", "flops", "weight_bytes", "activation_bytes", "kv_bytes", "out_bytes")


@dataclass
class NodeTime(LayerCost):
    """A node's figures summed over a phase's passes, with its roofline time."""

    seconds: float = 0.0
    compute_seconds: float = 0.0  # the part of `seconds` in passes where its compute was the bound

    @property
    def bound(self) -> str:
        return "compute" if self.compute_seconds * 2 > self.seconds else "memory"


@dataclass
class Phase:
    what: str  # "prefill", "decode" or "batch"
    passes: int  # 1, or the G decode steps summed
    nodes: list[NodeTime]
    bandwidth: float  # bytes/s its traffic moves at: the memory's, or the cache's where a pass fits it
    in_cache: bool = False
    contexts: tuple[int, int] | None = None  # the first and last decode step's context

    @property
    def seconds(self) -> float:
        return sum(n.seconds for n in self.nodes)

    def total(self, name: str) -> int:
        return sum(getattr(n, name) for n in self.nodes)


@dataclass
class Roofline:
    device: Device
    precision: str  # the precision whose peak the products run at
    peak: float  # its FLOP/s
    batch: int
    phases: list[Phase]
    prompt: int | None = None
    generate: int | None = None
    notes: list[str] = field(default_factory=list)

    def phase(self, what: str) -> Phase | None:
        return next((p for p in self.phases if p.what == what), None)


def _phase(passes: list[Pass], peak: float, device: Device, repeats: int = 1,
           peaks: dict[str, float] | None = None, fused: bool = False) -> Phase:
    """Each node of the first pass summed over the passes: the later passes name only the nodes whose
    cost changes from pass to pass (a decode step's causal attention); any other node costs what it
    cost in the first, `repeats` times. A first pass that fits the device's cache whole (weights,
    outputs, keys and values) moves its bytes at the cache's bandwidth, as repeated runs find them there.
    `peaks` gives a node whose products run in another precision (an int8 layer of a quantized ONNX file)
    its own peak. `fused`: besides, a node whose own traffic fits the cache moves it at the cache's
    bandwidth, as a layer's output is still there for the next."""
    in_cache = 0 < passes[0].footprint <= device.cache
    bandwidth = device.cache_bandwidth if in_cache else device.bandwidth
    varies = {c.node.name for p in passes[1:] for c in p.layers}
    nodes = {c.node.name: NodeTime(c.node, 0, 0, 0, 0, uncounted=c.uncounted) for c in passes[0].layers}
    for p in passes:
        for c in p.layers:
            t, times = nodes[c.node.name], 1 if c.node.name in varies else repeats
            resident = fused and 0 < c.bytes <= device.cache
            seconds, bound = time_of(c, (peaks or {}).get(c.node.name, peak),
                                     device.cache_bandwidth if resident else bandwidth)
            for name in COST_FIELDS:
                setattr(t, name, getattr(t, name) + times * getattr(c, name))
            t.seconds += times * seconds
            t.compute_seconds += times * seconds if bound == "compute" else 0.0
    first = passes[0]
    contexts = (first.context, passes[-1].context) if first.what == "decode" else None
    return Phase(first.what, repeats, list(nodes.values()), bandwidth, in_cache, contexts)


def roofline(analysis: Analysis, device: Device, batch: int, kv_dtype: str, prompt: int | None = None,
             generate: int | None = None, fused: bool = False) -> Roofline:
    """The phases of `analysis` on `device`: for a causal network a prefill of `prompt` tokens (default:
    its sequence length T, or T - generate where it learns positions for T tokens alone) and `generate` decode steps at contexts prompt+1 .. prompt+generate; for any
    other, one batch."""
    t = analysis.totals
    asked = compute_precision(t.dtype, t.act_dtype)
    precision, peak = peak_for(device, asked)
    notes = [] if precision == asked else [
        f"{device.name} lists no {asked} peak: its products are timed at its {precision} peak"]
    # an ONNX file's layers each compute in their own precision (a quantized file's int8 products)
    own = {s.node.name: peak_for(device, s.compute) for s in analysis.nodes if s.compute and s.compute != asked}
    peaks = {name: p for name, (_, p) in own.items()}
    notes += [f"{device.name}: products in {p} run at its {p} peak, {flops / 1e12:,.2f} TFLOP/s"
              for p, flops in sorted(set(own.values()))]
    g = analysis.graph
    if not causal_attention(g):
        for flag, value in (("--prompt", prompt), ("--generate", generate)):
            if value is not None:
                raise DlcError(f"{flag} {value}: {g.file} has no causal attention, so it does not generate; "
                               f"it runs batch by batch (--batch)")
        phases = [_phase([batch_pass(analysis, batch, fused)], peak, device, peaks=peaks, fused=fused)]
        return Roofline(device, precision, peak, batch, phases, notes=notes)
    generate = 128 if generate is None else generate
    learned = [n for n in g.nodes if n.kind == "posembed"]
    if prompt is None:  # the spec's window, or what leaves room for the tokens generated in it
        prompt = steps(g) - generate if learned and generate < steps(g) else steps(g)
    if learned and prompt + generate > steps(g):
        raise DlcError(f"--prompt {prompt} --generate {generate}: {g.file} learns positions ({learned[0].name}) "
                       f"for {steps(g)} tokens, fewer than {prompt + generate}")
    phases = [_phase([prefill(analysis, prompt, batch, kv_dtype, fused)], peak, device, peaks=peaks, fused=fused)]
    if generate:
        # only causal attention reads a context: the other layers cost the same on every step
        attention = {n.name for n in causal_attention(g)}
        steps_ = [decode_step(analysis, prompt + 1, batch, kv_dtype, fused=fused)] + [
            decode_step(analysis, prompt + i, batch, kv_dtype, attention, fused) for i in range(2, generate + 1)]
        phases.append(_phase(steps_, peak, device, generate, peaks, fused))
    return Roofline(device, precision, peak, batch, phases, prompt, generate, notes)
