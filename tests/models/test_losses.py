"""Loss factories and how build_loss matches them to the task."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from distml.errors import ConfigError
from distml.models import LOSSES, build_loss

CLS = SimpleNamespace(task="classification", num_classes=3, input_shape=(4,))
REG = SimpleNamespace(task="regression", num_classes=None, input_shape=(4,))


def test_auto_picks_the_models_default():
    out = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.5, 3.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(build_loss("auto", "mlp", CLS)(out, y), F.cross_entropy(out, y))
    assert torch.allclose(build_loss(None, "linear_svm", CLS)(out, y),
                          LOSSES.build("hinge")(out, y))
    pred = torch.tensor([[1.0], [3.0]])
    assert torch.allclose(build_loss("auto", "least_squares", REG)(pred, torch.tensor([0.0, 1.0])),
                          torch.tensor((1 + 4) / 2))


def test_mse_squeezes_column_and_casts_target():
    loss = LOSSES.build("mse")
    out = torch.zeros(4, 1)
    y = torch.arange(4, dtype=torch.float64)
    assert loss(out, y).item() == pytest.approx((0 + 1 + 4 + 9) / 4)


def test_label_smoothing_is_passed():
    out = torch.tensor([[5.0, 0.0, 0.0]])
    y = torch.tensor([0])
    plain = build_loss("cross_entropy", "mlp", CLS)(out, y)
    smooth = build_loss({"name": "cross_entropy", "label_smoothing": 0.2}, "mlp", CLS)(out, y)
    assert smooth > plain
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\)"):
        build_loss({"name": "cross_entropy", "label_smoothing": 1.5}, "mlp", CLS)


def test_hinge_is_crammer_singer_and_binary_hinge_for_two_classes():
    loss = LOSSES.build("hinge")
    out = torch.tensor([[1.0, 0.5, 0.2], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 2])
    # row 0: max(0, 1 + 0.5 - 1) = 0.5; row 1: max(0, 1 + 3 - 0) = 4
    assert loss(out, y).item() == pytest.approx((0.5 + 4) / 2)
    s = torch.tensor([-2.0, 0.3, 1.5, 0.9])                   # s = f1 - f0
    y2 = torch.tensor([0, 1, 1, 0])
    two = torch.stack([torch.zeros(4), s], dim=1)
    binary = torch.clamp(1 - (2 * y2 - 1) * s, min=0).mean()
    assert loss(two, y2).item() == pytest.approx(binary.item())


@pytest.mark.parametrize("spec,info,fits", [("mse", CLS, "cross_entropy, hinge"),
                                            ("cross_entropy", REG, "mse"),
                                            ("hinge", REG, "mse")])
def test_loss_that_does_not_fit_the_task(spec, info, fits):
    with pytest.raises(ConfigError, match=f"does not fit a {info.task} task; use one of: {fits}"):
        build_loss(spec, "mlp", info)


def test_unknown_loss_lists_registered():
    with pytest.raises(ConfigError, match="registered: cross_entropy, hinge, mse"):
        build_loss("huber", "mlp", REG)
