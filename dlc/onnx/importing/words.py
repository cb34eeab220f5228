"""Spec words for sizes and options as the patterns write them."""

from __future__ import annotations

import math


def window_text(kernel, stride) -> str:
    k = f"{kernel[0]}x{kernel[1]}"
    if tuple(stride) == (1, 1):
        return k
    return k + (f"/{stride[0]}" if stride[0] == stride[1] else f"/{stride[0]}x{stride[1]}")


def options(**values) -> str:
    """`key=value` words for the options that differ from their default (given as (value, default))."""
    words = []
    for key, (value, default) in values.items():
        # float32 attributes (alpha=1e-4 stored as 9.99999974e-05) are their defaults if close
        same = math.isclose(value, default, rel_tol=1e-6) if isinstance(value, float) else value == default
        if not same:
            words.append(f"{key}={'on' if value is True else 'off' if value is False else f'{value:.6g}'}")
    return "".join(" " + w for w in words)


def pad_word(pad) -> str:
    return "" if pad == 0 else f" pad={pad}"
