"""The bridge: turns a trained run's Keras models into deployable files (TFLite, ONNX,
SavedModel, TensorRT scripts) and the model cards and `ensemble.json` the device side reads."""
