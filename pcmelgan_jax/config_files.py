"""Config files (``PATH[:VARIANTS]``) and their ``--config.FIELD=VALUE`` overrides.

Every command reads configs here: ``train.py`` / ``eval.py`` (ml_collections' config flags,
through ``absl_flags_parser``) and ``pcmelgan-jax train|eval|sweep|quickstart|baselines``.
A config path that does not exist relative to the current directory but names a file of the
package's configs (``configs/pcmelgan.py``) is read from the package, so the commands work
from any folder and from an installed package. An unknown field, a bad value or a missing
file is a ``ConfigError`` with a one-line message naming the field and the config file.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

OVERRIDE_PREFIX = "--config."


class ConfigError(ValueError):
    """A config file, variant, field or value that cannot be used; the message is one line."""


def package_configs_dir() -> str:
    """The folder of ``pcmelgan_jax.configs`` (the repository's ``configs/``)."""
    from pcmelgan_jax import configs

    return os.path.dirname(os.path.abspath(configs.__file__))


def resolve_config_file(path: str | os.PathLike) -> str:
    """``path`` as an absolute path: as given when it exists, else the package's copy of a
    relative ``configs/...`` (or bare ``pcmelgan.py``) path. ConfigError when neither exists."""
    given = os.path.expanduser(os.fspath(path))
    if os.path.isfile(given):
        return os.path.abspath(given)
    relative = os.path.normpath(given)
    if not os.path.isabs(relative):
        if relative.split(os.sep, 1)[0] == "configs":
            relative = relative.split(os.sep, 1)[-1]
        packaged = os.path.join(package_configs_dir(), relative)
        if os.path.isfile(packaged):
            return packaged
    raise ConfigError(f"config file {os.fspath(path)!r} not found")


def load_config(spec: str | os.PathLike) -> Any:
    """``get_config(VARIANTS)`` (or ``get_config()``) of the file in ``PATH[:VARIANTS]``."""
    path, _, variants = os.fspath(spec).partition(":")
    file = resolve_config_file(path)
    module_spec = importlib.util.spec_from_file_location(
        f"_pcmelgan_config_{abs(hash(file))}", file)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{file}: cannot be imported as a Python config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{file}: has no get_config() function")
    try:
        return module.get_config(variants) if variants else module.get_config()
    except ValueError as e:
        raise ConfigError(f"{os.fspath(spec)}: {e}") from None


def parse_value(config: Any, field: str, text: str) -> Any:
    """``text`` as ``--config.FIELD=text`` gives it: by the field's type (bool, int, float,
    str, tuple), anything else as a Python literal (or the text itself)."""
    from absl import flags
    from ml_collections.config_flags import config_path, tuple_parser

    kind = config_path.get_type(field, config)
    parsers: dict[type, Any] = {
        bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
        tuple: tuple_parser.TupleParser(),
    }
    if kind is str:
        return text
    if kind in parsers:
        return parsers[kind].parse(text)
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def override(config: Any, field: str, value: Any, source: str, where: str = "") -> None:
    """``config.FIELD = value`` type-checked (a str is parsed by the field's type); a
    ConfigError names ``where`` (what set it), the field and ``source`` (the config file)."""
    from ml_collections.config_flags import config_path

    prefix = f"{where}: " if where else ""
    try:
        config_path.get_value(field, config)
        if isinstance(value, str):
            value = parse_value(config, field, value)
        config_path.set_value(field, config, value)
    except (KeyError, AttributeError):
        raise ConfigError(f"{prefix}{field!r} is not a field of {source}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix}{field}={value!r}: {e} ({source})") from None


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["--config.a.b=1", ...]`` as ``{"a.b": "1"}``; ConfigError for anything else."""
    out: dict[str, str] = {}
    for arg in args:
        field, sep, text = arg.removeprefix(OVERRIDE_PREFIX).partition("=")
        if not arg.startswith(OVERRIDE_PREFIX) or not sep or not field:
            raise ConfigError(f"{arg!r}: expected --config.FIELD=VALUE")
        out[field] = text
    return out


def apply_overrides(config: Any, args: Sequence[str], source: str) -> Any:
    """``config`` with the ``--config.FIELD=VALUE`` arguments ``args`` applied."""
    for field, text in parse_overrides(args).items():
        override(config, field, text, source, f"{OVERRIDE_PREFIX}{field}")
    return config


def _config_arg(argv: Sequence[str]) -> tuple[int, str] | None:
    """(index, PATH[:VARIANTS]) of the last ``--config`` value in ``argv``; None if absent."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            found = (i + 1, argv[i + 1])
        elif arg.startswith("--config="):
            found = (i, arg.removeprefix("--config="))
    return found


def _resolved_argv(argv: Sequence[str], default_config: str | None) -> list[str]:
    """``argv`` with ``--config`` resolved (see ``resolve_config_file``), the default added
    when absent. ConfigError when the file does not exist."""
    out = list(argv)
    found = _config_arg(out)
    if found is None:
        if default_config is None:
            return out
        out.insert(1, f"--config={default_config}")
        found = (1, default_config)
    index, spec = found
    path, colon, variants = spec.partition(":")
    spec = resolve_config_file(path) + colon + variants
    out[index] = f"--config={spec}" if out[index].startswith("--config=") else spec
    return out


def _diagnose(argv: Sequence[str], error: Exception) -> str:
    """A one-line message for a flag-parsing failure: the offending variant or field when
    the config or an override caused it (re-applied here), else the error's first line."""
    found = _config_arg(argv)
    try:
        if found is not None:
            overrides = [a for a in argv if a.startswith(OVERRIDE_PREFIX)]
            apply_overrides(load_config(found[1]), overrides, found[1])
    except ConfigError as e:
        return str(e)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def absl_flags_parser(
    program: str, default_config: str | None = None
) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``absl.app.run``: resolves ``--config`` (``default_config`` when
    absent; config_flags' own default would be parsed before this could catch its errors)
    and turns any parsing error (unknown field, bad value, missing file or flag) into one
    line and exit code 2."""

    def parse(argv: list[str]) -> list[str]:
        from absl import flags

        try:
            argv = _resolved_argv(argv, default_config)
            return flags.FLAGS(argv)
        except Exception as e:  # config_flags raises KeyError, AttributeError, flags.Error ...
            message = str(e) if isinstance(e, ConfigError) else _diagnose(argv, e)
            print(f"{program}: error: {message}", file=sys.stderr)
            sys.exit(2)

    return parse
