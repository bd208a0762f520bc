"""Multi-layer perceptron on the flattened input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distml.errors import ConfigError
from distml.models.base import (MODELS, check_classifier, check_dropout, check_positive_int,
                                flat_features)

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@MODELS.register("mlp", kind="neural network", paper="Rumelhart, Hinton & Williams 1986",
                 summary="fully connected network: flatten, then Linear+activation per hidden layer")
class MLP(nn.Module):
    """Fully connected classifier: flatten → (Linear → activation → dropout) per hidden layer → Linear.

    For input (1, 28, 28), 10 classes and the defaults it is exactly 784-512-512-10.

    Args:
        input_shape: shape of one example; it is flattened.
        num_classes: number of classes (>= 2).
        task: must be "classification" (None skips the check).
        hidden: widths of the hidden layers (may be empty: then it is softmax regression).
        activation: "relu", "tanh" or "gelu".
        dropout: dropout probability after each hidden activation, in [0, 1).

    Raises:
        ConfigError: bad input_shape, num_classes, widths, activation or dropout.
    """

    default_loss = "cross_entropy"

    def __init__(self, input_shape: Sequence[int], num_classes: int, task: str | None = None,
                 hidden: Sequence[int] = (512, 512), activation: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        c = check_classifier("mlp", num_classes, task)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"mlp: activation must be one of {', '.join(ACTIVATIONS)}, "
                              f"got {activation!r}")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ConfigError(f"mlp: hidden must be a list of ints >= 1, got {hidden!r}")
        widths = [check_positive_int("mlp", "each hidden width", h) for h in hidden]
        p = check_dropout("mlp", dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        d = flat_features("mlp", input_shape)
        for h in widths:
            layers += [nn.Linear(d, h), ACTIVATIONS[activation]()]
            if p > 0:
                layers.append(nn.Dropout(p))
            d = h
        layers.append(nn.Linear(d, c))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
