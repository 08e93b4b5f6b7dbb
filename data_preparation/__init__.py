"""Get image–caption data (DreamLIP caption tables, img2dataset downloads) into the inputs encode/ reads."""

__version__ = "0.1.0"
