"""absl flags of the entry points: each entry point's own ``FlagValues`` (``flag_values``, with
``--verbose``), the ``--config`` file flag, ``--help``, and a flags parser that turns every parse
failure (unknown or mistyped flag or ``--config.KEY``, missing or broken config file, missing
required flag, stray argument) into one line.

Each entry point registers its flags in a ``FlagValues`` of its own rather than absl's global
``FLAGS``: the flags of different entry points share names (``--workdir``, ``--out``) with
different meanings, and the test suite imports several entry points into one process, where
absl's global registry would refuse the second definition.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

from imixer_jax.cli import errors

CONFIG_FLAG = "config"
HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-?", "--helpfull")
_OVERRIDE = re.compile(r"^--?(config(?:\.[^=\s]+)+)(?:=.*)?$")
_REQUIRED = re.compile(r"Flag --(\S+) must have a value other than None")
_HINT = re.compile(r'Did you mean "([^"]+)"')


def flag_values() -> flags.FlagValues:
    """A new ``FlagValues`` for one entry point's flags (``flags.DEFINE_*(...,
    flag_values=...)``), holding the shared ``--verbose``."""
    values = flags.FlagValues()
    flags.DEFINE_bool(
        "verbose",
        False,
        f"On an error, show the traceback and every library's log lines ({errors.VERBOSE_ENV}=1).",
        flag_values=values,
    )
    return values


def define_config(
    help_text: str, values: flags.FlagValues, *, required: bool = True
) -> flags.FlagHolder:
    """The ``--config FILE[:ARG]`` flag (locked ``ConfigDict``, ``--config.KEY=VALUE``
    overrides) in ``values``."""
    from ml_collections import config_flags  # here: commands without --config run without it

    holder = config_flags.DEFINE_config_file(
        CONFIG_FLAG, None, help_text, flag_values=values, lock_config=True
    )
    if required:
        flags.mark_flag_as_required(CONFIG_FLAG, flag_values=values)
    return holder


def help_text(values: flags.FlagValues, doc: str | None) -> str:
    """What ``--help`` prints: the entry point's docstring and its own flags (absl's logging
    flags, also accepted, are left out)."""
    own = flags.FlagValues()
    for name in values:
        flag = values[name]
        if name == flag.name and name not in flags.FLAGS and not name.startswith("config."):
            own[name] = flag
    listing = own.get_help(include_special_flags=False)
    return f"{(doc or '').strip()}\n\nflags:\n{listing}\n"


def _unknown_key_line(error: BaseException, argv: Sequence[str]) -> str:
    """ml_collections raises ``KeyError("'key'\\nDid you mean \\"other\\" ...")``, for a nested
    key wrapped in an ``AttributeError``, for an override of a key the config does not have."""
    candidates = (error, *error.args, error.__cause__, error.__context__)
    key_error = next((e for e in candidates if isinstance(e, KeyError)), error)
    message = str(key_error.args[0]) if key_error.args else str(key_error)
    match = re.match(r"\s*'([^']*)'", message)
    missing = match.group(1) if match else message.split()[0].strip("'\"")
    hint = _HINT.search(message)
    for arg in argv:
        override = _OVERRIDE.match(arg)
        if override and missing in override.group(1).split("."):
            path = override.group(1)
            line = f"unknown config key {path} (from {arg})"
            if hint:
                parts = path.split(".")
                parts[len(parts) - 1 - parts[::-1].index(missing)] = hint.group(1)
                return f"{line}; did you mean {'.'.join(parts)}?"
            return f"{line}; check the key against the config file"
    fix = f"did you mean {hint.group(1)!r}?" if hint else "check the key against the config file"
    return f"unknown config key {missing!r}; {fix}"


def _config_file_frame(error: BaseException) -> str:
    """``file:line`` of the innermost frame of ``error`` (where a config file raised)."""
    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "the config file"


def _config_path(argv: Sequence[str]) -> str:
    """The file of ``--config FILE[:ARG]`` in ``argv`` (as typed)."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1].split(":")[0]
        match = re.match(r"^--?config=([^:]*)", arg)
        if match:
            return match.group(1)
    return "the config file"


def flag_error_line(error: BaseException, argv: Sequence[str]) -> str:
    """One line ``<cause>; <fix>`` for a failed parse of ``argv``."""
    if isinstance(error, AttributeError) and str(error).endswith("no attribute 'get_config'"):
        return (
            f"config file {_config_path(argv)} defines no get_config(); define "
            "get_config() returning a ConfigDict, as configs/default.py does"
        )
    if isinstance(error, KeyError | AttributeError):
        return _unknown_key_line(error, argv)
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}: {error.msg}; fix the config file's syntax"
    if isinstance(error, OSError):  # config_flags: a config file that cannot be read
        attempted = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)\s*(.*)", str(error), re.S)
        if attempted:
            reason = errors.squash(attempted.group(2)).split("] ", 1)[-1]
            return (
                f"cannot load config file {attempted.group(1)} ({reason}); pass the path of a "
                "config file such as configs/default.py (relative to the current directory)"
            )
        return f"cannot load the config file: {errors.squash(str(error))}"
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):  # config file raised: last line
        return f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}"
    required = _REQUIRED.search(text)
    if required:
        return f"--{required.group(1)} is required; see --help"
    if isinstance(error, flags.Error):
        unknown = re.match(r"Unknown command line flag '(config\.\S+)'", text)
        if unknown and not any(re.match(r"--?config(=|$)", a) for a in argv):
            return f"--{unknown.group(1)} overrides a key of the config file; pass --config FILE"
        return f"{errors.squash(text).rstrip('.')}; see --help"
    # A config file raised something else (NameError, ImportError, ...).
    return (
        f"config file failed at {_config_file_frame(error)}: {type(error).__name__}: "
        f"{errors.squash(text)}"
    )


def _load_config_file(values: flags.FlagValues) -> None:
    """ml_collections keeps a config file's load error (missing file, ...) until the config is
    first used: use it here, so that the error surfaces while parsing."""
    if CONFIG_FLAG in values and values[CONFIG_FLAG].value is not None:
        getattr(values[CONFIG_FLAG].value, "lock", None)


def _exit(line: str) -> NoReturn:
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(values: flags.FlagValues, argv: list[str]) -> list[str]:
    """Parse ``argv`` into ``values`` (and absl's own flags, such as ``--verbosity``, which
    ``values`` takes over from absl's global ``FLAGS``): a bad flag, config file or
    ``--config.KEY`` override, or a stray positional argument exits (status 1) with one line on
    stderr. Every flag absent from ``argv`` gets its default, also when parsed before."""
    for name in flags.FLAGS:
        if name not in values and name == flags.FLAGS[name].name:
            values[name] = flags.FLAGS[name]
    values.unparse_flags()
    try:
        rest = values(argv)
        _load_config_file(values)
    except Exception as e:  # a config file runs arbitrary code: anything can come out of it
        if errors.verbose_requested(argv):
            raise
        _exit(flag_error_line(e, argv))
    if len(rest) > 1:
        _exit(
            f"unexpected argument(s) {' '.join(rest[1:])}; "
            "flags take the form --name=value (see --help)"
        )
    flags.FLAGS.mark_as_parsed()  # absl's logging reads its flags (shared with ``values``)
    return rest
