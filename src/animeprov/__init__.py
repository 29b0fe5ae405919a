"""animeprov: tell human-drawn from generated anime images, and which generator made them."""

__version__ = "0.1.0"
