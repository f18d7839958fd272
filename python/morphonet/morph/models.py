"""The models of ``morpho morph``: a small 1-D ResNet for MNIST-1D and a small CNN for the
8×8 digits. Plain ``nn.Module`` code (convolutions, batch norms, residual adds, a flatten into
a linear layer) that `morphonet.morph.trace` follows; each owns its input rules
(`morphonet.inputs.InputRules`: flattened rows are reshaped to the image / signal shape)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int
from ..inputs import InputRules

__all__ = ["DigitsCNN", "ResNet1d", "build"]


class _Shaped(InputRules, nn.Module):
    """A classifier of inputs of shape ``input_shape`` (or flattened rows of it)."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.input_shape, self.n_classes = tuple(input_shape), check_int("n_classes",
                                                                         n_classes, 2)

    def expected_input(self) -> str:
        shape = ", ".join(map(str, self.input_shape))
        return f"shape (batch, {shape}) or flattened rows (batch, {math.prod(self.input_shape)})"

    def n_outputs(self) -> int:
        return self.n_classes

    def _fits(self, x: Tensor) -> bool:
        return x.dim() >= 2 and x[0].numel() == math.prod(self.input_shape)

    def _check_features(self, x: Tensor, name: str) -> Tensor:
        return super()._check_features(x, name).reshape((x.shape[0],) + self.input_shape)


class _Block1d(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (a ResNet basic block)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c)
        self.conv2 = nn.Conv1d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class ResNet1d(_Shaped):
    """A 1-D ResNet: stem (conv 5, ``width``), ``blocks`` basic blocks, a stride-2 transition
    to ``2·width``, ``blocks`` basic blocks, global average pooling, a linear classifier.
    Input: (batch, 1, length)."""

    def __init__(self, length: int = 40, n_classes: int = 10, width: int = 32,
                 blocks: int = 1):
        super().__init__((1, check_int("length", length, 4)), n_classes)
        w = check_int("width", width, 1)
        blocks = check_int("blocks", blocks, 0)
        self.stem = nn.Conv1d(1, w, 5, padding=2, bias=False)
        self.stem_bn = nn.BatchNorm1d(w)
        self.stage1 = nn.Sequential(*[_Block1d(w) for _ in range(blocks)])
        self.down = nn.Conv1d(w, 2 * w, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm1d(2 * w)
        self.stage2 = nn.Sequential(*[_Block1d(2 * w) for _ in range(blocks)])
        self.head = nn.Linear(2 * w, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.stage1(x)
        x = F.relu(self.down_bn(self.down(x)))
        x = self.stage2(x)
        return self.head(x.mean(-1))


class DigitsCNN(_Shaped):
    """Two 3×3 conv-BN-ReLU layers (``width``, ``2·width``), 2×2 max pooling, a third
    (``2·width``), a flatten into a hidden linear layer (``hidden``, batch norm, ReLU) and a
    linear classifier. Input: (batch, 1, 8, 8)."""

    def __init__(self, n_classes: int = 10, width: int = 32, hidden: int = 128):
        super().__init__((1, 8, 8), n_classes)
        w = check_int("width", width, 1)
        h = check_int("hidden", hidden, 1)
        self.conv1 = nn.Conv2d(1, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w * 16, h, bias=False)
        self.bn4 = nn.BatchNorm1d(h)
        self.out = nn.Linear(h, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.fc(x.flatten(1))))
        return self.out(x)


def build(task: str, n_classes: int = 10, width: int = 32) -> nn.Module:
    """The model of a task of ``morpho morph``: ``"mnist1d"`` → `ResNet1d`, ``"digits"`` →
    `DigitsCNN`."""
    if task == "mnist1d":
        return ResNet1d(40, n_classes, width)
    if task == "digits":
        return DigitsCNN(n_classes, width)
    raise ValueError(f"unknown task {task!r}; choose 'mnist1d' or 'digits'")
