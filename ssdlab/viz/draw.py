"""Draw detections (boxes, class names, scores) on an image with Pillow."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class id (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray | Image.Image, boxes, labels, scores,
                    class_names: tuple[str, ...]) -> Image.Image:
    """A copy of image with one labelled rectangle per detection."""
    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8)) if not isinstance(image, Image.Image) else image.copy()
    pen = ImageDraw.Draw(canvas)
    for box, label, score in zip(np.asarray(boxes), np.asarray(labels), np.asarray(scores)):
        color = class_color(int(label))
        x0, y0, x1, y1 = (float(v) for v in box)
        pen.rectangle([x0, y0, x1, y1], outline=color, width=2)
        text = f"{class_names[int(label)]} {float(score):.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text)
        x, y = label_origin((x0, y0), (right - left + 3, bottom - top + 2), canvas.size)
        pen.rectangle([x, y, x + right - left + 2, y + bottom - top + 1], fill=color)
        pen.text((x + 1 - left, y - top), text, fill=(0, 0, 0))
    return canvas


def label_origin(corner: tuple[float, float], size: tuple[float, float], image: tuple[int, int]) -> tuple[float, float]:
    """Top-left of a box's label: above its top-left corner, moved inside the image where it would be cut."""
    (x0, y0), (w, h), (width, _) = corner, size, image
    y = y0 - h if y0 - h >= 0 else max(y0, 0.0)  # no room above the box: just inside its top edge
    return min(max(x0, 0.0), max(width - w, 0.0)), y
