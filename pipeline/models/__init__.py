"""Models built by name: MAE ViTs (``mae.py``) and temporal heads, registered on import."""

from pipeline.models.registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
