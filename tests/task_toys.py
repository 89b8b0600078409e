"""Tiny models, datasets and a user task for the task tests (--model task_toys:..., --task task_toys:...).

Deliberately not part of the package (tests put this folder on PYTHONPATH) and independent of the package's
own models: a causal LM toy (an embedding and a linear head, with a causal mix of the previous token's
embedding) returning logits (B, T, V), a small regression net, and a user Task for it written as the docs
show (docs/usage.md#tasks).
"""

import torch
from torch import nn
from torch.utils.data import Dataset

VOCAB, WIDTH, SEQ = 7, 4, 6
FEATURES, TARGETS = 3, 2


class TinyLM(nn.Module):
    """logits[:, t] = head(emb(x_t) + mix * emb(x_{t-1})): causal, (B, T, V)."""

    def __init__(self, vocab: int = VOCAB, width: int = WIDTH) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.mix = nn.Parameter(torch.tensor(0.5))
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        e = self.emb(ids)
        prev = torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], dim=1)
        return self.head(torch.tanh(e + self.mix * prev))


class Output:
    """A Hugging Face-like output object: the logits under .logits."""

    def __init__(self, logits):
        self.logits = logits


class TinyLMWithOutput(TinyLM):
    def forward(self, input_ids, attention_mask=None):
        return Output(super().forward(input_ids))


def make_lm():
    torch.manual_seed(3)
    return TinyLM()


def make_lm_output():
    torch.manual_seed(3)
    return TinyLMWithOutput()


def tokens(split, n=20):
    g = torch.Generator().manual_seed(21 if split == "train" else 22)
    return torch.randint(0, VOCAB, (n, SEQ), generator=g)


class TokenItems(Dataset):
    """Items are single LongTensors of token ids (SEQ,)."""

    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i]


class DictItems(Dataset):
    """Hugging Face-style dict items: input_ids, attention_mask (zeros at the end of some rows) and labels
    (-100 at some positions)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def token_data(split):
    return TokenItems(tokens(split))


def masked(split):
    """(ids, attention_mask, labels) with masked positions, the same for every call."""
    ids = tokens(split)
    mask = torch.ones_like(ids)
    mask[::3, -2:] = 0
    labels = ids.clone()
    labels[1::4, 2] = -100
    return ids, mask, labels


def dict_data(split):
    ids, mask, labels = masked(split)
    return DictItems([{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(len(ids))])


def labels_only_dict_data(split):
    """input_ids and labels (-100 at some positions), no mask: one input key, so the model gets the ids."""
    ids, _, labels = masked(split)
    return DictItems([{"input_ids": ids[i], "labels": labels[i]} for i in range(len(ids))])


# ------------------------------------------------------------------------------------------- regression
def regress_arrays(split, n=30):
    g = torch.Generator().manual_seed(31 if split == "train" else 32)
    x = torch.randn(n, FEATURES, generator=g)
    y = torch.stack([x[:, 0] - 0.5 * x[:, 1] ** 2, torch.sin(x[:, 2])], dim=1) + 0.1 * torch.randn(n, TARGETS,
                                                                                                   generator=g)
    return x, y


def regress_data(split):
    x, y = regress_arrays(split)
    return [(x[i], y[i]) for i in range(len(x))]


def regress_dict_data(split):
    x, y = regress_arrays(split)
    return DictItems([{"features": x[i], "labels": y[i]} for i in range(len(x))])


def make_regressor():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, TARGETS))


class SquaredError:
    """A user task as docs/usage.md#tasks writes it: squared error summed over target elements, and r2."""

    name = "squared_error"
    metrics = ("loss", "r2")

    def to_device(self, data, device):
        return data.to(device)

    def forward(self, model, inputs):
        return model(inputs)

    def loss_sum(self, output, inputs, labels):
        return ((output - labels) ** 2).sum()

    def count(self, inputs, labels):
        return labels.numel()

    def batch_sums(self, output, inputs, labels):
        y = labels.double()
        return {"loss": float(self.loss_sum(output, inputs, labels).double()), "count": labels.numel(),
                "y": float(y.sum()), "yy": float((y * y).sum())}

    def finish(self, sums):
        n = sums["count"]
        mse = sums["loss"] / n
        return [mse, 1.0 - sums["loss"] / (sums["yy"] - sums["y"] ** 2 / n)]

    def check(self, output, inputs, labels, split):
        if output.shape != labels.shape:
            return f"the model returns {tuple(output.shape)}, expected {tuple(labels.shape)}"
        return None


def squared_error():
    return SquaredError()
