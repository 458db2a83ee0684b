"""Vision: images with known content (scenes.py), image loading (images.py), image encoders
(encoders.py; the named ones in dinov2.py and efficientnet.py); vision-latent patching into text
models builds on them."""

from . import dinov2, efficientnet  # noqa: E402,F401  the named encoders register themselves in encoders.ENCODERS
