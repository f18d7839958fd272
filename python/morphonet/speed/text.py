"""Offline text for the character-level language model: the source of a fixed list of pure
Python standard-library modules, as they ship with the running Python (no download; the same
bytes on every machine with the same Python version; its SHA-256 goes into every record)."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import check_int

__all__ = ["CORPUS_MODULES", "VOCAB", "CharData", "corpus", "encode", "load_char_data"]

# pure-Python modules present in every CPython 3.9+ (~600 kB of source on 3.11)
CORPUS_MODULES = ("argparse", "difflib", "textwrap", "dataclasses", "functools", "inspect",
                  "typing", "enum", "string", "shlex", "calendar")
# newline + printable ASCII; any other character maps to the last id
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
_INDEX = {c: i for i, c in enumerate(VOCAB)}
UNKNOWN = len(VOCAB)  # id of every character outside VOCAB
VOCAB_SIZE = len(VOCAB) + 1


def corpus() -> tuple[str, str]:
    """(text, SHA-256 hex) of the concatenated sources of `CORPUS_MODULES`."""
    parts = []
    for name in CORPUS_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise RuntimeError(f"standard-library module {name!r} has no Python source here "
                               f"(found {getattr(spec, 'origin', None)!r})")
        with open(spec.origin, encoding="utf-8") as f:
            parts.append(f.read())
    text = "\n".join(parts)
    return text, hashlib.sha256(text.encode()).hexdigest()


def encode(text: str) -> Tensor:
    """Character ids (int64), unknown characters → `UNKNOWN`."""
    return torch.tensor([_INDEX.get(c, UNKNOWN) for c in text], dtype=torch.int64)


@dataclass(frozen=True)
class CharData:
    """Windows of ``ctx`` characters: x (N, ctx) ids, y (N, ctx) the next character of each.
    Train / val / test come from disjoint stretches of the corpus (first 90%, next 5%, last
    5%)."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    ctx: int
    sha256: str
    chars: int


def _windows(ids: Tensor, ctx: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` non-overlapping windows (all of them when fewer), chosen at random."""
    count = (ids.numel() - 1) // ctx
    if count < 1:
        raise ValueError(f"text of {ids.numel()} characters is too short for ctx={ctx}")
    pick = torch.randperm(count, generator=gen)[:n].sort().values
    starts = pick * ctx
    idx = starts[:, None] + torch.arange(ctx + 1)[None, :]  # (n, ctx + 1)
    w = ids[idx]
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def load_char_data(ctx: int = 64, train_windows: int = 2048, val_windows: int = 256,
                   seed: int = 0) -> CharData:
    """The corpus cut into train / val / test windows of ``ctx`` characters (``seed`` picks
    which windows)."""
    ctx = check_int("ctx", ctx, 1)
    check_int("train_windows", train_windows, 1)
    check_int("val_windows", val_windows, 1)
    text, sha = corpus()
    ids = encode(text)
    n = ids.numel()
    a, b = int(0.9 * n), int(0.95 * n)
    gen = torch.Generator().manual_seed(seed)
    return CharData(_windows(ids[:a], ctx, train_windows, gen),
                    _windows(ids[a:b], ctx, val_windows, gen),
                    _windows(ids[b:], ctx, val_windows, gen), ctx, sha, n)
