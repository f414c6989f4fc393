"""Camera sources on real files and a real HTTP MJPEG stream served by the test."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config import CameraSourceConfig
from edge_agent.sources.camera import CameraSource, url_with_password
from tests.conftest import free_port
from tests.helpers import REPO, wait_until_async


def camera(url: str, **options: object) -> CameraSource:
    return CameraSource(CameraSourceConfig(type="camera", name="cam", url=url,
                                           reconnect_max_backoff_s=1, **options))


def numbered_frame(i: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A frame whose brightness encodes its number (i * 20 in every pixel)."""
    return np.full((height, width, 3), (i * 20) % 256, dtype=np.uint8)


def write_video(path: Path, frames: int, fps: float = 50.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(numbered_frame(i))
    writer.release()
    return path


async def collect(source: CameraSource, count: int, timeout_s: float = 10) -> list[int]:
    """Frame brightness values of `count` successive newest frames."""
    task = asyncio.create_task(source.run())
    seen, after = [], -1
    try:
        while len(seen) < count:
            frame = await source.next_frame(after, timeout_s)
            assert frame is not None, f"no frame; state {source.state}"
            seen.append(int(frame.image.mean()))
            after = frame.index
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return seen


def test_video_file_plays_at_its_own_rate_and_loops(tmp_path: Path) -> None:
    video = write_video(tmp_path / "line.avi", frames=5, fps=20)
    source = camera(str(video))
    started = time.monotonic()
    values = asyncio.run(collect(source, 12))
    assert time.monotonic() - started >= 0.4  # 12 frames at 20 fps, not as fast as decoding
    assert {round(v / 20) for v in values} == {0, 1, 2, 3, 4}  # every frame, again and again
    assert source.state.state == "stopped"


def test_video_file_without_loop_ends_in_state_stopped(tmp_path: Path) -> None:
    video = write_video(tmp_path / "line.avi", frames=3)
    source = camera(f"file://{video}", loop=False, native_rate=False)

    async def scenario() -> None:
        task = asyncio.create_task(source.run())
        deadline, after = time.monotonic() + 10, -1
        while "end of the video" not in source.state.detail:
            assert time.monotonic() < deadline, source.state
            # Read faster than real time, the file is decoded only as frames are taken.
            frame = await source.next_frame(after, 0.2)
            after = frame.index if frame else after
        assert source.frames_grabbed == 3 and after == 3
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_folder_of_images_in_name_order_decoded_reduced(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.jpg"), numbered_frame(i + 1, 1600, 1200))
    (tmp_path / "notes.txt").write_text("not an image")
    source = camera(str(tmp_path), max_fps=100, decode_width=400)
    values = asyncio.run(collect(source, 3))
    assert [round(v / 20) for v in values] == [1, 2, 3]
    assert source.latest().image.shape == (300, 400, 3)  # 1600 wide decoded at 1/4


def test_unpaced_folder_is_decoded_only_as_frames_are_taken(tmp_path: Path) -> None:
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"img{i}.jpg"), numbered_frame(i + 1))
    source = camera(str(tmp_path), native_rate=False, loop=False)

    async def scenario() -> list[int]:
        task = asyncio.create_task(source.run())
        values, after = [], -1
        while len(values) < 4:
            frame = await source.next_frame(after, 10)
            assert frame is not None, source.state
            values.append(round(frame.image.mean() / 20))
            after = frame.index
            await asyncio.sleep(0.15)  # a slow model: nothing is skipped, nothing decoded ahead
            assert source.frames_grabbed <= len(values) + 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return values

    assert asyncio.run(scenario()) == [1, 2, 3, 4]  # paced at 10 frames/s, some were skipped


def test_slow_consumer_gets_the_newest_frame_not_a_backlog(tmp_path: Path) -> None:
    video = write_video(tmp_path / "line.avi", frames=50, fps=200)
    source = camera(str(video))

    async def scenario() -> list[int]:
        task = asyncio.create_task(source.run())
        indices, after = [], -1
        for _ in range(3):
            frame = await source.next_frame(after, 10)
            assert frame is not None
            indices.append(frame.index)
            after = frame.index
            await asyncio.sleep(0.1)  # a slow model
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return indices

    indices = asyncio.run(scenario())
    assert indices[2] - indices[1] > 5, indices  # frames in between were skipped


