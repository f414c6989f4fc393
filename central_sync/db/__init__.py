"""Central's repository layer: all of central-sync's SQL lives in this package."""

from central_sync.db.connection import DatabaseError, DatabaseUrlError
from central_sync.db.model_states import (
    MODEL_STATES,
    Evaluation,
    ModelState,
    ModelStateError,
    NotApproved,
)
from central_sync.db.repository import CentralDB
from central_sync.db.rows import (
    ROLLOUT_ACTIVE_STATES,
    DeploymentEventRefused,
    DeviceSummary,
    ModelVersionExists,
    PublishedModel,
    Rollout,
    RolloutDevice,
    prediction_row,
    version_exists_message,
)
from central_sync.db.schema import MIGRATIONS

__all__ = [
    "MIGRATIONS",
    "MODEL_STATES",
    "ROLLOUT_ACTIVE_STATES",
    "CentralDB",
    "DatabaseError",
    "DatabaseUrlError",
    "DeploymentEventRefused",
    "DeviceSummary",
    "Evaluation",
    "ModelState",
    "ModelStateError",
    "ModelVersionExists",
    "NotApproved",
    "PublishedModel",
    "Rollout",
    "RolloutDevice",
    "prediction_row",
    "version_exists_message",
]
