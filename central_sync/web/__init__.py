"""Central's web side: the FastAPI app (JSON API, /metrics, the pages), its templates and
static files."""

from central_sync.web.app import OpenToTheNetwork, create_app, refuse_open_to_the_network

__all__ = ["OpenToTheNetwork", "create_app", "refuse_open_to_the_network"]
