"""edgekd: generalist + specialist ensembles distilled into one student for edge devices."""

__version__ = "0.1.0"
