"""Reading a browser's multipart upload straight to disk, bounded: at most `max_bytes` of body
(refused from Content-Length at once, else as soon as the stream passes it), only the expected
fields, each file written to a folder as it arrives, so a large or endless upload never sits in
memory. A check runs on the text fields before the first file byte is written (the CSRF token
comes first in the form), so a forged post writes nothing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

TEXT_FIELD_MAX_BYTES = 4096
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class UploadRefused(Exception):
    """The upload is not read any further; the message says why, `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadedFile:
    filename: str  # the browser's name of the file, reduced to a safe base name
    path: Path
    size: int


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)


async def read_upload(request: Request, folder: Path, max_bytes: int,
                      file_suffixes: Mapping[str, str], text_fields: set[str],
                      timeout_s: float,
                      check_fields: Callable[[dict[str, str]], None] | None = None) -> Upload:
    """The form's text fields and its files (one per name in `file_suffixes`, whose file name
    must end with that suffix) written under `folder`. Raises UploadRefused; files already
    written stay in `folder`, which the caller removes."""
    boundary = _boundary(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise UploadRefused(_too_large(max_bytes), 413)
    form = _FormWriter(folder, file_suffixes, text_fields, check_fields)
    parser = MultipartParser(boundary, form.callbacks())
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:
                    raise UploadRefused(_too_large(max_bytes), 413)
                try:
                    parser.write(chunk)
                except FormParserError:
                    raise UploadRefused("the upload is not a valid multipart form") from None
                await run_in_threadpool(form.flush)
        try:
            parser.finalize()
        except FormParserError:
            raise UploadRefused("the upload ended before its form did") from None
        await run_in_threadpool(form.flush)
    except TimeoutError:
        raise UploadRefused(f"the upload took longer than {timeout_s:g} s; try again on a "
                            "faster link", 408) from None
    finally:
        form.close()
    missing = [name for name in file_suffixes if name not in form.upload.files]
    if missing:
        raise UploadRefused(f"choose the {' and '.join(missing)} file(s)", 422)
    return form.upload


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadRefused("send the form as multipart/form-data (the page's upload form)",
                            415)
    return params[b"boundary"]


def _too_large(max_bytes: int) -> str:
    return (f"the upload is larger than {max_bytes / 2**20:g} MiB, central's limit "
            "(web.max_upload_bytes in central-sync.yaml)")


class _FormWriter:
    """python-multipart callbacks: text into `upload.fields`, file parts into open files whose
    data is written by `flush` (in a worker thread, off the event loop)."""

    def __init__(self, folder: Path, file_suffixes: Mapping[str, str], text_fields: set[str],
                 check_fields: Callable[[dict[str, str]], None] | None) -> None:
        self.folder = folder
        self.file_suffixes = file_suffixes
        self.text_fields = text_fields
        self.check_fields = check_fields
        self.upload = Upload()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._text = bytearray()
        self._file: IO[bytes] | None = None
        self._file_name = ""
        self._file_size = 0
        self._pending: list[tuple[IO[bytes], bytes]] = []
        self._open: list[IO[bytes]] = []
        self._checked = False

    def callbacks(self) -> Any:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value_part, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._disposition, self._text, self._file = b"", bytearray(), None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name in self.upload.fields or name in self.upload.files:
            raise UploadRefused(f"the form field {name!r} came twice")
        self._name = name
        if name in self.file_suffixes:
            self._begin_file(name, options.get(b"filename", b"").decode("utf-8", "replace"))
        elif name not in self.text_fields:
            raise UploadRefused(f"the form has an unexpected field {name!r}; use the page's "
                                "upload form")

    def _begin_file(self, name: str, filename: str) -> None:
        if not self._checked and self.check_fields is not None:
            self.check_fields(self.upload.fields)  # before any file byte reaches the disk
        self._checked = True
        suffix = self.file_suffixes[name]
        base = _SAFE_NAME.sub("_", Path(filename.replace("\\", "/")).name)[-100:]
        if not base.lower().endswith(suffix):
            raise UploadRefused(f"the {name} file must be a {suffix} file, got "
                                f"{filename or 'none'!r}", 422)
        self._file_name = base if base != suffix else f"{name}{suffix}"
        self._file = open(self.folder / self._file_name, "xb")  # noqa: SIM115 - closed in close()
        self._open.append(self._file)
        self._file_size = 0

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._pending.append((self._file, data[start:end]))
            self._file_size += end - start
            return
        self._text += data[start:end]
        if len(self._text) > TEXT_FIELD_MAX_BYTES:
            raise UploadRefused(f"the form field {self._name!r} is longer than "
                                f"{TEXT_FIELD_MAX_BYTES} bytes")

    def _part_end(self) -> None:
        if self._file is not None:
            self.upload.files[self._name] = UploadedFile(
                self._file_name, self.folder / self._file_name, self._file_size)
        else:
            self.upload.fields[self._name] = self._text.decode("utf-8", "replace").strip()
        self._name = ""

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for file, data in pending:
            file.write(data)

    def close(self) -> None:
        for file in self._open:
            file.close()
