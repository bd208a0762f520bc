"""Contract tests over every registered model, plus the model-specific checks."""

from types import SimpleNamespace

import pytest
import torch

from distml.errors import ConfigError
from distml.models import LOSSES, MODELS, build_loss, build_model

IMAGE = SimpleNamespace(task="classification", num_classes=10, input_shape=(1, 28, 28))
BINARY = SimpleNamespace(task="classification", num_classes=2, input_shape=(1, 12, 12))
REGRESSION = SimpleNamespace(task="regression", num_classes=None, input_shape=(7,))


def info_for(name):
    return REGRESSION if getattr(MODELS.get(name), "default_loss", None) == "mse" else IMAGE


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_forwards_and_backprops(name):
    torch.manual_seed(0)
    info = info_for(name)
    model = build_model(name, info)
    x = torch.randn(5, *info.input_shape)
    out = model(x)
    expected = 1 if info.task == "regression" else info.num_classes
    assert out.shape == (5, expected)
    target = torch.randn(5) if info.task == "regression" else torch.randint(0, 10, (5,))
    loss = build_loss("auto", name, info)(out, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert type(model).default_loss in LOSSES


@pytest.mark.parametrize("name", ["softmax", "linear_svm", "mlp", "cnn"])
def test_binary_classifiers_have_two_outputs(name):
    model = build_model(name, BINARY)
    assert model(torch.randn(3, 1, 12, 12)).shape == (3, 2)


def test_mlp_default_is_784_512_512_10():
    model = build_model("mlp", IMAGE)
    n = sum(p.numel() for p in model.parameters())
    assert n == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 512, 10]


def test_mlp_options():
    model = build_model({"name": "mlp", "hidden": [32], "activation": "tanh", "dropout": 0.5},
                        IMAGE)
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["Flatten", "Linear", "Tanh", "Dropout", "Linear"]
    with pytest.raises(ConfigError, match="activation must be one of relu, tanh, gelu"):
        build_model({"name": "mlp", "activation": "sigmoid"}, IMAGE)
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        build_model({"name": "mlp", "dropout": 1.0}, IMAGE)


def test_cnn_any_chw_and_batchnorm():
    info = SimpleNamespace(task="classification", num_classes=3, input_shape=(3, 17, 9))
    model = build_model({"name": "cnn", "channels": [4, 8, 8], "hidden": 16,
                         "batchnorm": True, "dropout": 0.1}, info)
    assert model(torch.randn(2, 3, 17, 9)).shape == (2, 3)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("shape", [(784,), (28, 28), (1, 1, 28, 28)])
def test_cnn_rejects_non_chw_input(shape):
    info = SimpleNamespace(task="classification", num_classes=10, input_shape=shape)
    with pytest.raises(ConfigError, match=r"cnn needs a 3-D input_shape \(C, H, W\)"):
        build_model("cnn", info)


def test_cnn_rejects_too_small_image():
    info = SimpleNamespace(task="classification", num_classes=10, input_shape=(1, 3, 3))
    with pytest.raises(ConfigError, match="H and W must be >= 4"):
        build_model("cnn", info)


def test_regression_model_on_classification_fails():
    with pytest.raises(ConfigError, match="least_squares is a regression model"):
        build_model("least_squares", IMAGE)


@pytest.mark.parametrize("name", ["softmax", "linear_svm", "mlp"])
def test_classifier_on_regression_fails(name):
    with pytest.raises(ConfigError, match="needs task='classification'"):
        build_model(name, REGRESSION)


@pytest.mark.parametrize("k", [None, 1, 0])
def test_classifier_needs_two_classes(k):
    info = SimpleNamespace(task="classification", num_classes=k, input_shape=(4,))
    with pytest.raises(ConfigError, match="num_classes must be an int >= 2"):
        build_model("softmax", info)


def test_unknown_model_and_parameter():
    with pytest.raises(ConfigError, match="registered: cnn, least_squares, linear_svm, mlp"):
        build_model("resnet9000", IMAGE)
    with pytest.raises(ConfigError, match="has no parameter 'hiden'; accepted: hidden"):
        build_model({"name": "mlp", "hiden": [3]}, IMAGE)


def test_user_module_registration():
    class Mine(torch.nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.lin = torch.nn.Linear(n_in, n_out)

        def forward(self, x):
            return self.lin(x.flatten(1))

    name = "test_user_mine"
    MODELS.register(name, lambda input_shape, num_classes: Mine(28 * 28, num_classes),
                    replace=True)
    model = build_model(name, IMAGE)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert build_loss("auto", name, IMAGE) is not None  # task-based default: cross_entropy
    MODELS.register(name + "_bad", lambda: 3, replace=True)
    with pytest.raises(ConfigError, match="must return a torch.nn.Module"):
        build_model(name + "_bad", IMAGE)


def test_numpy_sizes_are_accepted():
    import numpy as np

    info = SimpleNamespace(task="classification", num_classes=np.int64(4),
                           input_shape=tuple(np.array([1, 8, 8])))
    model = build_model("cnn", info)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
