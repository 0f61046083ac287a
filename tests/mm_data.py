"""Tiny synthetic datasets on disk for the OpenMMLab tests: squares and disks on noise, as real image files with a
COCO-format instance annotation JSON, or with PNG label maps for semantic segmentation."""
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("square", "disk")  # segmentation label i + 1; 0 is background
PALETTE = [(0, 0, 0), (220, 60, 60), (60, 60, 220)]


def _shape_polygon(rng: np.random.Generator, kind: str, height: int, width: int) -> list:
    """Vertices (x, y) of a square or a 24-gon disk placed at random inside the image."""
    radius = rng.uniform(0.12, 0.22) * min(height, width)
    cx, cy = rng.uniform(radius + 1, width - radius - 1), rng.uniform(radius + 1, height - radius - 1)
    corners = 4 if kind == "square" else 24
    phase = math.pi / 4 if kind == "square" else 0.0
    return [(cx + radius * math.cos(phase + 2 * math.pi * k / corners),
             cy + radius * math.sin(phase + 2 * math.pi * k / corners)) for k in range(corners)]


def _scene(rng: np.random.Generator, height: int, width: int):
    """A noise image with one square and one disk, and their (class index, polygon) list."""
    image = Image.fromarray(rng.integers(0, 80, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    objects = []
    for label, kind in enumerate(CLASSES):
        polygon = _shape_polygon(rng, kind, height, width)
        draw.polygon(polygon, fill=PALETTE[label + 1])
        objects.append((label, polygon))
    return image, objects


def write_coco_set(root: Path, num_images: int = 4, height: int = 64, width: int = 80, seed: int = 0) -> Path:
    """Write ``root/images/*.jpg`` and ``root/annotations.json`` (COCO instances with polygons); returns the JSON."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, objects = _scene(rng, height, width)
        file_name = f"{image_id:04d}.jpg"
        image.save(root / "images" / file_name, quality=95)
        images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
        for label, polygon in objects:
            mask = Image.new("L", (width, height))
            ImageDraw.Draw(mask).polygon(polygon, fill=1)
            ys, xs = np.nonzero(np.asarray(mask))
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=label + 1, iscrowd=0, area=float(len(xs)),
                bbox=[float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                segmentation=[[coordinate for point in polygon for coordinate in point]]))
    categories = [dict(id=label + 1, name=name) for label, name in enumerate(CLASSES)]
    path = root / "annotations.json"
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return path


def write_segmentation_set(root: Path, num_images: int = 4, size: int = 64, seed: int = 0) -> None:
    """Write ``root/images/*.jpg`` and ``root/annotations/*.png`` label maps (0 background, i + 1 for CLASSES[i])."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        image, objects = _scene(rng, size, size)
        labels = Image.new("L", (size, size))
        for label, polygon in objects:
            ImageDraw.Draw(labels).polygon(polygon, fill=label + 1)
        image.save(root / "images" / f"{index:04d}.jpg", quality=95)
        labels.save(root / "annotations" / f"{index:04d}.png")
