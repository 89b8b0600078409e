"""A nanoGPT-style causal transformer for the built-in `text` data (landscape_mpi/data/text.py): language-model
landscapes with nothing downloaded.

Token embedding + learned position embedding, pre-LayerNorm blocks (causal multi-head self-attention with
separate q/k/v projections, a GELU MLP), a final LayerNorm and an output head tied to the token embedding: one
Parameter under the two state_dict names ``tok.weight`` and ``head.weight`` (`named_parameters()` lists it
once, as ``tok.weight``, so the directions give it one direction). ``forward(ids)``: int64 token ids (B, T),
T <= block size, -> next-token logits (B, T, V). No dropout, so train and eval modes compute the same.

The forward is written for the fast engines: traceable by torch.fx (no Python branch on tensor values or
shapes) and batchable by torch.func.vmap (plain matmuls, masked_fill and softmax; no fused attention kernel).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: the `text` data's vocabulary size (landscape_mpi.data.text.VOCAB_SIZE, checked equal by the tests; models
#: and data are independent packages, so the number is written here too)
TEXT_VOCAB_SIZE = 97


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions <= t only."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(width // heads)
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def _split_heads(self, z: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, heads, T, C / heads)."""
        return z.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.size(-2)
        q, k, v = self._split_heads(self.query(x)), self._split_heads(self.key(x)), self._split_heads(self.value(x))
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, T, T)
        i = torch.arange(t, device=x.device)
        future = i.unsqueeze(0) > i.unsqueeze(1)  # [query, key]: the key comes after the query
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        return self.proj((weights @ v).transpose(-3, -2).flatten(-2))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) (4x width, GELU)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A small causal language model; `gpt_tiny` in the zoo (about 0.11M parameters)."""

    def __init__(self, vocab_size: int = TEXT_VOCAB_SIZE, block_size: int = 64, layers: int = 2, heads: int = 2,
                 width: int = 64) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(block_size, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied: one Parameter, two state_dict names
        # GPT-2's initialization, drawn from torch's global generator in module order (deterministic per seed);
        # the residual output projections scaled by 1/sqrt(2 * layers).
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module is not self.head:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("attn.proj", "mlp.2")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.size(-1)
        x = self.tok(ids) + self.pos.weight[:t]
        return self.head(self.ln_f(self.blocks(x)))
