"""Contract tests over every registered model, plus the model-specific checks."""

from types import SimpleNamespace

import pytest
import torch

from distml.errors import ConfigError
from distml.models import LOSSES, MODELS, build_loss, build_model

IMAGE = SimpleNamespace(task="classification", num_classes=10, input_shape=(1, 28, 28))
BINARY = SimpleNamespace(task="classification", num_classes=2, input_shape=(1, 12, 12))
REGRESSION = SimpleNamespace(task="regression", num_classes=None, input_shape=(7,))
TEXT = SimpleNamespace(task="language_modeling", num_classes=11, input_shape=(6,))
TINY_LM = {"name": "transformer_lm", "d_model": 8, "n_layers": 2, "n_heads": 2}


def info_for(name):
    if name == "transformer_lm":
        return TEXT
    return REGRESSION if getattr(MODELS.get(name), "default_loss", None) == "mse" else IMAGE


def example_batch(info, n):
    """Inputs and targets of ``n`` samples that fit ``info`` (token ids for a language model)."""
    if info.task == "language_modeling":
        return (torch.randint(0, info.num_classes, (n, *info.input_shape)),
                torch.randint(0, info.num_classes, (n, *info.input_shape)))
    target = torch.randn(n) if info.task == "regression" else torch.randint(0, info.num_classes, (n,))
    return torch.randn(n, *info.input_shape), target


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_forwards_and_backprops(name):
    torch.manual_seed(0)
    info = info_for(name)
    model = build_model(name, info)
    x, target = example_batch(info, 5)
    out = model(x)
    expected = 1 if info.task == "regression" else info.num_classes
    assert out.shape == (5, *target.shape[1:], expected)
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


# ---- resnet -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (2, 5, 3)])
def test_resnet_adapts_to_the_input_shape(shape):
    info = SimpleNamespace(task="classification", num_classes=7, input_shape=shape)
    model = build_model({"name": "resnet", "depth": 8, "width": 4}, info)
    assert model(torch.randn(3, *shape)).shape == (3, 7)


def test_resnet20_has_the_papers_layout_and_size():
    info = SimpleNamespace(task="classification", num_classes=10, input_shape=(3, 32, 32))
    model = build_model("resnet", info)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19                       # 1 + 3 stages x 3 blocks x 2, + the Linear = 20
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 19 + 2
    # He et al. 2016 table 6: 0.27M = 269,722 with option A shortcuts (no parameters); ours,
    # option B, add two 1x1 convs + BatchNorm: 16*32 + 32*64 + 2*(32 + 64) = 2,752
    assert sum(p.numel() for p in model.parameters()) == 269_722 + 2_752


@pytest.mark.parametrize("params,match", [({"depth": 21}, "depth must be 6n\\+2"),
                                          ({"depth": 2}, "depth must be 6n\\+2"),
                                          ({"width": 0}, "width must be an int >= 1")])
def test_resnet_refuses_bad_params(params, match):
    with pytest.raises(ConfigError, match=match):
        build_model({"name": "resnet", **params}, IMAGE)


def test_resnet_needs_an_image():
    with pytest.raises(ConfigError, match="needs a 3-D input_shape"):
        build_model("resnet", SimpleNamespace(task="classification", num_classes=3, input_shape=(64,)))


# ---- transformer_lm -------------------------------------------------------------------------

def test_transformer_lm_outputs_logits_per_position_and_its_loss_covers_every_position():
    torch.manual_seed(0)
    model = build_model(TINY_LM, TEXT)
    x, y = example_batch(TEXT, 3)
    out = model(x)
    assert out.shape == (3, 6, 11)
    loss = build_loss("auto", "transformer_lm", TEXT)(out, y)
    ref = torch.nn.functional.cross_entropy(out.permute(0, 2, 1), y)   # torch's (B, V, T) layout
    assert torch.allclose(loss, ref)


def test_transformer_lm_embeddings_are_tied_once():
    model = build_model(TINY_LM, TEXT)
    emb = model.layers[0].tokens.weight
    head = model.layers[-1].weight
    assert head is emb
    assert sum(q is emb for q in model.parameters()) == 1
    state = model.state_dict()
    assert state["layers.0.tokens.weight"].data_ptr() == state["layers.3.weight"].data_ptr()
    # the round trip keeps them one weight
    other = build_model(TINY_LM, TEXT)
    with torch.no_grad():
        for q in other.parameters():
            q.add_(1.0)
    other.load_state_dict(model.state_dict())
    assert other.layers[-1].weight is other.layers[0].tokens.weight
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), model.parameters()))
    x, _ = example_batch(TEXT, 2)
    assert torch.equal(other(x), model(x))


def test_transformer_lm_parameter_count():
    d, v, t, f, layers = 8, 11, 6, 32, 2
    model = build_model(TINY_LM, TEXT)
    block = 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)   # 2 LNs, q/k/v/out, MLP
    assert sum(q.numel() for q in model.parameters()) == v * d + t * d + layers * block + 2 * d


def test_transformer_lm_is_causal():
    """The output at position t does not depend on the inputs after t."""
    torch.manual_seed(1)
    model = build_model(TINY_LM | {"n_layers": 3}, TEXT).double()
    x, _ = example_batch(TEXT, 2)
    out = model(x)
    for t in range(6):
        changed = x.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 11
        got = model(changed)
        assert torch.allclose(got[:, :t + 1], out[:, :t + 1], atol=1e-12)
        if t < 5:
            assert not torch.allclose(got[:, t + 1:], out[:, t + 1:])


def test_transformer_lm_context_may_exceed_the_windows_but_not_fall_short():
    model = build_model(TINY_LM | {"context": 10}, TEXT)
    assert model(torch.randint(0, 11, (2, 10))).shape == (2, 10, 11)
    with pytest.raises(ConfigError, match="context \\(4\\) is shorter than the data's windows"):
        build_model(TINY_LM | {"context": 4}, TEXT)


@pytest.mark.parametrize("params,match", [({"n_heads": 3}, "must be divisible by n_heads"),
                                          ({"dropout": 1.0}, "dropout must be in"),
                                          ({"n_layers": 0}, "n_layers must be an int >= 1")])
def test_transformer_lm_refuses_bad_params(params, match):
    with pytest.raises(ConfigError, match=match):
        build_model(TINY_LM | params, TEXT)


def test_transformer_lm_needs_a_language_modelling_task():
    with pytest.raises(ConfigError, match="needs task='language_modeling'"):
        build_model(TINY_LM, SimpleNamespace(task="classification", num_classes=10, input_shape=(6,)))
    with pytest.raises(ConfigError, match="cnn is a classifier"):
        build_model("cnn", TEXT)


def test_tensor_parallel_plan_splits_every_block():
    model = build_model(TINY_LM, TEXT)
    plan = model.tp_plan(2)
    assert plan["layers.1.attn.q"] == plan["layers.2.mlp.fc1"] == "colwise"
    assert plan["layers.1.attn.out"] == plan["layers.2.mlp.fc2"] == "rowwise"
    assert len(plan) == 2 * 6
    with pytest.raises(ConfigError, match="n_heads \\(2\\) must be divisible by the 4 workers"):
        model.tp_plan(4)
