"""A CIFAR-style residual network (ResNet-20 by default) for (C, H, W) images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distml.errors import ConfigError
from distml.models.base import MODELS, check_classifier, check_input_shape, check_positive_int


class BasicBlock(nn.Module):
    """Two 3×3 conv → BatchNorm layers with an identity shortcut (He et al. 2016, Fig. 2).

    A block that halves the resolution or changes the width uses a 1×1 strided conv +
    BatchNorm shortcut ("option B" of the paper).
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@MODELS.register("resnet", kind="neural network", paper="He et al. 2016",
                 summary="CIFAR-style ResNet (ResNet-20 by default): 3 stages of basic blocks, "
                         "BatchNorm, global average pool")
class ResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2): He, Zhang, Ren & Sun 2016, "Deep Residual Learning for
    Image Recognition", section 4.2.

    A 3×3 conv (``width`` channels) → BatchNorm → ReLU, then 3 stages of n basic blocks
    with ``width``, 2·``width`` and 4·``width`` channels (the 2nd and 3rd stages halve the
    resolution), global average pooling and one Linear layer. ``depth = 20`` (n = 3) and
    ``width = 16`` give ResNet-20 (0.27M parameters for 3-channel input, 10 classes).
    Any channel count and any H, W >= 1 fit (global pooling adapts to the resolution:
    28×28 Fashion-MNIST ends at 7×7, 8×8 sklearn digits at 2×2). The BatchNorm running
    statistics are buffers: how they are synchronised depends on the algorithm.

    Args:
        input_shape: (C, H, W) of one example.
        num_classes: number of classes (>= 2).
        task: must be "classification" (None skips the check).
        depth: 6n + 2 for n >= 1 blocks per stage (8, 14, 20, 32, 44, 56, 110, ...).
        width: channels of the first stage (>= 1).

    Raises:
        ConfigError: input_shape not 3-D, bad num_classes, depth not of the form 6n+2,
            or width < 1.
    """

    default_loss = "cross_entropy"

    def __init__(self, input_shape: Sequence[int], num_classes: int, task: str | None = None,
                 depth: int = 20, width: int = 16):
        super().__init__()
        classes = check_classifier("resnet", num_classes, task)
        c, _h, _w = check_input_shape("resnet", input_shape, image=True)
        depth = check_positive_int("resnet", "depth", depth)
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"resnet: depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        width = check_positive_int("resnet", "width", width)
        n = (depth - 2) // 6
        stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False),
                             nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = [stem]
        c_in = width
        for stage in range(3):
            c_out = width * 2 ** stage
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))
        # one flat sequence (stem, blocks, head), so that ``pipeline`` can cut it between blocks
        self.layers = nn.Sequential(*blocks, head)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
