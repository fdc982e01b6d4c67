"""The training side (Keras 3 on TensorFlow or JAX): models, the trainer, the Distiller, the
stages of the method and their evaluation. Nothing on the device side imports it."""
