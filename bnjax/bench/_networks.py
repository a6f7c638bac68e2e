"""The networks of the training-step benchmark, written once for every framework.

A network is a function ``network(kit, x) -> logits`` that only calls the
operations of a *kit*; each framework supplies its own kit (``_model_kits``),
so the architecture exists in one place. A kit has:

- ``conv(x, in_features, features, kernel, stride)``: a convolution without
  bias (batch norm's β subsumes it), padded to keep the size at stride 1;
- ``norm(x, features)``: the batch norm under test, in training mode (the
  identity in the no-normalization floor);
- ``relu(x)`` and ``add(x, y)``;
- ``head(x, in_features, classes)``: global average pooling, then a dense
  layer to the logits.

Kits that build their layers before calling them (NNX, Equinox) run the
network once with ``x = None`` to create them, so a network must do nothing
with x but pass it to its kit.
"""

import dataclasses
from typing import Callable, Tuple

CLASSES = 10


def plain(kit, x, widths: Tuple[int, ...] = (32,) * 6, in_features: int = 3):
    """Six conv–BN–ReLU blocks at full resolution, then the head."""
    for features in widths:
        x = kit.relu(kit.norm(kit.conv(x, in_features, features, 3, 1), features))
        in_features = features
    return kit.head(x, in_features, CLASSES)


def _basic_block(kit, x, in_features: int, features: int, stride: int):
    """ResNet's basic block: two 3×3 conv–BN, a projected shortcut where the shape changes."""
    y = kit.relu(kit.norm(kit.conv(x, in_features, features, 3, stride), features))
    y = kit.norm(kit.conv(y, features, features, 3, 1), features)
    if stride != 1 or in_features != features:
        x = kit.norm(kit.conv(x, in_features, features, 1, stride), features)
    return kit.relu(kit.add(y, x))


def resnet(kit, x, widths: Tuple[int, ...] = (16, 32, 64), blocks: int = 1):
    """A CIFAR ResNet: a 3×3 stem, then stages of basic blocks, each halving the size."""
    x = kit.relu(kit.norm(kit.conv(x, 3, widths[0], 3, 1), widths[0]))
    in_features = widths[0]
    for stage, features in enumerate(widths):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(kit, x, in_features, features, stride)
            in_features = features
    return kit.head(x, in_features, CLASSES)


def _bottleneck_block(kit, x, in_features: int, width: int, stride: int):
    """ResNet-50's bottleneck: 1×1 to ``width``, 3×3, 1×1 to 4·width, projected shortcut."""
    features = 4 * width
    y = kit.relu(kit.norm(kit.conv(x, in_features, width, 1, 1), width))
    y = kit.relu(kit.norm(kit.conv(y, width, width, 3, stride), width))
    y = kit.norm(kit.conv(y, width, features, 1, 1), features)
    if stride != 1 or in_features != features:
        x = kit.norm(kit.conv(x, in_features, features, 1, stride), features)
    return kit.relu(kit.add(y, x))


def resnet50_stage(kit, x, width: int = 64, blocks: int = 3, in_features: int = 64):
    """ResNet-50's conv2_x stage on the stem's output (56×56×64 of a 224×224 image), then a head.

    Three bottleneck blocks of width 64 (256 output channels), the first with a
    1×1 projection shortcut: 10 convolutions and 10 batch norms.
    """
    for _ in range(blocks):
        x = _bottleneck_block(kit, x, in_features, width, 1)
        in_features = 4 * width
    return kit.head(x, in_features, CLASSES)


@dataclasses.dataclass(frozen=True)
class Network:
    """A benchmarked network.

    Attributes:
      forward: ``forward(kit, x) -> logits``.
      description: what it is, for the report.
    """

    forward: Callable
    description: str


NETWORKS = {
    "resnet8": Network(
        resnet,
        "ResNet-8: 3×3 stem, three stages of one basic block (16/32/64 channels, "
        "residual add, 1×1 projection shortcuts), 9 convolutions and 9 batch norms",
    ),
    "plain6": Network(plain, "six conv–BN–ReLU blocks of 32 channels at full resolution"),
}
