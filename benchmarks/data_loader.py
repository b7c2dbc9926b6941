"""Data-loader throughput per worker at COCO sizes: msadkit's uint8 path against torchvision.

The script writes COCO-like JPEGs into a temporary folder: real COCO resolutions (640x480,
640x427, 480x640, 500x375, ...) and COCO's file sizes (about 160 KB on average at JPEG quality 90,
from a low-frequency scene plus sensor-like noise), with a COCO json of a few boxes per image.
Each contender then does what one data-loader worker does for one training sample: decode,
resize the short side to one of 640..800 (long side <= 1333), random horizontal flip, and hand
the sample to the main process. Three contenders, alternating within each round:

- ``msadkit``: ``CocoDetectionDataset`` with the training transforms: torchvision.io decodes to
  uint8, uint8 bilinear resize and flip; normalisation happens later on the training device.
- ``msadkit_float32`` (the former path): PIL decode to float32 numpy, float resize and flip,
  ``(x - mean) / std`` in the worker.
- ``torchvision``: ``torchvision.datasets.CocoDetection`` wrapped for transforms v2 with
  ``ToImage, RandomShortestSize(640..800, 1333, antialias=False), RandomHorizontalFlip,
  ToDtype(float32, scale=True), Normalize`` — the pipeline a user would write, doing the same
  resize/flip/normalise.

A worker runs one process with one torch thread, so every contender runs with one thread here;
images per second per worker is images / time. "Bytes per sample" is what the worker pickles
into the queue to the main process: the image tensor plus the target tensors. The last lines
give the workers a 16-core host needs to feed 8 GPUs at 25 images/s each from the measured rate.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import add_common_arguments, interleaved_times, markdown_table, start_benchmark, timed_rounds
from msadkit.data import CocoDetectionDataset, build_transforms

# The most frequent COCO train2017 resolutions (w, h); most images have a 640-pixel long side.
COCO_SIZES = [(640, 480), (640, 427), (480, 640), (640, 426), (640, 424), (427, 640), (500, 375), (640, 512)]
SHORT_SIDES = (640, 672, 704, 736, 768, 800)
MAX_SIZE = 1333
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
GPUS, IMAGES_PER_GPU, HOST_CORES = 8, 25.0, 16


def write_coco_like_images(root: Path, count: int, *, seed: int = 0) -> dict[str, Any]:
    """``count`` JPEGs at COCO resolutions and file sizes under ``root/images`` and their json."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations, sizes = [], [], []
    for index in range(count):
        width, height = COCO_SIZES[index % len(COCO_SIZES)]
        # A smooth scene (bilinearly upsampled coarse noise) plus pixel noise: JPEG sizes like COCO's.
        coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, height // 16, width // 16)).astype(np.float32))
        scene = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
        noise = torch.from_numpy(rng.normal(0, 17, (3, height, width)).astype(np.float32))
        pixels = (scene + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        path = images_dir / f"{index + 1:012d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        sizes.append(path.stat().st_size)
        images.append({"id": index + 1, "file_name": path.name, "width": width, "height": height})
        for _ in range(int(rng.integers(1, 8))):
            w, h = float(rng.uniform(16, width / 2)), float(rng.uniform(16, height / 2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    (root / "train.json").write_text(json.dumps(coco))
    return {"json": root / "train.json", "images": images_dir, "file_kb": statistics.mean(sizes) / 1024}


class FormerFloat32Pipeline:
    """The data path before the uint8 change: PIL -> float32 numpy, float resize/flip, Normalize."""

    def __init__(self, dataset: CocoDetectionDataset) -> None:
        self.dataset = dataset
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.dataset._images[index]
        with Image.open(record["path"]) as pil:
            image = torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32)).permute(2, 0, 1).contiguous()
        height, width = image.shape[-2:]
        short = random.choice(SHORT_SIDES)
        scale = min(short / min(height, width), MAX_SIZE / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
        boxes = torch.tensor(self.dataset._boxes[record["id"]], dtype=torch.float32).reshape(-1, 4) * scale
        if random.random() < 0.5:
            image = image.flip(-1)
            boxes = torch.stack([size[1] - boxes[:, 2], boxes[:, 1], size[1] - boxes[:, 0], boxes[:, 3]], dim=1)
        labels = torch.tensor(self.dataset._labels[record["id"]], dtype=torch.int64)
        return (image - self.mean) / self.std, {"boxes": boxes, "labels": labels}


def torchvision_dataset(paths: dict[str, Any]) -> Any:
    """``CocoDetection`` + transforms v2 doing the same resize, flip and normalisation."""
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
    from torchvision.transforms import v2

    transforms = v2.Compose([
        v2.ToImage(),
        v2.RandomShortestSize(min_size=list(SHORT_SIDES), max_size=MAX_SIZE, antialias=False),
        v2.RandomHorizontalFlip(0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[m / 255 for m in MEAN], std=[s / 255 for s in STD]),
    ])
    dataset = CocoDetection(str(paths["images"]), str(paths["json"]), transforms=transforms)
    return wrap_dataset_for_transforms_v2(dataset, target_keys=("boxes", "labels", "image_id"))


def sample_bytes(sample: tuple[Any, Any]) -> int:
    """Bytes of the tensors one sample sends to the main process."""
    image, target = sample
    total = image.numel() * image.element_size()
    for value in target.values() if isinstance(target, dict) else []:
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--images", type=int, default=48, help="images generated and loaded per round")
    args = parser.parse_args()
    count = 6 if args.quick else args.images
    rounds = timed_rounds(args, 5)
    start_benchmark("data loader: images/s per worker at COCO sizes (uint8 path vs torchvision v2)",
                    1 if args.threads is None else args.threads)

    with tempfile.TemporaryDirectory(prefix="msadkit-loader-bench-") as folder:
        paths = write_coco_like_images(Path(folder), count)
        print(f"   {count} JPEGs at COCO resolutions, mean file size {paths['file_kb']:.0f} KB (COCO train2017: ~160 KB)")
        ours = CocoDetectionDataset(paths["json"], paths["images"],
                                    transform=build_transforms(train=True, short_sides=SHORT_SIDES, max_size=MAX_SIZE))
        contenders: dict[str, Any] = {
            "msadkit": ours,
            "msadkit_float32": FormerFloat32Pipeline(ours),
            "torchvision": torchvision_dataset(paths),
        }
        random.seed(0)
        torch.manual_seed(0)
        nbytes = {name: statistics.mean(sample_bytes(ds[i]) for i in range(count)) for name, ds in contenders.items()}

        def run_all(dataset: Any) -> Callable[[], None]:
            return lambda: [dataset[i] for i in range(count)]

        times = interleaved_times({n: run_all(d) for n, d in contenders.items()}, rounds=rounds, warmup=args.warmup)

    rate = {name: count / statistics.median(values) for name, values in times.items()}
    per_round = [a / b for a, b in zip(times["torchvision"], times["msadkit"])]
    columns = ["pipeline", "images/s per worker (median)", "MB per sample to the main process"]
    print("\n" + markdown_table(columns, [[name, f"{rate[name]:.1f}", f"{nbytes[name] / 2**20:.2f}"] for name in contenders]))
    workers = math.ceil(GPUS * IMAGES_PER_GPU / rate["msadkit"])
    speedup = statistics.median(per_round)
    print(f"\nRATIO msadkit / torchvision images per second per worker = {speedup:.3f} (target >= 1)")
    print(f"RATIO msadkit / former float32 bytes per sample = {nbytes['msadkit'] / nbytes['msadkit_float32']:.3f} (target <= 0.3)")
    print(f"WORKERS for {GPUS} GPUs x {IMAGES_PER_GPU:.0f} img/s = {GPUS * IMAGES_PER_GPU:.0f} img/s: "
          f"ceil({GPUS * IMAGES_PER_GPU:.0f} / {rate['msadkit']:.1f}) = {workers} msadkit workers "
          f"({'fits' if workers <= HOST_CORES else 'exceeds'} a {HOST_CORES}-core host); torchvision would need "
          f"{math.ceil(GPUS * IMAGES_PER_GPU / rate['torchvision'])}")


if __name__ == "__main__":
    main()
