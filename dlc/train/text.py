"""Character-level language models on a text file (`--data FILE.txt`), and sampling from them.

The vocabulary is the file's distinct characters in code-point order; character i of it is token i.
The text is cut into windows of T + 1 characters, one after another (each character is a target
once per epoch, as char-rnn reads its text): the first T are the input, the last T the targets, so
every step predicts the next character. The first 90% of the text trains, the next 5% validates and
the last 5% tests, each from its own stretch of the text so that no window straddles two splits.

Sampling (`dlc sample`) feeds the last T characters and draws the next from the output at the last
of them; a prompt shorter than T sits at the start of the window with the rest padded, which the
model cannot see when it is causal (as a language model must be to learn this task honestly). A causal
model is run step by step with its keys and values cached (dlc.engine.decode), with the same outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from dlc.errors import DlcError
from dlc.layers.spatial import show
from dlc.train.catalog import Wanted
from dlc.train.dataset import Data, Split

SPLIT_ENDS = (0.90, 0.95, 1.0)  # where train, val and test end, as fractions of the text


def read_text(path: str) -> str:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DlcError(f"{path}: not UTF-8 text (byte {e.start} cannot be decoded)")
    if not text:
        raise DlcError(f"{path}: the file is empty")
    return text


def encode(text: str) -> tuple[np.ndarray, str]:
    """(token ids as int64, the vocabulary): every distinct character, in code-point order."""
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    chars, ids = np.unique(codes, return_inverse=True)
    return ids.astype(np.int64), "".join(map(chr, chars))


def _windows(ids: np.ndarray, steps: int) -> Split | None:
    """Consecutive windows of steps + 1 tokens: inputs ids[k:k+T], targets ids[k+1:k+T+1]."""
    n = (len(ids) - 1) // steps
    if n < 1:
        return None
    x = ids[:n * steps].reshape(n, steps)
    y = ids[1:n * steps + 1].reshape(n, steps)
    return Split(x, y)


def text_data(path: str, want: Wanted | None) -> Data:
    """The text file as next-character windows for a spec reading T token ids, with its vocabulary."""
    if want is None:
        raise DlcError(f"{path}: a text file is cut into windows of a spec's input length, and no spec was given")
    input_shape, classes, vocab = want.input_shape, want.classes, want.vocab
    if len(input_shape) != 1 or vocab is None:
        raise DlcError(f"{path}: a text file trains a character-level language model, so the spec must read "
                       f"token ids (`input seq T` then `embed D vocab=V`); its input is {show(input_shape)}")
    text = read_text(path)
    ids, chars = encode(text)
    if len(chars) < 2:  # every target would be that character: nothing to learn, and one class to score
        raise DlcError(f"{path} holds a single distinct character ({show_chars(chars)}): a language model "
                       "needs a text of at least two to predict one from another")
    need = min(vocab, classes)
    if len(chars) > need:
        raise DlcError(f"{path} has {len(chars)} distinct characters, but the spec's embed has vocab={vocab} "
                       f"and its output {classes} classes per step: both need at least {len(chars)}")
    steps = input_shape[0]
    ends = [round(f * len(ids)) for f in SPLIT_ENDS]
    train, val, test = (_windows(ids[lo:hi], steps) for lo, hi in zip([0, *ends[:-1]], ends))
    if train is None:
        raise DlcError(f"{path}: {len(text)} characters are too few for one training window of "
                       f"{steps + 1} characters (the spec's input is seq {steps})")
    counts = ", ".join(f"{len(s)} {what}" for s, what in ((train, "train"), (val, "val"), (test, "test")) if s)
    note = (f"{path}: {len(text):,} characters, a vocabulary of {len(chars)} ({show_chars(chars)}); "
            f"windows of {steps} characters predicting the next at every step: {counts}")
    return Data(train, val, test, name=path, notes=[note], vocab=chars)


def show_chars(chars: str, most: int = 40) -> str:
    """The vocabulary as a person reads it: control characters escaped, a long one cut short."""
    shown = repr(chars[:most])[1:-1]
    return shown + (f"... {len(chars) - most} more" if len(chars) > most else "")


def next_token(out: np.ndarray, softmax_output: bool, vocab: int, temperature: float,
               rng: np.random.Generator) -> int:
    """Draw a token from one step's output (probabilities after a softmax, else logits) at a
    temperature; 0 takes the most likely. Only the text's own `vocab` characters can come out."""
    z = out[:vocab].astype(np.float64)
    if softmax_output:
        z = np.log(np.maximum(z, np.finfo(np.float64).tiny))
    if temperature == 0:
        return int(z.argmax())
    z = (z - z.max()) / temperature
    p = np.exp(z)
    return int(rng.choice(vocab, p=p / p.sum()))


def window_output(forward: Callable[[np.ndarray], np.ndarray], steps: int) -> Callable[[list[int]], np.ndarray]:
    """The output at the last of some ids from a forward pass of the whole window: the last `steps` ids
    at its start, the rest padded. Each call costs a full window; dlc.engine.decode.Decoder gives the
    same outputs for a causal network at one step's cost."""
    window = np.zeros((1, steps), np.int64)

    def output(ids: list[int]) -> np.ndarray:
        context = ids[-steps:]
        window[0, :len(context)] = context
        return forward(window)[0, len(context) - 1]
    return output


def generate(output: Callable[[list[int]], np.ndarray], prompt: np.ndarray, tokens: int, softmax_output: bool,
             vocab: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """The prompt followed by `tokens` drawn one at a time; output maps the ids so far to the network's
    output at the last of them."""
    ids = list(prompt)
    for _ in range(tokens):
        ids.append(next_token(output(ids), softmax_output, vocab, temperature, rng))
    return np.array(ids, np.int64)
