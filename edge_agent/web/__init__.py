"""The gateway's operator page (recommendations, trends, defects, health) and its JSON API.

Server-rendered with Jinja2; one small script replaces the live part every few seconds. The page
answers only to its own names (`access.TrustedHosts`), takes posts only from itself, and with
`ui.token` or `ui.password` set needs a login for every request but /healthz.
"""

from edge_agent.web.access import SESSION_COOKIE, Guard, LoginThrottle, Sessions, TrustedHosts
from edge_agent.web.app import (
    PAGE_MAX_BODY_BYTES,
    SECURITY_HEADERS,
    create_app,
    operator_server,
)
from edge_agent.web.view import duration, number, operator_view, tag_words

__all__ = [
    "PAGE_MAX_BODY_BYTES", "SECURITY_HEADERS", "SESSION_COOKIE", "Guard", "LoginThrottle",
    "Sessions", "TrustedHosts", "create_app", "duration", "number", "operator_server",
    "operator_view", "tag_words",
]
