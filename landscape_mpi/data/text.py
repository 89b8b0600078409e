"""The built-in `text` dataset: real English text that ships with every CPython, a fixed character tokenizer,
and the train/test split into sequences for causal language models (the zoo's `gpt_tiny`).

The corpus is the Python documentation's reference topics that `pydoc` shows offline (``help("assert")``),
stored in the standard library's ``pydoc_data/topics.py`` of every CPython installation (3.10 and later too):
about 465,000 characters of the Language Reference, under the Python Software Foundation License (the
licence of Python and its documentation). It is read, never downloaded: the topics in sorted order of their
names, joined by one newline. The text belongs to a Python release, so another Python version may give
another corpus (`corpus_sha256` tells; a surface resume compares the data's fingerprint and refuses a
difference).

The tokenizer is fixed, whatever the corpus: id 0 is the unknown character, ids 1..96 are newline and the 95
printable ASCII characters (space to ``~``) in code-point order. Characters outside (a few hundred typographic
quotes and dashes in the corpus) are encoded as 0 and decoded as U+FFFD.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

from landscape_mpi.config.errors import UserError

CORPUS_MODULE = "pydoc_data.topics"
#: the characters of ids 1.. (id 0: unknown)
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = 0
UNKNOWN_CHAR = "\ufffd"
VOCAB_SIZE = len(CHARACTERS) + 1  # 97
#: tokens per sequence (the block size of `gpt_tiny`)
BLOCK_SIZE = 64
#: the first 90% of the corpus's tokens are the train split, the last 10% the test split
TRAIN_FRACTION = 0.9

_TABLE = np.zeros(128, dtype=np.int64)  # ASCII code point -> id
_TABLE[[ord(c) for c in CHARACTERS]] = np.arange(1, VOCAB_SIZE)


def corpus() -> str:
    """The corpus text (see the module docstring); raises UserError where the Python installation lacks it."""
    import importlib

    try:
        topics = importlib.import_module(CORPUS_MODULE).topics
    except (ImportError, AttributeError):
        raise UserError(f"--dataset text reads the standard library's {CORPUS_MODULE.replace('.', '/')}.py, "
                        f"missing from this Python installation") from None
    return "\n".join(topics[name] for name in sorted(topics))


def corpus_sha256() -> str:
    """sha256 of the corpus text in UTF-8."""
    return hashlib.sha256(corpus().encode("utf-8")).hexdigest()


def encode(text: str) -> torch.Tensor:
    """Token ids (int64, one per character) of `text`; characters outside the vocabulary become `UNKNOWN`."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.where(codes < 128, _TABLE[np.minimum(codes, 127)], UNKNOWN)
    return torch.from_numpy(ids)


def decode(ids: torch.Tensor | list[int]) -> str:
    """The text of token ids (`UNKNOWN` as U+FFFD)."""
    chars = UNKNOWN_CHAR + CHARACTERS
    return "".join(chars[i] for i in torch.as_tensor(ids, dtype=torch.int64).tolist())


@lru_cache(maxsize=1)
def _corpus_ids() -> torch.Tensor:
    return encode(corpus())


def text_split(split: str, block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (inputs, labels): int64 (N, block_size), non-overlapping consecutive sequences of the
    split's tokens (a last partial sequence is dropped); the labels are a copy of the inputs (a causal language
    model predicts ``ids[:, 1:]`` from ``logits[:, :-1]``)."""
    ids = _corpus_ids()
    cut = int(len(ids) * TRAIN_FRACTION)
    part = ids[:cut] if split == "train" else ids[cut:]
    n = len(part) // block_size
    x = part[:n * block_size].reshape(n, block_size).clone()
    return x, x.clone()
