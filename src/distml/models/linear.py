"""Linear models: multinomial logistic regression, least squares, linear SVM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distml.models.base import MODELS, check_classifier, check_regression, flat_features


class _Linear(nn.Module):
    """One ``nn.Linear`` on the flattened input."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bool(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@MODELS.register("softmax", kind="linear", paper="Cox 1958 (multinomial: McFadden 1973)",
                 summary="multinomial logistic regression: one linear layer, softmax cross-entropy")
class SoftmaxRegression(_Linear):
    """Multinomial logistic regression: logits = W·flatten(x) + b.

    Binary problems still get 2 outputs, so cross-entropy applies unchanged.

    Args:
        input_shape: shape of one example; it is flattened.
        num_classes: number of classes (>= 2).
        task: must be "classification" (None skips the check).
        bias: learn an intercept.

    Raises:
        ConfigError: bad input_shape, num_classes < 2 or a regression task.
    """

    default_loss = "cross_entropy"

    def __init__(self, input_shape: Sequence[int], num_classes: int, task: str | None = None,
                 bias: bool = True):
        c = check_classifier("softmax", num_classes, task)
        super().__init__(flat_features("softmax", input_shape), c, bias)


@MODELS.register("least_squares", kind="linear", paper="Legendre 1805; Gauss 1809",
                 summary="linear regression with one output, mean squared error")
class LeastSquares(_Linear):
    """Linear regression: y = w·flatten(x) + b, output shape (N, 1).

    Args:
        input_shape: shape of one example; it is flattened.
        task: must be "regression".
        bias: learn an intercept.

    Raises:
        ConfigError: bad input_shape or a task other than regression.
    """

    default_loss = "mse"

    def __init__(self, input_shape: Sequence[int], task: str | None = "regression",
                 bias: bool = True):
        check_regression("least_squares", task)
        super().__init__(flat_features("least_squares", input_shape), 1, bias)


@MODELS.register("linear_svm", kind="linear", paper="Cortes & Vapnik 1995; Crammer & Singer 2001",
                 summary="linear multi-class SVM: C scores, Crammer-Singer hinge loss")
class LinearSVM(_Linear):
    """Linear multi-class SVM: one score per class, trained with the Crammer–Singer hinge.

    For 2 classes the loss is exactly the binary hinge ``max(0, 1 - y·s)`` on the score
    difference ``s = f_1(x) - f_0(x)`` (see :func:`distml.models.losses.hinge`). The L2
    term of the SVM is the optimizer's ``weight_decay``.

    Args:
        input_shape: shape of one example; it is flattened.
        num_classes: number of classes (>= 2).
        task: must be "classification" (None skips the check).
        bias: learn an intercept.

    Raises:
        ConfigError: bad input_shape, num_classes < 2 or a regression task.
    """

    default_loss = "hinge"

    def __init__(self, input_shape: Sequence[int], num_classes: int, task: str | None = None,
                 bias: bool = True):
        c = check_classifier("linear_svm", num_classes, task)
        super().__init__(flat_features("linear_svm", input_shape), c, bias)
