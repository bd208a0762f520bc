"""Models and losses, found by name through :data:`MODELS` and :data:`LOSSES`.

Built-in models: ``softmax``, ``least_squares``, ``linear_svm`` (linear), ``mlp``,
``cnn``, ``resnet`` and ``transformer_lm`` (a language model). Built-in losses: ``cross_entropy``, ``mse``, ``hinge``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from torch import nn

from distml.errors import ConfigError
from distml.models import cnn, linear, losses, mlp, resnet, transformer  # noqa: F401  (registers the entries)
from distml.models.base import LOSSES, MODELS, TASKS
from distml.models.cnn import CNN
from distml.models.linear import LeastSquares, LinearSVM, SoftmaxRegression
from distml.models.losses import LossFn
from distml.models.mlp import MLP
from distml.models.resnet import ResNet
from distml.models.transformer import TransformerLM
from distml.registry import split_spec

__all__ = ["MODELS", "LOSSES", "build_model", "build_loss", "default_loss", "SoftmaxRegression",
           "LeastSquares", "LinearSVM", "MLP", "CNN", "ResNet", "TransformerLM", "LossFn"]


class _Info(Protocol):
    task: str
    num_classes: int | None
    input_shape: tuple[int, ...]


def build_model(spec: str | Mapping[str, Any], info: _Info) -> nn.Module:
    """Build the model a spec names, sized for the data ``info`` describes.

    The factory gets the context arguments it declares among ``input_shape`` (one
    example, no batch dimension), ``num_classes`` (None for regression) and ``task``;
    the spec gives the rest. A user ``nn.Module`` plugs in the same way::

        MODELS.register("mine", lambda input_shape, num_classes: MyNet(input_shape, num_classes),
                        default_loss="cross_entropy")

    (the factory declares only the context it needs; ``default_loss`` may be given as
    registration metadata or as a class attribute; without it, the task decides).

    Args:
        spec: ``"name"`` or ``{"name": ..., **params}``.
        info: a DataInfo-like object with ``task``, ``num_classes`` and ``input_shape``.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: unknown model or parameter, a value out of range, or a model that
            does not fit the data (input shape, task, number of classes).
    """
    shape = info.input_shape
    if isinstance(shape, Sequence) and not isinstance(shape, str):
        shape = tuple(shape)
    context = {"input_shape": shape, "num_classes": info.num_classes, "task": info.task}
    model = MODELS.build(spec, **context)
    if not isinstance(model, nn.Module):
        name, _ = split_spec(spec, "model")
        raise ConfigError(f"model '{name}' factory must return a torch.nn.Module, "
                          f"got {type(model).__name__}")
    return model


def default_loss(model_name: str | None, task: str) -> str:
    """The loss a model trains with when the config says ``loss = "auto"``.

    Taken from the registration's ``default_loss`` meta, else the factory's
    ``default_loss`` attribute, else ``cross_entropy`` for classification and language
    modelling and ``mse`` for regression.

    Raises:
        ConfigError: unknown model.
    """
    name = None
    if model_name is not None:     # None: a user's own module, not in the registry
        factory = MODELS.get(model_name)
        name = MODELS.meta(model_name).get("default_loss") or getattr(factory, "default_loss", None)
    if name is None:
        name = "mse" if task == "regression" else "cross_entropy"
    return name


def build_loss(spec: str | Mapping[str, Any] | None, model_name: str | None, info: _Info) -> LossFn:
    """Build the training loss: ``"auto"``/None means the model's default loss.

    Args:
        spec: ``"auto"``, None, ``"name"`` or ``{"name": ..., **params}``.
        model_name: the model's registry name (for ``"auto"``); None for a user module.
        info: a DataInfo-like object; its ``task`` must be one the loss fits.

    Returns:
        A callable ``(output, target) -> scalar mean loss``.

    Raises:
        ConfigError: unknown loss or parameter, or a loss that does not fit the task.
    """
    if info.task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {info.task!r}")
    if spec is None or spec == "auto":
        spec = default_loss(model_name, info.task)
    name, _ = split_spec(spec, "loss")
    tasks = LOSSES.meta(name).get("tasks", TASKS)
    if info.task not in tasks:
        fitting = [n for n in LOSSES.names() if info.task in LOSSES.meta(n).get("tasks", TASKS)]
        raise ConfigError(f"loss '{name}' does not fit a {info.task} task; use one of: "
                          f"{', '.join(fitting)}")
    return LOSSES.build(spec)
