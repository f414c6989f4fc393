"""Pure inference: ONNX Runtime runners checked against their manifest, vision pre- and
post-processing, process outputs as numbers, the setpoint search, and the one model check."""
