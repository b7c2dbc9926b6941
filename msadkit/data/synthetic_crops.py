"""Classification crops cut from synthetic training scenes: the data of ``msadkit pretrain``.

Scenes come from the generator's *training* stream (the random stream of image ``i`` of the train
split, :func:`msadkit.data.synthetic.generate_synthetic_dataset`), so the first ``num_train``
scenes are exactly the detection training images and the rest are further images of the same
stream; the validation stream is never drawn. Every visible object gives one crop labelled with
its class; each scene also gives one background crop (label ``len(CLASS_NAMES)``) that no object
covers much, so the classifier learns objects against texture as well as shapes against each
other. A crop is a square around the object's box, ``context`` times its longer side, shifted by
up to a tenth of that side, and resized to ``crop_size`` pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from msadkit.data.synthetic import scene_rng
from msadkit.data.synthetic_scenes import CLASS_NAMES, render_scene
from msadkit.errors import DatasetError

__all__ = ["BACKGROUND_LABEL", "CROP_CLASS_NAMES", "synthetic_training_crops"]

BACKGROUND_LABEL = len(CLASS_NAMES)
CROP_CLASS_NAMES: tuple[str, ...] = (*CLASS_NAMES, "background")
# A background crop may show at most this share of object pixels.
_MAX_OBJECT_SHARE_IN_BACKGROUND = 0.05
_BACKGROUND_ATTEMPTS = 10


def _square_crop(image: np.ndarray, cx: float, cy: float, side: float, crop_size: int) -> np.ndarray:
    """``(crop_size, crop_size, 3)`` uint8: the square of ``side`` pixels centred at (cx, cy), edges
    repeated where it leaves the image."""
    half = side / 2.0
    box = (cx - half, cy - half, cx + half, cy + half)
    # PIL's crop pads outside the image with black; edge padding first keeps the texture statistics.
    pad = int(np.ceil(side))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    shifted = tuple(v + pad for v in box)
    crop = Image.fromarray(padded).crop(tuple(int(round(v)) for v in shifted))
    return np.asarray(crop.resize((crop_size, crop_size), Image.BILINEAR))


def synthetic_training_crops(
    *,
    num_images: int,
    image_size: int = 256,
    crop_size: int = 64,
    seed: int = 0,
    max_objects: int = 6,
    context: tuple[float, float] = (1.2, 1.8),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the crops of the first ``num_images`` scenes of the synthetic training stream.

    Args:
        num_images: scenes rendered (training-stream indices ``0 .. num_images - 1``).
        image_size: side of the scenes; match the detection dataset's so objects keep its sizes.
        crop_size: side of every crop after resizing.
        seed: the dataset seed (``data.synthetic.seed``).
        max_objects: most objects per scene (the generator's default).
        context: range of the crop side divided by the object's longer box side.

    Returns:
        ``(images, labels)``: ``(N, 3, crop_size, crop_size)`` uint8 RGB and ``(N,)`` int64 labels in
        ``0 .. len(CLASS_NAMES)`` (the last is :data:`BACKGROUND_LABEL`).

    Raises:
        DatasetError: a size or count is not positive, or no crop came out.
    """
    for name, value in (("num_images", num_images), ("image_size", image_size), ("crop_size", crop_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DatasetError(f"synthetic_training_crops: {name} must be a positive integer, got {value!r}")
    if not 1.0 <= context[0] <= context[1]:
        raise DatasetError(f"synthetic_training_crops: context must be (low, high) with 1 <= low <= high, got {context}")
    crops: list[np.ndarray] = []
    labels: list[int] = []
    for index in range(num_images):
        rng = scene_rng(seed, "train", index)
        scene = render_scene(rng, image_size=image_size, max_objects=max_objects)
        # The crop geometry draws from its own stream so that the scene stays the training image.
        crop_rng = scene_rng(seed, "train", index, 1)
        for (x, y, w, h), label in zip(scene.boxes.tolist(), scene.labels.tolist()):
            side = max(w, h) * crop_rng.uniform(*context)
            cx = x + w / 2 + crop_rng.uniform(-0.1, 0.1) * side
            cy = y + h / 2 + crop_rng.uniform(-0.1, 0.1) * side
            crops.append(_square_crop(scene.image, cx, cy, side, crop_size))
            labels.append(int(label))
        for _attempt in range(_BACKGROUND_ATTEMPTS):
            side = int(crop_rng.integers(8, max(9, image_size // 4)))
            x0, y0 = (int(v) for v in crop_rng.integers(0, image_size - side + 1, size=2))
            if (scene.owner[y0 : y0 + side, x0 : x0 + side] >= 0).mean() <= _MAX_OBJECT_SHARE_IN_BACKGROUND:
                crops.append(_square_crop(scene.image, x0 + side / 2, y0 + side / 2, side, crop_size))
                labels.append(BACKGROUND_LABEL)
                break
    if not crops:
        raise DatasetError(f"synthetic_training_crops: {num_images} scene(s) gave no crop; render more images")
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)
