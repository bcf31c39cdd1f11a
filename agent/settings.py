"""Settings: flags with ``PODLB_*`` environment defaults, validated once.

This is the only module that reads ``os.environ``. Each flag's environment variable is its
long name upper-cased with ``PODLB_`` in front (``--proc-root`` -> ``PODLB_PROC_ROOT``); a
repeatable flag takes a comma-separated list from the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "PODLB_"


class SettingError(ValueError):
    """An invalid setting: names the setting, the value and where it came from."""

    def __init__(self, flag: str, value: object, source: str, problem: str) -> None:
        super().__init__(f"invalid {flag}={value!r} (from {source}): {problem}")
        self.flag = flag


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class EnvDefaults:
    """Fills argparse defaults from the environment and remembers where each value came from."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.from_env: set[str] = set()

    def add(
        self,
        parser: argparse.ArgumentParser,
        flag: str,
        *,
        default: Any = None,
        repeatable: bool = False,
        help: str,
        **kwargs: Any,
    ) -> None:
        name = env_name(flag)
        dest = flag.lstrip("-").replace("-", "_")
        value: Any = default
        if name in self.environ:
            raw = self.environ[name]
            value = [v for v in raw.split(",") if v] if repeatable else raw
            self.from_env.add(dest)
        if repeatable:
            kwargs.setdefault("action", "append")
            # argparse appends to the default list: start from None and fill in later.
            parser.set_defaults(**{f"_default_{dest}": value})
            value = None
        parser.add_argument(flag, default=value, help=f"{help} [env {name}]", **kwargs)

    def source(self, dest: str) -> str:
        return (
            f"environment {env_name(dest)}"
            if dest in self.from_env
            else f"flag --{dest.replace('_', '-')}"
        )


def finish_repeatables(args: argparse.Namespace) -> None:
    """Replace ``None`` of repeatable flags given nowhere by their (env or built-in) default."""
    for key, value in list(vars(args).items()):
        if key.startswith("_default_"):
            dest = key[len("_default_") :]
            if getattr(args, dest, None) is None:
                setattr(args, dest, value)
            delattr(args, key)