def test_missing_file_is_retried_with_the_reason_in_the_state(tmp_path: Path) -> None:
    source = camera(str(tmp_path / "absent.avi"))

    async def scenario() -> None:
        task = asyncio.create_task(source.run())
        await wait_until_async(lambda: source.state.state == "reconnecting", 10,
                               what=lambda: f"the source retrying: {source.state}")
        assert "does not exist" in source.state.detail
        write_video(tmp_path / "absent.avi", frames=3)
        assert await source.next_frame(-1, 10) is not None
        assert source.state.state == "connected"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


class MjpegServer:
    """An HTTP MJPEG camera (multipart/x-mixed-replace), as many IP cameras serve; with
    `credentials` (user, password) it asks for HTTP Basic authentication."""

    def __init__(self, port: int, credentials: tuple[str, str] | None = None) -> None:
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.sent = 0
        self.expected_authorization = None if credentials is None else (
            "Basic " + base64.b64encode(":".join(credentials).encode()).decode())
        self.refused = 0

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                expected = owner.expected_authorization
                if expected and self.headers.get("Authorization") != expected:
                    owner.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while owner.server is not None:
                        ok, jpeg = cv2.imencode(".jpg", numbered_frame(owner.sent % 10))
                        assert ok
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                                         + jpeg.tobytes() + b"\r\n")
                        owner.sent += 1
                        time.sleep(0.02)  # the camera's frame rate: 50 frames/s
                except (BrokenPipeError, ConnectionResetError):
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()


@pytest.fixture
def mjpeg() -> Iterator[MjpegServer]:
    server = MjpegServer(free_port())
    server.start()
    yield server
    server.stop()


def test_http_mjpeg_stream_is_read_and_reconnected_after_the_camera_drops(
        mjpeg: MjpegServer) -> None:
    source = camera(f"http://127.0.0.1:{mjpeg.port}/stream.mjpg")

    async def scenario() -> None:
        task = asyncio.create_task(source.run())
        first = await source.next_frame(-1, 15)
        assert first is not None and first.image.shape == (240, 320, 3)
        assert source.state.state == "connected"
        mjpeg.stop()  # the camera loses power
        await wait_until_async(lambda: source.state.state == "reconnecting", 20,
                               what=lambda: f"the drop noticed: {source.state}")
        mjpeg.start()  # and comes back
        after = source.latest().index
        resumed = await source.next_frame(after, 20)
        assert resumed is not None and source.state.state == "connected"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def start_rtsp_camera(port: int) -> subprocess.Popen:
    """GStreamer's RTSP server under the system Python (deploy/setup.sh --test installs it)."""
    if not Path("/usr/bin/python3").exists():
        pytest.fail("the RTSP test needs Debian's python3 with GStreamer: bash deploy/test.sh")
    process = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests" / "rtsp_server.py"),
                                str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "READY" not in line:
        process.kill()
        pytest.fail(f"RTSP server did not start ({process.stderr.read()[-500:]}); install it "
                    "with: sudo bash deploy/setup.sh --test")
    return process


def test_rtsp_camera_is_read_and_reconnected_after_the_server_restarts() -> None:
    rtsp_port = free_port()
    source = camera(f"rtsp://127.0.0.1:{rtsp_port}/line")
    server = start_rtsp_camera(rtsp_port)

    async def scenario() -> None:
        nonlocal server
        task = asyncio.create_task(source.run())
        try:
            first = await source.next_frame(-1, 20)
            assert first is not None and first.image.shape == (240, 320, 3), source.state
            assert source.state.state == "connected"
            server.terminate()
            server.wait(10)
            await wait_until_async(lambda: source.state.state == "reconnecting", 30,
                                   what=lambda: f"the restart noticed: {source.state}")
            server = start_rtsp_camera(rtsp_port)
            resumed = await source.next_frame(source.latest().index, 30)
            assert resumed is not None and source.state.state == "connected"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        server.kill()
        server.wait()


