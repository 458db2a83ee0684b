"""Images in, pixels out: every way a user hands over an image (a PIL image, an array, a path) becomes
an RGB PIL image; a file that cannot be read is skipped and recorded, never fatal to a batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InterventionError


class ImageInputError(InterventionError, ValueError):
    pass


@dataclass
class Loaded:
    """The images that could be read, in order, and what happened to the others."""

    images: list = field(default_factory=list)     # RGB PIL images
    kept: list[int] = field(default_factory=list)   # their indices in the input
    failures: list[dict] = field(default_factory=list)   # {"index", "source", "error"}


def to_rgb(image):
    """An RGB PIL image from a PIL image of any mode, a (H, W), (H, W, 1|3|4) uint8 or [0, 1] float array,
    or a (3, H, W) tensor; anything else is refused, saying what is expected."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode in ("RGBA", "LA", "P", "PA"):   # transparent pixels go on white, not black
            rgba = image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ImageInputError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); "
                                  f"got shape {tuple(image.shape)}")
        if array.dtype != np.uint8:
            if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 255):
                raise ImageInputError(f"image values must lie in [0, 1] (float) or [0, 255]; got "
                                      f"[{np.nanmin(array):g}, {np.nanmax(array):g}]")
            scale = 255.0 if array.size and np.nanmax(array) <= 1.0 else 1.0
            array = np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)
        return to_rgb(Image.fromarray(array))
    raise ImageInputError(f"expected a PIL image, a numpy array, a (3, H, W) tensor or a file path; "
                          f"got {type(image).__name__}")


def load_images(sources) -> Loaded:
    """Each source (path or image) as RGB; unreadable files and unusable arrays are recorded and skipped."""
    from PIL import Image, UnidentifiedImageError

    out = Loaded()
    for index, source in enumerate(sources):
        try:
            if isinstance(source, (str, Path)):
                with Image.open(source) as opened:
                    opened.load()        # decode now: a truncated file fails here, not later
                    image = to_rgb(opened.copy())
            else:
                image = to_rgb(source)
        except (OSError, UnidentifiedImageError, ImageInputError, ValueError) as error:
            out.failures.append({"index": index, "source": str(source) if isinstance(source, (str, Path))
                                 else type(source).__name__, "error": f"{type(error).__name__}: {error}"})
            continue
        out.images.append(image)
        out.kept.append(index)
    return out


def pixels(images, size: int | tuple[int, int], mean, std) -> torch.Tensor:
    """(N, 3, H, W) float pixels: RGB, resized (bicubic) to ``size``, scaled to [0, 1], then normalised."""
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    arrays = [np.asarray(to_rgb(im).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
              for im in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
