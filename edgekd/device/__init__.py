"""The device side: runners for exported files, the TF-free ensemble, predict and bench.
It runs where TensorFlow is not installed (a Jetson, a Raspberry Pi) and never imports it."""
