"""The command line of a stage, derived from its config dataclass (:mod:`pipeline.config`).

:func:`config_options` gives a click command one option per setting (``--field-name``; its help and
default from the dataclass, so the CLI holds no default of its own), and ``--preset NAME`` where the
config has presets, ``--config FILE``, ``--set KEY=VALUE`` and ``--print-config``. Only the settings
the user gave are passed on, layered over the preset and the file (:func:`pipeline.config.resolve`).
A :class:`pipeline.config.ConfigError` from the dataclass or the stage names a field;
:func:`describe` turns it into the option, ``--set`` item, file or preset that gave the value.
"""

import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from pipeline import config
from pipeline.config import CHOICES, HELP, OPTION, ConfigError, default_of, settable
from pipeline.configs import STAGES
from pipeline.errors import InputError
from pipeline.runs import to_jsonable

CONTEXT_KEY = "mae_affect_settings"


def option_name(f) -> str:
    """The option of a field: its ``option`` metadata, else ``--field-name``."""
    return f.metadata.get(OPTION) or "--" + f.name.replace("_", "-")


def _click_option(name: str, f, kind, default) -> click.Option | None:
    """A click option for one setting (None for settings only ``--set`` and files reach, such as
    dicts); ``default`` is the value shown in its help (the command's default preset's, if it sets
    one)."""
    base, nullable = config._optional(kind)
    shown = "none" if default is None else ("" if default in (config.MISSING, "", ()) else default)
    help_text = f.metadata.get(HELP, "")
    if shown != "" and not isinstance(shown, dict):
        shown = " ".join(map(str, shown)) if isinstance(shown, tuple) else shown
        help_text += f"  [default: {shown}]"
    flag = option_name(f)
    if base is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text)
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] is str:
                return click.Option([flag, name], multiple=True, default=(), help=help_text)
            return click.Option([flag, name], default=None, metavar="A-B-..", help=help_text)
        return click.Option([flag, name], nargs=len(args), type=args[0], default=None,
                            help=help_text)
    if base in (dict,) or typing.get_origin(base) is dict:
        return None
    choices = f.metadata.get(CHOICES)
    if base in (int, float) and nullable and not choices:
        # Text, so that "none" passes; the settings' coercion turns it into the number or None and
        # names the option when it is neither.
        metavar = f"{'INTEGER' if base is int else 'FLOAT'}|none"
        return click.Option([flag, name], type=str, default=None, metavar=metavar, help=help_text)
    kind_type = click.Choice(list(choices)) if choices else {int: int, float: float}.get(base, str)
    return click.Option([flag, name], type=kind_type, default=None, help=help_text)


@dataclass
class Settings:
    """What the command line gave a stage: preset, config file, ``--set`` items and options, by
    layer."""

    cls: type
    section: str
    preset: str | None = None
    file: Path | None = None
    sets: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)
    _file_cache: dict | None = field(default=None, repr=False)

    def values(self, **fixed) -> dict[str, Any]:
        """Flat settings over the preset and file, later layers winning (``fixed``: the command's
        own)."""
        return {**config.preset_values(self.cls, self.preset), **self.file_values(), **self.sets,
                **self.given, **fixed}

    def file_values(self) -> dict[str, Any]:
        """The settings the ``--config`` file gives (read once); a bad key or value names the
        file."""
        if self.file is None:
            return {}
        if self._file_cache is None:
            try:
                self._file_cache = config.read_config_file(self.file, self.cls, self.section,
                                                           STAGES)
            except ConfigError as err:
                raise InputError(f"{self.file}: {err}") from None
        return self._file_cache

    def build(self, **fixed):
        """The resolved config; a ConfigError is raised as it is, for :meth:`describe` to place."""
        return config.build(self.cls, self.values(**fixed))

    def describe(self, err: ConfigError) -> str:
        """The error's one line, naming the option, ``--set`` item, file or preset that gave the
        value."""
        # of two clashing settings, the one the user gave
        key, problem = next(((k, text) for k, text in [(err.key, err.problem), *err.others.items()]
                             if k in self.given or k in self.sets or k in self.file_values()),
                            (err.key, err.problem))
        if key in self.given:
            where = self.flags.get(key, key)
        elif key in self.sets:
            where = f"--set {key}"
        elif key in self.file_values():
            where = f"{self.file}: {key}"
        elif key == "preset":
            where = "--preset"
        elif key in config.preset_values(self.cls, self.preset):
            where = f"preset {self.preset}: {key}"
        else:  # a default, or a value the stage itself resolved: the option that would change it
            where = self.flags.get(key, key)
        return f"{where} {problem}"


