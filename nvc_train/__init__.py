"""nvc-train: train Scale-Space Flow video codecs and export integer hyperpriors that decode
identically on every machine."""

__version__ = "0.1.0"
