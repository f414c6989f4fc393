"""Central's web side: the FastAPI app (JSON API, /metrics, the pages), its templates and
static files."""

from central_sync.web.app import create_app

__all__ = ["create_app"]
