"""``--dataset hf:PATH``: token data as Hugging Face users keep them, read offline.

PATH is one of (``{split}`` in it is replaced by the split's name, so one file or folder per split):

- a folder written by ``datasets``' ``save_to_disk`` (Arrow): a ``DatasetDict`` (the split is taken by name) or
  one ``Dataset``. Its ``input_ids`` column (and
  ``attention_mask``, ``labels`` or ``label`` where present) is read as it is; a dataset with only a ``text``
  column is tokenised like a JSONL file. Needs the ``datasets`` package (the hf extra).
- a text file (``.txt``): the whole text tokenised as one stream with ``--tokenizer``'s tokenizer (no special
  tokens added) and cut into consecutive sequences of ``--seq-len`` tokens (a last partial one is dropped), as
  the built-in ``text`` dataset is: inputs (N, seq_len) int64, no labels.
- a JSONL file (``.jsonl``): one JSON object per line, its ``text`` tokenised on its own, cut at ``--seq-len``
  tokens and padded to it; inputs ``{"input_ids", "attention_mask"}`` (N, seq_len), labels from ``label`` (or
  ``labels``) where every record has one (the classify task's classes), else none.

A single file or ``Dataset`` without ``{split}`` in its path is every split asked for: give ``--splits test``
to evaluate it once. Sequences of unequal length are padded with the tokenizer's pad token (else its
end-of-text token, else 0) and an ``attention_mask`` marks the real tokens (the lm task counts only those). The
tokenizer is read with ``local_files_only`` (never downloaded), from ``--tokenizer`` or by default the ``--model
hf:DIR`` folder; the token ids it gives are what the surface file's data fingerprint hashes, and ``--seq-len``
(and whether ``--tokenizer`` is given) is part of the stored configuration, so a resume with another
tokenisation is refused.
"""

from __future__ import annotations

import json
import os

import torch

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.hub import HF_PREFIX, local_path

DEFAULT_SEQ_LEN = 128
TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
LABEL_COLUMNS = ("labels", "label")


def load_hf_split(spec: str, split: str, tokenizer: str | None, seq_len: int | None
                  ) -> tuple[torch.Tensor | dict[str, torch.Tensor], torch.Tensor | None]:
    """(inputs, labels) of one split of ``--dataset hf:PATH`` (see the module docstring)."""
    path = spec[len(HF_PREFIX):].replace("{split}", split)
    seq_len = seq_len or DEFAULT_SEQ_LEN
    where = f"--dataset {spec}"
    if os.path.isdir(path):
        return _saved_dataset(path, split, where, tokenizer, seq_len)
    if not os.path.isfile(path):
        raise UserError(f"{where}: no such file or folder {path}; give a save_to_disk folder, a .txt or a .jsonl "
                        f"file ({{split}} in the path is replaced by train or test)")
    if path.endswith(TEXT_SUFFIXES):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        ids = torch.tensor(_encoder(tokenizer, where)(text), dtype=torch.int64)
        n = len(ids) // seq_len
        if n < 1:
            raise UserError(f"{where}: {path} gives {len(ids)} tokens, fewer than one sequence of --seq-len "
                            f"{seq_len}; give a longer text or a smaller --seq-len")
        x = ids[:n * seq_len].reshape(n, seq_len).clone()
        return x, None
    if path.endswith(JSONL_SUFFIXES):
        records = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    assert isinstance(record, dict) and isinstance(record.get("text"), str)
                except (ValueError, AssertionError):
                    raise UserError(f"{where}: line {number} of {path} is not a JSON object with a \"text\" "
                                    f"string; write one record per line") from None
                records.append(record)
        if not records:
            raise UserError(f"{where}: {path} holds no records")
        return _tokenised(records, where, tokenizer, seq_len)
    raise UserError(f"{where}: {path} is neither a save_to_disk folder nor a .txt or .jsonl file")


