"""HTTP API and browser page for a trained run (`animeprov serve RUN`)."""

from __future__ import annotations

from animeprov.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
