"""EfficientNet-B0..B7 through efficientnet-pytorch."""
from __future__ import annotations

from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import url_map, url_map_advprop

from nf_trainer.model import finetune
from nf_trainer.model.pretrained import downloading


def efficientnet(name: str, num_classes: int, in_channels: int = 3, image_size: int | None = None,
                 pretrained: bool = False, advprop: bool = False, weights_path: str | None = None,
                 freeze_backbone: bool = False, options: dict | None = None) -> EfficientNet:
    """`image_size` fixes the static "same" padding. `pretrained`: ImageNet weights (AdvProp ones with
    `advprop`, which expect inputs in [-1, 1]), downloaded or read from `weights_path`. `options`:
    efficientnet-pytorch's global params (batch_norm_momentum, dropout_rate, drop_connect_rate, ...)."""
    options = dict(options or {})
    EfficientNet._check_model_name_is_valid(name)  # a ValueError that lists the valid names
    if not pretrained:
        model = EfficientNet.from_name(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                       **options)
    else:
        url = (url_map_advprop if advprop else url_map)[name]
        with downloading(name + (" (advprop)" if advprop else ""), url):
            # in_channels=3: the pretrained stem is kept and averaged to the data's channels below,
            # where from_pretrained would replace it with a random one.
            model = EfficientNet.from_pretrained(name, weights_path=weights_path, advprop=advprop,
                                                 num_classes=num_classes, image_size=image_size, **options)
        finetune.adapt_in_channels(model, in_channels, pretrained=True)
    if freeze_backbone:
        finetune.freeze_backbone(model)
    return model
