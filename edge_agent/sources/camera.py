"""Camera sources (OpenCV): video files, image folders, USB cameras, RTSP and HTTP MJPEG streams.

A reader thread grabs and decodes frames as fast as the source delivers them (or at the file's
own rate, or at `max_fps`) and keeps only the newest one: a slow model skips frames, it never
builds a backlog. A dropped stream is reopened with growing backoff; the state (connecting,
connected, reconnecting, failed, stopped) and its reason go into the agent's status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
import simplejpeg

from edge_agent.imaging import resize
from edge_agent.kernel.contract import SourceState
from edge_agent.kernel.redaction import redact_credentials

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
FOLDER_DEFAULT_FPS = 10.0
NETWORK_TIMEOUT_MS = 5000
STOP_WAIT_S = 5.0  # a reader blocked in OpenCV is abandoned (a daemon thread) after this
# Characters of a password that go into a URL's user part as they are; others are %-encoded.
_USERINFO_SAFE = "!$&'()*+,;=:-._~"


class CameraConfigError(OSError):
    """The camera cannot be opened until its configuration or environment is fixed."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame (BGR) with its number in this source and when it was grabbed."""

    index: int
    image: np.ndarray
    grabbed_at: float


class CameraSource:
    """The newest frame of one camera, for any number of pipelines."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name: str = config.name
        self.state = SourceState(state="connecting", detail=config.url)
        self.frames_grabbed = 0
        self._latest: Frame | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._taken = threading.Event()  # the newest frame was handed to a pipeline
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []

    # --- asyncio side ---

    async def run(self) -> None:
        """Read until cancelled (the reader is a thread: OpenCV blocks)."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_forever, name=f"camera-{self.name}",
                                        daemon=True)
        self._thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            await asyncio.to_thread(self._thread.join, STOP_WAIT_S)
            self._set_state("stopped", "")

    def latest(self) -> Frame | None:
        with self._lock:
            return self._latest

    async def next_frame(self, after: int = -1, timeout_s: float | None = None) -> Frame | None:
        """The newest frame numbered above `after`, waiting for one; None on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            frame = self.latest()
            if frame is not None and frame.index > after:
                self._taken.set()
                return frame
            waiter = loop.create_future()
            self._waiters.append(waiter)
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                return None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- reader thread ---

    def _read_forever(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                reader = open_reader(self.config)
            except CameraConfigError as exc:
                self._set_state("failed", str(exc))
                return
            except OSError as exc:
                self._set_state("reconnecting", f"{exc}; retrying in {backoff:.0f} s")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_backoff_s)
                continue
            self._set_state("connected", reader.describe())
            backoff = 0.5
            try:
                ended = self._pump(reader)
            finally:
                reader.close()
            if ended:
                self._set_state("stopped", "end of the video (loop: false)")
                return
            if not self._stop.is_set():
                self._set_state("reconnecting", f"{self.config.url} stopped delivering frames; "
                                f"reopening in {backoff:.0f} s")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_backoff_s)

    def _pump(self, reader: FrameReader) -> bool:
        """Read frames until the source fails (False) or a file ends without looping (True)."""
        interval = reader.interval_s(self.config.max_fps)
        next_at = time.monotonic()
        while not self._stop.is_set():
            image = reader.read()
            if image is None:
                if reader.finished and not self.config.loop:
                    return True
                if reader.finished and reader.rewind():
                    continue
                return False
            image = self._reduce(image)
            if reader.on_demand and not interval and self._latest is not None:
                # A file read faster than real time: this frame was decoded while the last one
                # waited; it is handed over once that one is taken, and the next is decoded only
                # then, so no CPU goes to frames nobody looks at.
                while not self._taken.wait(0.2) and not self._stop.is_set():
                    pass
            with self._lock:
                self.frames_grabbed += 1
                self._latest = Frame(self.frames_grabbed, image, time.time())
                self._taken.clear()
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._wake)
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()
        return False

    def _reduce(self, image: np.ndarray) -> np.ndarray:
        """Shrink to `decode_width` right after decoding: every later step works on less."""
        width = self.config.decode_width
        if width and image.shape[1] > width:
            return resize(image, width, round(image.shape[0] * width / image.shape[1]))
        return image

    def _set_state(self, state: str, detail: str) -> None:
        detail = redact_credentials(detail)
        if (state, detail) != (self.state.state, self.state.detail):
            log.info("camera state camera=%s state=%s detail=%s", self.name, state, detail)
        self.state = SourceState(state=state, detail=detail)  # type: ignore[arg-type]


class FrameReader(ABC):
    """One opened source; `read()` returns a BGR frame, or None at its end or on failure."""

    finished = False
    on_demand = False  # a file or folder: frames can wait to be decoded until wanted

    @abstractmethod
    def read(self) -> np.ndarray | None: ...

    def rewind(self) -> bool:
        return False

    def interval_s(self, max_fps: float | None) -> float:
        return 1.0 / max_fps if max_fps else 0.0

    def describe(self) -> str:
        return ""

    def close(self) -> None:  # most readers hold nothing to release
        return None


class CaptureReader(FrameReader):
    """cv2.VideoCapture over a file, a device or a network stream."""

    def __init__(self, target: str | int, is_file: bool, native_rate: bool,
                 label: str | None = None) -> None:
        self.target = target
        # How the target is named in states and logs: never with a password in it.
        self.label = redact_credentials(label or str(target))
        self.is_file = is_file
        self.native_rate = native_rate
        self.on_demand = is_file
        if isinstance(target, str) and "://" in target:
            # A dead stream must fail a read in seconds, not hang the reader.
            self.capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS])
        else:
            self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            self.capture.release()
            raise OSError(f"cannot open {self.label}")

    def read(self) -> np.ndarray | None:
        ok, image = self.capture.read()
        if not ok:
            self.finished = self.is_file
            return None
        return image

    def rewind(self) -> bool:
        self.finished = False
        return bool(self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def interval_s(self, max_fps: float | None) -> float:
        fps = self.capture.get(cv2.CAP_PROP_FPS) if self.is_file and self.native_rate else 0
        rates = [r for r in (max_fps, fps) if r and r > 0]
        return 1.0 / min(rates) if rates else 0.0

    def describe(self) -> str:
        width = int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        return f"{self.label} {width}x{height}" + (f" at {fps:g} fps" if fps > 0 else "")

    def close(self) -> None:
        self.capture.release()


class FolderReader(FrameReader):
    """The images of a folder in name order, decoded at a reduced size when that is enough."""

    def __init__(self, folder: Path, decode_width: int | None, paced: bool = True) -> None:
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise OSError(f"no images in {folder} ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.folder = folder
        self.decode_width = decode_width
        self.paced = paced
        self.position = 0
        self.on_demand = True

    def read(self) -> np.ndarray | None:
        if self.position >= len(self.files):
            self.finished = True
            return None
        path = self.files[self.position]
        self.position += 1
        image = self._decode(path)
        if image is None:
            log.warning("image unreadable, skipped path=%s", path)
            return self.read()
        return image

    def _decode(self, path: Path) -> np.ndarray | None:
        """JPEG decodes at 1/2, 1/4 or 1/8 size when still `decode_width` wide: much less work.

        libjpeg-turbo through simplejpeg, about a quarter faster than through OpenCV, which
        remains for other formats and for JPEG that simplejpeg cannot read (e.g. CMYK)."""
        if path.suffix.lower() in {".jpg", ".jpeg"}:
            try:
                return simplejpeg.decode_jpeg(path.read_bytes(), colorspace="BGR",
                                              min_width=self.decode_width or 0)
            except (ValueError, OSError):
                pass  # unusual JPEG: OpenCV below reads it at full size, or says it cannot
        return cv2.imread(str(path), cv2.IMREAD_COLOR)

    def rewind(self) -> bool:
        self.position, self.finished = 0, False
        return True

    def interval_s(self, max_fps: float | None) -> float:
        rates = [r for r in (max_fps, FOLDER_DEFAULT_FPS if self.paced else None) if r]
        return 1.0 / min(rates) if rates else 0.0

    def describe(self) -> str:
        return f"{self.folder}: {len(self.files)} images"


def open_reader(config: Any) -> FrameReader:
    """The reader for a camera URL; OSError (with what to check) when it cannot be opened."""
    url: str = config.url
    if url.startswith("usb:"):
        target: str | int = url[4:]
        return CaptureReader(int(target) if str(target).isdigit() else target, False, False)
    if url.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return CaptureReader(url_with_password(config), False, False, label=url)
    path = Path(url.removeprefix("file://"))
    if path.is_dir():
        return FolderReader(path, config.decode_width, config.native_rate)
    if str(path).startswith("/dev/video"):
        return CaptureReader(str(path), False, False)
    if not path.exists():
        raise OSError(f"{path} does not exist")
    return CaptureReader(str(path), True, config.native_rate)


def url_with_password(config: Any) -> str:
    """The network URL with the password from `password_env` in its user part, to open the
    stream with: nothing else ever sees this URL."""
    url: str = config.url
    if config.password_env is None:
        return url
    password = os.environ.get(config.password_env)
    if password is None:
        raise CameraConfigError(
            f"environment variable {config.password_env} (password_env of camera "
            f"{config.name}) is not set; set it to the camera's password")
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")  # the config holds a user and no password
    return f"{scheme}://{user}:{quote(password, safe=_USERINFO_SAFE)}@{host}"
