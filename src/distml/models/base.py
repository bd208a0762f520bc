"""The model and loss registries and the checks every model constructor shares."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

from distml.errors import ConfigError
from distml.registry import Registry

MODELS = Registry("model")
LOSSES = Registry("loss")

LANGUAGE_MODELING = "language_modeling"     # next-token prediction: (B, T) ids -> (B, T, V) logits
TASKS = ("classification", "regression", LANGUAGE_MODELING)


def check_input_shape(model: str, input_shape: Sequence[int], image: bool = False) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints.

    Args:
        model: the model's registry name, for the message.
        input_shape: the shape of one example, without the batch dimension.
        image: the model needs a 3-D (C, H, W) shape.

    Raises:
        ConfigError: not a non-empty sequence of positive ints, or not 3-D for an image model.
    """
    shape = tuple(_as_int(d) for d in input_shape) if _is_sequence(input_shape) else ()
    if not shape or not all(d is not None and d > 0 for d in shape):
        raise ConfigError(f"{model}: input_shape must be a non-empty tuple of positive ints, "
                          f"got {input_shape!r}")
    if image and len(shape) != 3:
        raise ConfigError(f"{model} needs a 3-D input_shape (C, H, W), e.g. (1, 28, 28), "
                          f"got {shape}; for flat features use softmax or mlp")
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
    k = _as_int(num_classes)
    if k is None or k < 2:
        raise ConfigError(f"{model}: num_classes must be an int >= 2, got {num_classes!r}")
    return k


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
    v = _as_int(value)
    if v is None or v < 1:
        raise ConfigError(f"{model}: {name} must be an int >= 1, got {value!r}")
    return v


def check_dropout(model: str, dropout: object) -> float:
    """Return ``dropout`` if it is a number in [0, 1).

    Raises:
        ConfigError: otherwise.
    """
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{model}: dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def _is_sequence(x: object) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes))


def _as_int(x: object) -> int | None:
    """``x`` as a Python int if it is an integer (numpy's included, bool excluded), else None."""
    if isinstance(x, bool):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None
