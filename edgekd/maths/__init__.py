"""The method's pure maths in NumPy: KL fusion, confusion grouping and paired statistics.
Shared by the training side and the device side; imports nothing heavier than NumPy."""
