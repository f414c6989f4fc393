"""`central-sync train`: retrain the head of a published vision classifier on a dataset
version, keeping its trunk, and write an ONNX file with metadata ready to publish."""

from central_sync.training.head import LabelledImage, TrainingError
from central_sync.training.retrain import BaseModel, DataSource, TrainedModel, retrain_head

__all__ = ["BaseModel", "DataSource", "LabelledImage", "TrainedModel", "TrainingError",
           "retrain_head"]
