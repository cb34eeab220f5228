"""`dlc sample RUN`: text from a character-level language model that `dlc train --data FILE.txt` trained.

The run's checkpoint carries the spec and the file's vocabulary, so RUN alone says how to decode.
numpy and the engine are imported inside the command, so the other commands start fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from dlc.commands.arguments import NON_NEGATIVE, SEED
from dlc.errors import DlcError

# Tokens are held until the end, and past the window each costs a full pass: a bound that a small model
# reaches in about a minute keeps a typo (a billion, 23 digits) from running for days.
MAX_TOKENS = 100_000


def run_checkpoint(run: Path) -> Path:
    """A checkpoint file, or a run directory's best.npz (else its last.npz)."""
    if run.is_dir():
        for name in ("best.npz", "last.npz"):
            if (run / name).is_file():
                return run / name
        raise DlcError(f"{run}: no best.npz or last.npz here (is it a dlc train run directory?)")
    return run


@click.command("sample")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="The text to continue; every character must be in the run's vocabulary.")
@click.option("--tokens", type=click.IntRange(min=0, max=MAX_TOKENS), default=200, show_default=True,
              help=f"Characters to generate, at most {MAX_TOKENS:,}.")
@click.option("--temperature", type=NON_NEGATIVE, default=1.0, show_default=True,
              help="Divides the logits: below 1 is more conservative, 0 always takes the most likely character.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the draws (a whole number >= 0).")
def sample(run, prompt, tokens, temperature, seed):
    """Continue --prompt with a language model trained on a text file (RUN: a run directory or checkpoint).

    A causal model keeps a key/value cache: each new character runs the layers on that step alone
    (attention reads the earlier steps' keys and values), holding 2 x D x T numbers (4 bytes each in
    float32) per attention layer for a window of T; with kv=N grouped heads, N/H of that. Past T characters the window slides and every new
    character re-reads the last T, as a model without the cache does on every one.
    """
    import numpy as np

    from dlc.compile import compile_spec
    from dlc.engine.params import check_against, load_checkpoint
    from dlc.engine.decode import Decoder, why_not_stepwise
    from dlc.engine.run import forward
    from dlc.graph import Network
    from dlc.layers.dense import token_vocab
    from dlc.train.text import generate, show_chars, window_output

    path = run_checkpoint(run)
    params, state, meta = load_checkpoint(path)
    if "spec" not in meta:
        raise DlcError(f"{path} was not written by dlc train")
    chars = meta.get("vocab")
    if not chars:
        raise DlcError(f"{path}: the run was not trained on a text file (no vocabulary is stored), "
                       f"so there is nothing to decode tokens with")
    graph = compile_spec(meta["spec"], file=meta.get("file") or str(path))
    net = Network(graph, params, state, weights=str(path), checkpoint=str(path))
    check_against(net)
    fits = min(token_vocab(graph) or 0, graph.output.out_shape[-1])
    if len(chars) > fits:  # an edited vocabulary: its last characters would index past the embedding
        raise DlcError(f"{path}: its vocabulary has {len(chars)} characters but its network reads and predicts "
                       f"{fits} tokens; the checkpoint was edited or damaged")
    if not prompt:
        raise DlcError("--prompt needs at least one character to start from")
    index = {c: i for i, c in enumerate(chars)}
    unknown = sorted(set(prompt) - set(index))
    if unknown:
        raise DlcError(f"--prompt has characters the run never saw: {show_chars(''.join(unknown))} "
                       f"(its vocabulary: {show_chars(chars)})")
    reason = why_not_stepwise(graph)
    if reason is None:
        output = Decoder(net).next_output
    else:
        click.echo(f"dlc: no key/value cache: {reason}, so every character re-runs the whole window", err=True)
        output = window_output(lambda x: forward(net, x)[0], graph.input.out_shape[0])
    ids = generate(output, np.array([index[c] for c in prompt]), tokens, graph.output.kind == "softmax",
                   len(chars), temperature, np.random.default_rng(seed))
    click.echo("".join(chars[i] for i in ids))
