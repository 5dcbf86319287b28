"""Models built by name, as timm does: ``@register_model`` on a builder, ``build_model(name, **cfg)``."""

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; the name carries the size (``mae_vit_base_patch16``)."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(prefix: str = "") -> list[str]:
    return sorted(name for name in _REGISTRY if name.startswith(prefix))


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names list the known ones."""
    from pipeline.errors import InputError

    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)
