"""Central's repository layer: all of central-sync's SQL lives in this package."""

from central_sync.db.repository import CentralDB
from central_sync.db.rows import (
    PREDICTION_TYPE,
    DeviceSummary,
    ModelVersionExists,
    PublishedModel,
    prediction_row,
    version_exists_message,
)
from central_sync.db.schema import MIGRATIONS

__all__ = [
    "MIGRATIONS",
    "PREDICTION_TYPE",
    "CentralDB",
    "DeviceSummary",
    "ModelVersionExists",
    "PublishedModel",
    "prediction_row",
    "version_exists_message",
]
