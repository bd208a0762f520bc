"""The model and loss registries and the checks every model constructor shares."""

from __future__ import annotations

import math
from collections.abc import Sequence

from distml.errors import ConfigError
from distml.registry import Registry

MODELS = Registry("model")
LOSSES = Registry("loss")

TASKS = ("classification", "regression")


def check_input_shape(model: str, input_shape: Sequence[int], ndim: int | None = None) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints.

    Args:
        model: the model's registry name, for the message.
        input_shape: the shape of one example, without the batch dimension.
        ndim: the number of dimensions the model needs, or None for any.

    Raises:
        ConfigError: not a non-empty sequence of positive ints, or the wrong length.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ConfigError(f"{model}: input_shape must be a tuple of positive ints, "
                          f"got {input_shape!r}") from None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                            for d in shape):
        raise ConfigError(f"{model}: input_shape must be a non-empty tuple of positive ints, "
                          f"got {input_shape!r}")
    if ndim is not None and len(shape) != ndim:
        raise ConfigError(f"{model} needs a {ndim}-D input_shape (C, H, W), got {shape} "
                          f"({len(shape)}-D)")
    return shape


def flat_features(model: str, input_shape: Sequence[int]) -> int:
    """The number of features of one flattened example (validated as in :func:`check_input_shape`)."""
    return math.prod(check_input_shape(model, input_shape))


def check_classifier(model: str, num_classes: int | None, task: str | None) -> int:
    """Return ``num_classes`` after checking the run is a classification task.

    Raises:
        ConfigError: the task is regression, or ``num_classes`` is not an int >= 2.
    """
    if task is not None and task != "classification":
        raise ConfigError(f"{model} is a classifier and needs task='classification', "
                          f"got task={task!r}; for regression use least_squares")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f"{model}: num_classes must be an int >= 2, got {num_classes!r}")
    return num_classes


def check_regression(model: str, task: str | None) -> None:
    """Check that the run is a regression task.

    Raises:
        ConfigError: the task is not regression.
    """
    if task != "regression":
        raise ConfigError(f"{model} is a regression model and needs task='regression', "
                          f"got task={task!r}; for classification use softmax, linear_svm, "
                          "mlp or cnn")


def check_positive_int(model: str, name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1.

    Raises:
        ConfigError: otherwise.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{model}: {name} must be an int >= 1, got {value!r}")
    return value


def check_dropout(model: str, dropout: object) -> float:
    """Return ``dropout`` if it is a number in [0, 1).

    Raises:
        ConfigError: otherwise.
    """
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{model}: dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)
