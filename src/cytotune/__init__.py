"""cytotune: adapt pretrained vision foundation models to cytology image classification."""
__version__ = "0.1.0"
