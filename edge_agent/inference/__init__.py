"""Model runners and the pipelines that feed them."""
