"""Hugging Face `transformers` models by import path, as a user writes them (docs/usage.md#hugging-face-models):
example factories for ``--model hf_toys:gpt2_tiny`` and ``--model hf_toys:bert_tiny``, and a token-sequence
dataset for ``--dataset hf_toys:token_classes``. Tests put this folder on PYTHONPATH.

Every model is built from a config, never downloaded (no ``from_pretrained`` of a hub name; the tests also set
HF_HUB_OFFLINE=1), and seeded, so that every rank builds the same model. The trained weights come from
``--checkpoint``: a ``torch.save(model.state_dict())`` file or a ``model.save_pretrained(folder)`` folder.

- `gpt2_tiny`: a 2-layer GPT-2 (``GPT2LMHeadModel``) over the 97 token ids of ``--dataset text``
  (``landscape_mpi.data.text.VOCAB_SIZE``), 64 positions (the text dataset's sequences): ``--task lm``.
  Called as ``model(ids)``; it returns an output object whose ``.logits`` (B, T, 97) the lm task reads.
  Its output head is tied to the token embedding (one tensor, two state_dict names).
- `bert_tiny`: a 2-layer BERT sequence classifier (``BertForSequenceClassification``, `NUM_LABELS` classes)
  over `VOCAB` token ids: ``--task classify``. Called as ``model(input_ids=..., attention_mask=...)``
  (the dataset's dict items), ``.logits`` (B, NUM_LABELS).
- `token_classes(split)`: `N_ITEMS` dict items ``{"input_ids", "attention_mask", "labels"}`` of `SEQ` tokens,
  padded with id 0 (attention_mask 0) after a random length; the label is a fixed function of the tokens
  (whether the first token is in the upper half of the vocabulary), so a classifier can learn it.
"""

import torch
from torch.utils.data import Dataset

from landscape_mpi.data.text import BLOCK_SIZE, VOCAB_SIZE

VOCAB, SEQ, N_ITEMS, NUM_LABELS = 30, 12, 40, 2
PAD = 0


def gpt2_tiny():
    """A 2-layer GPT-2 for the text dataset (config only, nothing downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB_SIZE, n_positions=BLOCK_SIZE,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def bert_tiny():
    """A 2-layer BERT sequence classifier with NUM_LABELS classes (config only, nothing downloaded)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=SEQ, num_labels=NUM_LABELS,
                        pad_token_id=PAD)
    return BertForSequenceClassification(config)


class TokenClasses(Dataset):
    """Dict items of token sequences: input_ids (SEQ,), attention_mask (SEQ,) and labels (an int)."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": int(self.labels[i])}


def token_arrays(split: str, n: int = N_ITEMS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids (n, SEQ) int64, attention_mask (n, SEQ) int64, labels (n,) int64) of one split, seeded."""
    g = torch.Generator().manual_seed(31 if split == "train" else 32)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    lengths = torch.randint(SEQ // 2, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, PAD)
    labels = (ids[:, 0] >= VOCAB // 2).long()
    return ids, mask, labels


def token_classes(split: str) -> TokenClasses:
    """The dataset factory of ``--dataset hf_toys:token_classes``."""
    return TokenClasses(*token_arrays(split))