def config_options(cls: type, section: str, *, skip: tuple[str, ...] = (),
                   default_preset: str | None = None):
    """Decorator: the command gets an option per setting of ``cls`` (but ``skip``), ``--config``,
    ``--set``, ``--print-config`` and, where ``cls`` has ``PRESETS``, ``--preset``; it is called
    with ``settings`` (a :class:`Settings`) instead of those options.

    Args:
        cls: the stage's config dataclass.
        section: the key of its settings in a run's ``config.json`` (e.g. ``pretrain``).
        skip: settings the command takes another way (an argument, a fixed value).
        default_preset: the preset used when ``--preset`` is not given.
    """
    fields = {name: (f, kind) for name, (f, kind) in settable(cls).items() if name not in skip}
    # the help shows what a run without --preset gets: the default preset's value where it has one
    shown = config.preset_values(cls, default_preset)
    options = {name: _click_option(name, f, kind, shown.get(name, default_of(f)))
               for name, (f, kind) in fields.items()}
    options = {name: o for name, o in options.items() if o is not None}
    flags = {name: option_name(fields[name][0]) for name in fields}
    presets = getattr(cls, "PRESETS", None)

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, config_preset=None, config_file=None, set_items=(), print_config=False,
                    **kwargs):
            given = {}
            for name in options:
                value = kwargs.pop(name)
                if value is not None and value != ():
                    given[name] = value
            settings = Settings(cls, section,
                                config_preset if config_preset is not None else default_preset,
                                config_file, flags=flags)
            click.get_current_context().meta[CONTEXT_KEY] = settings
            try:
                settings.sets = config.parse_settings(cls, set_items)
            except ConfigError as err:
                raise InputError(f"--set {err.key} {err.problem}") from None
            settings.given = given
            if print_config:
                click.echo(json.dumps(to_jsonable(settings.build(**_fixed(kwargs, skip))), indent=2,
                                      sort_keys=True))
                return None
            return command(*args, settings=settings, **kwargs)

        extra = [
            click.Option(["--config", "config_file"], type=click.Path(path_type=Path), default=None,
                         help="A JSON file of settings; a run's own config.json works (its "
                              f"\"{section}\" part)."),
            click.Option(["--set", "set_items"], multiple=True, metavar="KEY=VALUE",
                         help="Any setting by its field name, e.g. --set "
                              f"{next(iter(fields))}=... (repeatable; wins over --config)."),
            click.Option(["--print-config"], is_flag=True,
                         help="Print the resolved settings as JSON and exit."),
        ]
        if presets:
            extra.insert(0, click.Option(
                ["--preset", "config_preset"], type=click.Choice(sorted(presets)), default=None,
                help="Named starting settings"
                     + (f"  [default: {default_preset}]" if default_preset
                        else " (default: the paper's)") + "; options given win."))
        wrapper.__click_params__ = [*getattr(command, "__click_params__", []), *reversed(extra),
                                    *reversed(list(options.values()))]
        return wrapper

    return decorate


def _fixed(kwargs: dict, skip: tuple[str, ...]) -> dict:
    """The skipped settings the command received as its own arguments (e.g. ``task``)."""
    return {k: v for k, v in kwargs.items() if k in skip}


def describe_error(ctx: click.Context, err: ConfigError) -> str:
    """One line for a ConfigError raised under ``ctx`` (the command's settings, if it has any, name
    the option or file at fault)."""
    while ctx is not None:
        settings = ctx.meta.get(CONTEXT_KEY)
        if settings is not None:
            return settings.describe(err)
        ctx = ctx.parent
    return str(err)