def _encoder(tokenizer: str | None, where: str):
    """text -> token ids (a list of int) with the tokenizer of folder `tokenizer`, no special tokens."""
    tok = load_tokenizer(tokenizer, where)
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def load_tokenizer(tokenizer: str | None, where: str):
    """The Hugging Face tokenizer saved in folder `tokenizer` (or an hf: spec), read offline."""
    if tokenizer is None:
        raise UserError(f"{where} is text to tokenise: give --tokenizer DIR (a folder written by "
                        f"tokenizer.save_pretrained), or --model hf:DIR whose folder holds the tokenizer")
    folder = local_path(tokenizer, "--tokenizer")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError(f"{where}: tokenising needs transformers (pip install 'landscape-mpi[hf]')") from None
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")
    if not os.path.isdir(folder) or not any(os.path.isfile(os.path.join(folder, n)) for n in names):
        raise UserError(f"{where} is text to tokenise, but --tokenizer {folder} holds no tokenizer (none of "
                        f"{', '.join(names)}); save one there with tokenizer.save_pretrained(DIR) or give "
                        f"--tokenizer DIR")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  (transformers raises many types for a tokenizer it cannot read)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--tokenizer {folder}: not a readable tokenizer ({first})") from None


def _pad_id(tok) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None) if tok is not None else None
        if isinstance(value, int):
            return value
    return 0


def _padded(rows: list[list[int]], seq_len: int | None, pad: int, where: str) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (N, T) of token lists cut at `seq_len` (None: the longest) and padded."""
    rows = [r[:seq_len] if seq_len else r for r in rows]
    width = seq_len or max(len(r) for r in rows)
    if any(len(r) < 2 for r in rows):
        raise UserError(f"{where}: a record gives fewer than 2 tokens (nothing to predict); drop it")
    ids = torch.full((len(rows), width), pad, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.int64)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _labels(records, where: str) -> torch.Tensor | None:
    for column in LABEL_COLUMNS:
        values = [r.get(column) for r in records]
        if all(v is not None for v in values):
            try:
                return torch.tensor(values, dtype=torch.int64)
            except (TypeError, ValueError):
                raise UserError(f"{where}: the {column!r} values are not integers (classes) nor token lists of "
                                f"one length") from None
    return None


def _tokenised(records: list[dict], where: str, tokenizer: str | None, seq_len: int):
    tok = load_tokenizer(tokenizer, where)
    rows = [tok(r["text"], add_special_tokens=False)["input_ids"] for r in records]
    return _padded(rows, seq_len, _pad_id(tok), where), _labels(records, where)


def _saved_dataset(path: str, split: str, where: str, tokenizer: str | None, seq_len: int):
    try:
        import datasets
    except ImportError:
        raise UserError(f"{where}: reading a save_to_disk folder needs the datasets package "
                        f"(pip install 'landscape-mpi[hf]')") from None
    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001  (datasets raises many types for a folder it cannot read)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{where}: {path} is not a folder written by save_to_disk ({first})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{where}: the dataset has splits {', '.join(ds)}, not {split}; choose --splits "
                            f"among them")
        ds = ds[split]
    columns = set(ds.column_names)
    if "input_ids" not in columns:
        if "text" in columns:
            return _tokenised([dict(r) for r in ds], where, tokenizer, seq_len)
        raise UserError(f"{where}: the dataset has columns {', '.join(sorted(columns))}: neither input_ids "
                        f"(tokenised) nor text (to tokenise)")
    rows = [list(r) for r in ds["input_ids"]]
    lengths = {len(r) for r in rows}
    if "attention_mask" in columns or len(lengths) > 1:
        inputs = _padded(rows, None, 0, where)
        if "attention_mask" in columns:
            mask = _padded([list(m) for m in ds["attention_mask"]], None, 0, where)["input_ids"]
            inputs["attention_mask"] = mask
    else:
        inputs = torch.tensor(rows, dtype=torch.int64)
    labels = None
    for column in LABEL_COLUMNS:
        if column in columns:
            values = ds[column]
            try:
                labels = torch.tensor(values, dtype=torch.int64)
            except (TypeError, ValueError):
                labels = _padded([list(v) for v in values], None, -100, where)["input_ids"]
            break
    return inputs, labels
