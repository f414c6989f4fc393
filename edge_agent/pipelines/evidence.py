"""Pictures of what a vision pipeline saw: JPEG evidence for records, annotated copies (boxes,
labels, the anomaly heat map), thumbnails for the operator page, and per-region image
statistics for drift."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from edge_agent.config import RoiConfig
from edge_agent.imaging import resize
from edge_agent.inference.vision import VisionResult
from edge_agent.kernel.contract import Box, EvidenceImage

THUMBNAIL_SIDE_PX = 320  # a defect's picture on the operator page, four to a row
THUMBNAIL_QUALITY = 75  # thumbnails are looked at once, small: size matters more than detail
HEATMAP_WEIGHT = 0.4  # share of the heat map's colour over the frame: both stay visible
RED, YELLOW = (0, 0, 255), (0, 255, 255)  # BGR: boxes and labels; the region of interest


def image_stats(image: np.ndarray) -> dict[str, float]:
    """Brightness (mean level) and contrast (standard deviation) of a region, 0..255: the
    simple statistics whose drift says the lighting, the lens or the product changed."""
    mean, std = cv2.meanStdDev(image)
    return {"brightness": float(mean.mean()), "contrast": float(std.mean())}


def to_frame(box: Box, roi: RoiConfig | None) -> Box:
    """A box found in a region, in frame pixels."""
    if roi is None:
        return box
    return (box[0] + roi.x, box[1] + roi.y, box[2] + roi.x, box[3] + roi.y)


def annotate(image: np.ndarray, roi: RoiConfig | None, result: VisionResult) -> np.ndarray:
    """A copy with the ROI, the boxes and their labels, or the anomaly heat map, drawn on."""
    out = image.copy()
    x0, y0 = (roi.x, roi.y) if roi else (0, 0)
    if result.heatmap is not None:
        h, w = result.heatmap.shape
        colour = cv2.applyColorMap((result.heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
        region = out[y0:y0 + h, x0:x0 + w]
        colour = colour[:region.shape[0], :region.shape[1]]
        out[y0:y0 + h, x0:x0 + w] = cv2.addWeighted(region, 1 - HEATMAP_WEIGHT, colour,
                                                    HEATMAP_WEIGHT, 0)
    for detection in result.detections:
        x1, y1, x2, y2 = to_frame(detection.box, roi)
        cv2.rectangle(out, (x1, y1), (x2, y2), RED, 2)
        cv2.putText(out, f"{detection.label} {detection.confidence:.2f}", (x1, max(12, y1 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, RED, 1, cv2.LINE_AA)
    if roi is not None:
        cv2.rectangle(out, (roi.x, roi.y), (roi.x + roi.width, roi.y + roi.height),
                      YELLOW, 1)
    if not result.detections:
        cv2.putText(out, f"{result.label} {result.confidence:.2f}", (x0 + 4, y0 + 16),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, RED, 1, cv2.LINE_AA)
    return out


def thumbnail(image: np.ndarray, roi: RoiConfig | None, result: VisionResult) -> bytes:
    """The annotated region (or frame), small enough for the operator page."""
    annotated = annotate(image, roi, result)
    if roi is not None:
        annotated = annotated[roi.y:roi.y + roi.height, roi.x:roi.x + roi.width]
    return _encode_jpeg(annotated, THUMBNAIL_SIDE_PX, THUMBNAIL_QUALITY)[0]


def evidence_jpeg(image: np.ndarray, max_side: int, quality: int) -> EvidenceImage:
    """The image as a record carries it: JPEG, base64, at most `max_side` pixels wide or high."""
    encoded, width, height = _encode_jpeg(image, max_side, quality)
    return EvidenceImage(jpeg_b64=base64.b64encode(encoded).decode("ascii"),
                         width=width, height=height)


def _encode_jpeg(image: np.ndarray, max_side: int, quality: int) -> tuple[bytes, int, int]:
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        image = resize(image, round(width * scale), round(height * scale))
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return encoded.tobytes(), image.shape[1], image.shape[0]
