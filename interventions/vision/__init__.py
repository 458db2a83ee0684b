"""Vision: images with known content (scenes.py); encoders and vision-latent patching build on it."""
