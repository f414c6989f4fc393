"""Edge agent: runs ONNX models on a plant gateway and syncs with central over MQTT."""

__version__ = "0.1.0"
