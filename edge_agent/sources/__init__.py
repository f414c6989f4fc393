"""Data sources: anything that produces items for pipelines (OPC-UA tags for now)."""