CAMERA_PASSWORD = "p@ss:w0rd?"  # characters that must not break the URL nor leak from it


@pytest.fixture
def locked_camera() -> Iterator[MjpegServer]:
    server = MjpegServer(free_port(), credentials=("viewer", CAMERA_PASSWORD))
    server.start()
    yield server
    server.stop()


async def connected_state(source: CameraSource) -> str:
    """Run the camera until it delivers a frame; the state's detail at that moment."""
    task = asyncio.create_task(source.run())
    try:
        frame = await source.next_frame(-1, 15)
        assert frame is not None, f"no frame; state {source.state}"
        assert source.state.state == "connected"
        return source.state.detail
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_camera_password_comes_from_the_environment_and_shows_nowhere(
        locked_camera: MjpegServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("STRIP_CAMERA_PASSWORD", CAMERA_PASSWORD)
    source = camera(f"http://viewer@127.0.0.1:{locked_camera.port}/stream.mjpg",
                    password_env="STRIP_CAMERA_PASSWORD")

    detail = asyncio.run(connected_state(source))
    assert f"http://viewer@127.0.0.1:{locked_camera.port}/stream.mjpg" in detail
    assert "p@ss" not in detail and "p%40ss" not in detail
    assert "p@ss" not in caplog.text and "p%40ss" not in caplog.text


def test_camera_url_with_a_password_is_shown_and_logged_without_it(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = MjpegServer(free_port(), credentials=("viewer", "Secret-77"))
    server.start()
    source = camera(f"http://viewer:Secret-77@127.0.0.1:{server.port}/stream.mjpg"
                    "?token=t0ken-9")
    assert "Secret-77" not in source.state.detail

    try:
        detail = asyncio.run(connected_state(source))
    finally:
        server.stop()
    assert f"http://viewer:***@127.0.0.1:{server.port}/stream.mjpg?token=***" in detail
    for secret in ("Secret-77", "t0ken-9"):
        assert secret not in detail and secret not in caplog.text
    assert secret not in source.config.summary()


def test_camera_without_its_password_variable_fails_with_what_to_set(
        locked_camera: MjpegServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIP_CAMERA_PASSWORD", raising=False)
    source = camera(f"http://viewer@127.0.0.1:{locked_camera.port}/stream.mjpg",
                    password_env="STRIP_CAMERA_PASSWORD")

    async def scenario() -> None:
        task = asyncio.create_task(source.run())
        await wait_until_async(lambda: source.state.state == "failed", 10,
                               what=lambda: f"the missing password noticed: {source.state}")
        assert "environment variable STRIP_CAMERA_PASSWORD" in source.state.detail
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert locked_camera.refused == 0  # nothing was even tried without it


def test_password_is_inserted_into_the_url_only_to_open_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PW", "a@b/c d")
    config = CameraSourceConfig(type="camera", name="cam", url="rtsp://admin@10.0.0.5/s",
                                password_env="CAM_PW")
    assert url_with_password(config) == "rtsp://admin:a%40b%2Fc%20d@10.0.0.5/s"
    assert config.url == "rtsp://admin@10.0.0.5/s"


@pytest.mark.parametrize(("url", "error"), [
    ("rtsp://admin:pw@10.0.0.5/s", "remove the password from the url"),
    ("rtsp://10.0.0.5/s", "needs the user name in the url"),
    ("usb:0", "applies to network cameras"),
])
def test_camera_password_env_config_says_what_to_change(url: str, error: str) -> None:
    options: dict[str, Any] = {"type": "camera", "name": "cam", "url": url, "password_env": "P"}
    with pytest.raises(ValidationError, match=error) as raised:
        CameraSourceConfig(**options)
    assert ":pw@" not in str(raised.value)
