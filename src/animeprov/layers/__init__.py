"""Reusable network layers."""

from animeprov.layers.cbam import CBAM

__all__ = ["CBAM"]
