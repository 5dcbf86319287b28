"""Models built by name, as timm does: ``@register_model`` on a builder,
``build_model(name, **cfg)``.

A registered name starts with its family (``mae_vit_base_patch16``, ``temporal_tcn_transformer``),
so that ``list_models(family)`` finds every model of one kind; the tests build every registered
model by walking the registry, family by family, as timm's tests do.
"""

from collections.abc import Callable

from torch import nn

FAMILIES = ("mae_", "temporal_")  # MAE ViTs (models/mae.py) and temporal heads (models/temporal.py)
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name, which starts with its family and carries the size.

    Raises:
        ValueError: the name is taken, or starts with no known family.
    """
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    if not fn.__name__.startswith(FAMILIES):
        raise ValueError(f"model {fn.__name__!r} must start with its family, one of "
                         f"{', '.join(FAMILIES)}")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(family: str = "") -> list[str]:
    """Registered names starting with ``family`` (e.g. ``"mae_"``, ``"temporal_"``; all by
    default)."""
    return sorted(name for name in _REGISTRY if name.startswith(family))


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names list the known ones.

    Raises:
        InputError: ``name`` is not registered.
    """
    from pipeline.errors import InputError

    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)
