"""EfficientNet-B0..B7 through efficientnet-pytorch."""
from efficientnet_pytorch import EfficientNet


def efficientnet(name: str, num_classes: int, in_channels: int = 3, image_size: int | None = None):
    # from_name: random init, no download. image_size fixes the static "same" padding.
    return EfficientNet.from_name(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
