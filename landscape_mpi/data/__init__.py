"""Evaluation and training data: embedded digits, MNIST-1D, CIFAR-10, user datasets."""
