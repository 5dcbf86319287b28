"""Models built by name: MAE ViTs (``mae.py``) and temporal heads (``temporal.py``).

Importing this package registers both families, so ``build_model(name)`` knows every name.
"""

from pipeline.models import mae, temporal  # noqa: F401  (registration on import)
from pipeline.models.registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
