"""A small convolutional classifier for small images (digits, MNIST, CIFAR-sized inputs)."""
from torch import nn


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class SimpleCNN(nn.Module):
    # No BatchNorm on purpose: with lr=0 nothing changes at all, which keeps debugging runs honest.
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, width),
            _conv_block(width, width),
            nn.MaxPool2d(2),
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes))
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                # He init for ReLU: torch's default scale shrinks the signal through four plain convs, and such a
                # net without BatchNorm sat near chance for its first epochs on digits
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.head(self.features(x))
