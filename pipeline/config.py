"""Settings written once: a stage's frozen dataclass holds each setting, its default and its help.

Everything else derives from the dataclass: the command line (``cli.py`` builds one option per
field), named presets (``PRESETS``, a class attribute of overrides, e.g. the CPU demo's budget), a
config file (``--config FILE``: a JSON object of fields; the ``config.json`` a run wrote is one, its
section named for the stage is read) and ``--set KEY=VALUE``. Layers apply in that order, later ones
winning: defaults < preset < file < ``--set`` < options given, after nanoGPT's ``configurator.py``
(a file, then ``--key=value``) and video_features' merged configs.

A dataclass may nest another (the heads' ``TrainConfig.head``): its fields are set by their own
names (``d_model=256``), one level deep. Validation lives in the dataclass's ``__post_init__`` and
raises :class:`ConfigError` naming the field, so that the CLI can name the option, file key or
preset at fault.
"""

import dataclasses
import json
import re
import types
import typing
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

HELP, CHOICES, OPTION = "help", "choices", "option"


class ConfigError(InputError, ValueError):
    """A setting that cannot be used: ``key`` is the field name, ``problem`` what is wrong and what
    to do, written to follow the setting's name (``epochs`` + ``0: use 1 or more``); the CLI puts
    the option, the file key or the preset that gave the value in the name's place.

    ``others``: where two settings clash, the other's name -> the problem told from its side; the
    CLI tells the one the user gave (``key``'s when both or neither were)."""

    def __init__(self, key: str, problem: str, others: dict[str, str] | None = None):
        self.key, self.problem, self.others = key, problem, dict(others or {})
        super().__init__(f"{key} {problem}")


def setting(default: Any = MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
            option: str | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its help text (and, optionally, its allowed values and CLI option
    name).

    Args:
        default: the default (the paper's, where the paper has one).
        help: one line for ``--help``.
        choices: the allowed values of a ``str`` field (checked on construction and by the CLI).
        option: the option's name when it is not ``--field-name`` (e.g. ``--store`` for ``stores``).
    """
    metadata = {HELP: help, CHOICES: choices, OPTION: option}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_choices(config: Any) -> None:
    """Raise :class:`ConfigError` for a ``str`` field outside its ``choices`` (call in
    ``__post_init__``)."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get(CHOICES)
        value = getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f.name, f"{value!r} is not one of {', '.join(map(str, choices))}")


def nested(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that hold another config dataclass (set through their own field
    names)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(hints[f.name])}


def settable(cls: type) -> dict[str, tuple[Field, Any]]:
    """Every setting of ``cls`` by name: ``(field, type)``, nested configs' fields flattened in."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[Field, Any]] = {}
    inner = nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in inner:
            sub_hints = typing.get_type_hints(inner[f.name])
            out.update({g.name: (g, sub_hints[g.name]) for g in dataclasses.fields(inner[f.name])})
        else:
            out[f.name] = (f, hints[f.name])
    return out


def default_of(f: Field) -> Any:
    """A field's default value (MISSING when it has none)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _optional(kind: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(kind))
    return kind, False


def _split(text: str, numbers: bool) -> list[str]:
    """Items of a tuple written as text: numbers as ``0.8,1.0``, ``768-256-128`` or
    ``768/256/128``; text (paths, names) by commas only, so that ``/data/aw2`` stays one path."""
    pattern = r"[,\s/]+|(?<=\d)-(?=\d)" if numbers else r"\s*,\s*"
    return [p for p in re.split(pattern, text.strip()) if p]


def coerce(key: str, kind: Any, value: Any) -> Any:
    """``value`` (a JSON value, a Python value or text) as a value of type ``kind``.

    Raises:
        ConfigError: naming ``key`` when the value does not fit the type.
    """
    base, nullable = _optional(kind)
    if value is None or (isinstance(value, str) and value.strip().lower() == "none" and nullable):
        if nullable:
            return None
        raise ConfigError(key, "cannot be none; give a value")
    try:
        if typing.get_origin(base) is tuple:
            args = typing.get_args(base)
            numbers = all(a in (int, float) for a in args if a is not Ellipsis)
            items = _split(value, numbers) if isinstance(value, str) else list(value)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(key, args[0], v) for v in items)
            if len(items) != len(args):
                raise ValueError(f"needs {len(args)} values")
            return tuple(coerce(key, a, v) for a, v in zip(args, items))
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).strip().lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError("use true or false")
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("needs a whole number")
            return int(value) if not isinstance(value, str) else int(value.strip())
        if base is float:
            if isinstance(value, bool):
                raise ValueError("needs a number")
            return float(value)
        if base is str:
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)  # {"subjects": 2} in a JSON file, as --subjects 2
            if not isinstance(value, (str, Path)):
                raise ValueError("needs text")
            return str(value)
        if base is dict or typing.get_origin(base) is dict:
            if not isinstance(value, dict):
                raise ValueError("needs a JSON object")
            return dict(value)
    except (TypeError, ValueError) as err:
        name = getattr(base, "__name__", str(base))
        raise ConfigError(key, f"{value!r} is not a valid {name} ({err})") from None
    raise ConfigError(key, f"cannot be set from {value!r}")


