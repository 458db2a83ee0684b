"""Vision: images with known content (scenes.py), image loading (images.py), image encoders
(encoders.py); vision-latent patching into text models builds on them."""
