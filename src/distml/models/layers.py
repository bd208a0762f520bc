"""Find and reset a model's layers: what algorithms need to know about any ``nn.Module``."""

from __future__ import annotations

import torch
from torch import nn

from distml.errors import ConfigError


def linear_layer(owner: str, model: nn.Module, outputs: tuple[int, ...]) -> nn.Linear:
    """The single ``nn.Linear`` a linear model consists of (its only parameters).

    Args:
        owner: who asks (named in the error).
        model: the model.
        outputs: the accepted numbers of outputs.

    Raises:
        ConfigError: the model has other parameters or the wrong number of outputs.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n_params = sum(1 for _ in model.parameters())
    if len(layers) != 1 or n_params != sum(1 for _ in layers[0].parameters()):
        raise ConfigError(f"{owner} needs a linear model (softmax, least_squares or linear_svm), "
                          f"got {type(model).__name__}")
    if layers[0].out_features not in outputs:
        raise ConfigError(f"{owner} needs {' or '.join(map(str, outputs))} model outputs "
                          f"(binary classification or regression), got {layers[0].out_features}")
    return layers[0]


def reinitialize(model: nn.Module, seed: int) -> None:
    """Re-draw every layer's parameters (``reset_parameters``) from ``seed``.

    The global RNG is left as it was (``fork_rng``), so the run's other draws do not shift.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
