"""Backbones, the full per-variant classifier and the registry that builds them by name."""

from animeprov.models.classifier import Classifier
from animeprov.models.registry import create_model, model_summary

__all__ = ["Classifier", "create_model", "model_summary"]
