"""Credentials taken out of text that people or logs will see: the password in a URL's user
part and the values of secret query parameters (rtsp://admin:***@cam/stream?token=***)."""

from __future__ import annotations

import re

REDACTED = "***"

# scheme://user:password@ — the password may itself hold '@' (cameras' passwords often do):
# it runs to the last '@' before the path, the query or a blank. The scheme's length is
# bounded so that text from a hostile device (say "a.a.a.a..." of 1 MiB) costs linear time.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/?#@:]*):[^\s/?#]*@")
_SECRET_QUERY_VALUE = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|pass|token|access_token|api_key|apikey|key|secret|"
    r"auth|sig|signature|credentials)=)[^&#;\s]*",
    re.IGNORECASE,
)


def redact_credentials(text: str) -> str:
    """`text` with every URL password and secret query value replaced by ***; the user name
    stays, so that people can still tell which account a camera or server is opened with."""
    text = _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)
    return _SECRET_QUERY_VALUE.sub(rf"\g<head>{REDACTED}", text)
