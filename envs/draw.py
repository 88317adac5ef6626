"""Headless drawing primitives on uint8 RGB canvases (OpenCV), shaped after pymunk's pygame debug drawing."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "new_canvas",
    "to_pixels",
    "fill_polygon",
    "fat_segment",
    "outlined_polygon",
    "disc",
    "marker",
    "border",
    "resize",
]

Color = tuple[int, int, int]


def new_canvas(size: int, color: Color = (255, 255, 255)) -> np.ndarray:
    """A (size, size, 3) uint8 canvas filled with `color`."""
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = color
    return canvas


def to_pixels(points: np.ndarray) -> np.ndarray:
    """Round float (x, y) points to integer pixel coordinates, as pygame's to_pygame does."""
    return np.rint(np.asarray(points, dtype=np.float64)).astype(np.int32)


def fill_polygon(canvas: np.ndarray, points: np.ndarray, color: Color) -> None:
    """Fill the polygon with vertices `points` (N, 2) in place."""
    cv2.fillPoly(canvas, [to_pixels(points)], color)


def fat_segment(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, color: Color) -> None:
    """Draw a segment of half-width `radius` with round caps (pymunk's draw_fat_segment) in place."""
    p1, p2 = to_pixels(a), to_pixels(b)
    width = int(round(max(1.0, 2.0 * radius)))
    cv2.line(canvas, tuple(p1.tolist()), tuple(p2.tolist()), color, width)
    if width > 2:
        cap = int(round(radius))
        cv2.circle(canvas, tuple(p1.tolist()), cap, color, -1)
        cv2.circle(canvas, tuple(p2.tolist()), cap, color, -1)


def outlined_polygon(canvas: np.ndarray, points: np.ndarray, fill: Color, edge: Color, radius: float) -> None:
    """Fill a polygon and stroke its edges with fat segments (pymunk's draw_polygon) in place."""
    fill_polygon(canvas, points, fill)
    for a, b in zip(points, np.roll(points, -1, axis=0), strict=True):
        fat_segment(canvas, a, b, radius, edge)


def disc(canvas: np.ndarray, center: np.ndarray, radius: float, color: Color) -> None:
    """Fill a disc in place."""
    cv2.circle(canvas, tuple(to_pixels(center).tolist()), int(round(radius)), color, -1)


def marker(canvas: np.ndarray, coord: np.ndarray, color: Color, size: int, thickness: int) -> None:
    """Draw a cross marker centred on integer pixel `coord` in place."""
    cv2.drawMarker(canvas, tuple(np.asarray(coord).tolist()), color, cv2.MARKER_CROSS, size, thickness)


def border(canvas: np.ndarray, color: Color, thickness: int = 1) -> None:
    """Outline the canvas edges in place."""
    height, width = canvas.shape[:2]
    cv2.rectangle(canvas, (0, 0), (width - 1, height - 1), color, thickness)


def resize(canvas: np.ndarray, size: int, smooth: bool = False) -> np.ndarray:
    """Resize to (size, size): bilinear like Chi et al.'s observations, or area-averaged (`smooth`) for videos."""
    if canvas.shape[0] == size:
        return canvas
    interpolation = cv2.INTER_AREA if smooth else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, size), interpolation=interpolation)
