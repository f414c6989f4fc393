"""The Jinja2 environment of central's pages (templates in central_sync/web/templates/)."""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                        autoescape=select_autoescape(["html"]))
