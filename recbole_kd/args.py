"""The main command line's ``--key=value`` grammar, shared by ``python -m recbole_kd`` and ``tune``."""
from __future__ import annotations

from recbole_kd.errors import UsageError

# keys the CLI consumes itself (not passed to RecBole's Config)
CLI_KEYS = {"model", "dataset", "config_files", "result_file", "plugins"}


def parse_args(argv: list[str]) -> tuple[dict, dict, set]:
    """Split argv into CLI options, config overrides and flags."""
    options, overrides, flags = {}, {}, set()
    for arg in argv:
        if arg in ("-h", "--help"):
            flags.add("help")
        elif arg in ("-l", "--list"):
            flags.add("list")
        elif arg in ("--resume", "--strict"):
            overrides[arg[2:]] = True
        elif arg in ("--json", "--verbose", "-v"):
            flags.add("verbose" if arg == "-v" else arg[2:])
        elif arg.split("=", 1)[0] in ("--json", "--verbose"):
            raise UsageError(f"{arg.split('=', 1)[0]} takes no value (got {arg!r})")
        elif arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            if not key:
                raise UsageError(f"malformed argument {arg!r}; expected --key=value")
            target = options if key in CLI_KEYS else overrides
            if key in target and target[key] != value:
                raise UsageError(f"argument --{key} given twice with different values")
            target[key] = value
        else:
            raise UsageError(f"unrecognised argument {arg!r}; expected --key=value (see --help)")
    return options, overrides, flags
