"""The photo-to-tensor step: resize, centre crop, normalise, and where the crop lies in the photo.

featviz runs the same functional calls as torchvision's ``ImageClassification`` preset (what
``weights.transforms()`` returns), so a model sees exactly the input its weights expect, and it
also keeps the crop geometry (:class:`CropBox`) that places heat maps on the original photo.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

if TYPE_CHECKING:
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

@dataclass(frozen=True)
class CropBox:
    """Where the network's input lies in the original photo, in that photo's pixel coordinates.

    Resize and centre crop keep a rectangle of the photo (or more than the photo, where the crop
    pads); overlays are drawn exactly there. Coordinates are floats: left, top, right, bottom.
    """

    left: float
    top: float
    right: float
    bottom: float

    def as_list(self) -> list[float]:
        return [round(v, 3) for v in (self.left, self.top, self.right, self.bottom)]


@dataclass(frozen=True)
class Preprocess:
    """The photo-to-tensor pipeline: resize the shorter side, centre-crop, scale, normalise.

    It is the same sequence of torchvision functional calls that torchvision's
    ``ImageClassification`` preset (``weights.transforms()``) runs, so a model with torchvision
    weights sees exactly the input its weights expect, while featviz also knows the crop
    geometry needed to place overlays on the original photo.
    """

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    squash: bool = False  # resize BOTH sides to ``resize`` (timm's crop_mode "squash"), not the shorter one

    @classmethod
    def from_transforms(cls, transforms: Any) -> Preprocess:
        """Read the parameters of a torchvision ``ImageClassification`` preset."""
        resize = getattr(transforms, "resize_size", None)
        crop = getattr(transforms, "crop_size", None)
        interpolation = getattr(transforms, "interpolation", None)
        return cls(
            resize=int(resize[0]) if resize else None,
            crop=int(crop[0]) if crop else None,
            mean=tuple(float(v) for v in getattr(transforms, "mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in getattr(transforms, "std", IMAGENET_STD)),
            interpolation=getattr(interpolation, "value", None) or "bilinear",
        )

    def with_overrides(
        self, resize: int | None = None, crop: int | None = None, no_crop: bool = False
    ) -> Preprocess:
        """Apply ``--resize``, ``--crop`` and ``--no-crop``."""
        updated = self
        if resize is not None:
            updated = replace(updated, resize=resize)
        if crop is not None:
            updated = replace(updated, crop=crop)
        if no_crop:
            updated = replace(updated, crop=None)
        return updated

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, by torchvision's rule for an int size (or both
        sides to ``resize`` when ``squash``)."""
        if self.resize is None:
            return width, height
        if self.squash:
            return self.resize, self.resize
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the tensor the network receives for a photo of this size."""
        if self.crop is not None:
            return self.crop, self.crop
        new_w, new_h = self.resized_size(width, height)
        return new_h, new_w

    def crop_box(self, width: int, height: int) -> CropBox:
        """The rectangle of the photo that the network sees, in photo pixels."""
        new_w, new_h = self.resized_size(width, height)
        if self.crop is None:
            return CropBox(0.0, 0.0, float(width), float(height))
        left = _crop_offset(new_w, self.crop)
        top = _crop_offset(new_h, self.crop)
        sx, sy = new_w / width, new_h / height
        return CropBox(left / sx, top / sy, (left + self.crop) / sx, (top + self.crop) / sy)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised float32 tensor (3, H, W)."""
        # Resize and crop the PIL image (PIL's resampling), then convert: the order of the
        # preset, whose output differs by up to one grey level from resizing a uint8 tensor.
        if self.resize is not None:
            image = F.resize(
                image, [self.resize, self.resize] if self.squash else [self.resize],
                interpolation=InterpolationMode(self.interpolation),
                antialias=True,
            )
        if self.crop is not None:
            image = F.center_crop(image, [self.crop])
        tensor = F.convert_image_dtype(F.pil_to_tensor(image), torch.float)
        normalized: torch.Tensor = F.normalize(tensor, mean=list(self.mean), std=list(self.std))
        return normalized


def _crop_offset(length: int, crop: int) -> int:
    """Offset of a centre crop, as torchvision computes it (negative where it pads)."""
    if crop > length:
        return -((crop - length) // 2)
    return int(round((length - crop) / 2.0))