def parse_settings(cls: type, items: typing.Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (the CLI's ``--set``) as typed values of ``cls``'s settings.

    Raises:
        ConfigError: an unknown key or a value that does not fit its type.
        InputError: an item without ``=``.
    """
    known = settable(cls)
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise InputError(f"--set {item!r}: use KEY=VALUE, e.g. --set {next(iter(known))}=...")
        if key not in known:
            raise ConfigError(key, f"is not a setting; settable: {', '.join(sorted(known))}")
        out[key] = coerce(key, known[key][1], text)
    return out


def flatten(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A config dict (as ``config.json`` holds it, nested configs as sub-objects) with nesting
    removed."""
    inner = nested(cls)
    out = {}
    for key, value in values.items():
        if key in inner and isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out


def check_keys(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Typed values of known settings; :class:`ConfigError` on the first unknown key or bad
    value."""
    known = settable(cls)
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(key, f"is not a setting; settable: {', '.join(sorted(known))}")
        out[key] = coerce(key, known[key][1], value)
    return out


# the parts of the run config.json files that hold a stage's settings (``section`` below)
RUN_SECTIONS = ("pretrain", "finetune", "extract", "faces", "analyze", "heads", "synth", "demo")


def read_config_file(path: Path, cls: type, section: str,
                     stages: dict[str, type] | None = None) -> dict[str, Any]:
    """The settings a JSON config file gives ``cls``.

    A run's own ``config.json`` is a valid input: when the file has an object under ``section``
    (e.g. ``"pretrain"``), that object is read (a training run's own file, with ``epochs_history``,
    gives the folder it lies in as ``out``: the run, wherever it moved); otherwise the whole file
    is. ``stages`` (section ->
    config class, ``pipeline.configs.STAGES``) name the stage of a file that holds another stage's
    settings.

    Raises:
        InputError: the file is missing, not a JSON object, or another stage's run config (an object
        under another of ``RUN_SECTIONS``, or, at the top, keys that are all one of ``stages``'
        settings and not all ``cls``'s); ConfigError for an unknown key or a value of the wrong
        type.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist; check --config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{path}: not a JSON config file ({err}); write one JSON object of settings"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: holds a JSON {type(data).__name__}, not an object of settings")
    if isinstance(data.get(section), dict):
        if "epochs_history" in data and "out" in data[section]:
            # a training run's own config.json (the engine writes epochs_history) lies in its run
            # folder: that folder, even after a move, is the run --config RUN/config.json resumes
            data = {**data[section], "out": str(path.resolve().parent)}
        else:
            data = data[section]
    else:
        own = {f.name for f in dataclasses.fields(cls)}  # a nested config is not another stage
        other = next((k for k in RUN_SECTIONS
                      if k not in own and isinstance(data.get(k), dict)), None)
        if other is not None:
            raise InputError(f"{path}: a {other} run's config (its settings are under "
                             f"\"{other}\", there is no \"{section}\" part); give a file of "
                             f"{section} settings or a {section} run's config.json")
    values = flatten(cls, data)
    unknown = [k for k in values if k not in settable(cls)]
    other = next((name for name, other_cls in (stages or {}).items()
                  if unknown and other_cls is not cls
                  and set(flatten(other_cls, data)) <= set(settable(other_cls))), None)
    if other is not None:
        raise InputError(f"{path}: a {other} config: its keys {', '.join(unknown[:3])}"
                         f"{', ...' if len(unknown) > 3 else ''} are {other} settings, not "
                         f"{section} ones; give a file of {section} settings or a {section} "
                         "run's config.json")
    return check_keys(cls, values)


def preset_values(cls: type, name: str | None) -> dict[str, Any]:
    """The overrides of a named preset of ``cls`` (``cls.PRESETS``); None or "paper" is no
    override."""
    presets = getattr(cls, "PRESETS", {})
    if name is None:
        return {}
    if name not in presets:
        raise ConfigError("preset", f"{name!r} is not a preset; use one of "
                                    f"{', '.join(sorted(presets))}")
    return dict(presets[name])


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of ``cls`` from flat settings (nested configs' fields by their own names).

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or one the dataclass's checks
            refuse.
    """
    values = check_keys(cls, values)
    kwargs: dict[str, Any] = {}
    for name, sub in nested(cls).items():
        sub_names = {f.name for f in dataclasses.fields(sub)}
        kwargs[name] = sub(**{k: values.pop(k) for k in list(values) if k in sub_names})
    kwargs.update(values)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and default_of(f) is MISSING]
    if missing:
        raise ConfigError(missing[0], "is required; give it")
    return cls(**kwargs)


def resolve(cls: type, *, preset: str | None = None, file: Path | None = None, section: str = "",
            settings: dict[str, Any] | None = None) -> Any:
    """Defaults < preset < config file < ``settings`` (already typed), built into ``cls``."""
    values = preset_values(cls, preset)
    if file is not None:
        values.update(read_config_file(file, cls, section))
    values.update(settings or {})
    return build(cls, values)


def preset(cls: type, name: str) -> Any:
    """The config a named preset of ``cls`` gives (``cls.PRESETS[name]`` over the defaults)."""
    return build(cls, preset_values(cls, name))
