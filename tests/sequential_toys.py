"""A classification problem large enough for sequential estimates to stop early (--tolerance): noisy Gaussian
classes, 1,200 training and 600 test samples (--dataset sequential_toys:make_data), and the user toy model
(landscape_toys:make_model) trained on it (`train_checkpoint`). Not part of the package: tests put this folder on
PYTHONPATH, as a user would."""

import torch
from torch.utils.data import TensorDataset

import landscape_toys

SIZES = {"train": 1200, "test": 600}


def make_data(split):
    g = torch.Generator().manual_seed(11 if split == "train" else 12)
    n = SIZES[split]
    labels = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[1.5, 0.0, 0.0, 1.0], [0.0, 1.5, 0.0, -1.0], [0.0, 0.0, 1.5, 0.5]])
    x = centers[labels] + 1.2 * torch.randn(n, 4, generator=g)
    return TensorDataset(x, labels)


def train_checkpoint(path, steps=100):
    """theta*: the toy model trained full-batch on the train split (one thread: tiny matrices); saved as a
    state_dict at `path`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = landscape_toys.make_model()
    x, y = make_data("train").tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.set_num_threads(threads)
    torch.save(model.state_dict(), path)
    return str(path)
