"""How this process runs studies, as one object passed down: storage, checkpoints, data, threads.

Not what a study is (that is its definition, `search.config`): changing a setting never
changes a study. Settings come from a caller's arguments (the CLI's flags, the Python API's
keywords), else from the environment, read once here at a process's edge
(`Settings.from_env`), else from the defaults below. Everything under a process's entry point
takes a `Settings` and reads no environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_STORAGE = "sqlite:///runs/search.db"
DEFAULT_CHECKPOINTS = "runs"
CACHE_MODES = ("none", "memory", "disk")

# Setting -> (environment variable, how its text becomes a value).
_ENVIRONMENT: dict[str, tuple[str, Any]] = {
    "storage": ("SEARCH_STORAGE", str),
    "storage_password_file": ("SEARCH_STORAGE_PASSWORD_FILE", str),
    "heartbeat_interval": ("SEARCH_HEARTBEAT_INTERVAL", int),
    "grace_period": ("SEARCH_GRACE_PERIOD", int),
    "checkpoints": ("SEARCH_CHECKPOINTS", str),
    "keep_best": ("SEARCH_KEEP_BEST", int),
    "max_retries": ("SEARCH_MAX_RETRIES", int),
    "data_dir": ("SEARCH_DATA_DIR", str),
    "cache": ("SEARCH_CACHE", str),
    "threads": ("SEARCH_THREADS", int),
}
# The command-line flag of each setting, for messages.
_FLAGS = {name: "--" + name.replace("_", "-") for name in _ENVIRONMENT} | {
    "storage_password_file": "SEARCH_STORAGE_PASSWORD_FILE"
}


class SettingsError(ValueError):
    """A setting that breaks a rule; the message names the flag or variable and the rule."""


@dataclass(frozen=True)
class Settings:
    """A process's settings for running studies (every field has a default).

    Attributes:
        storage: the storage URL: sqlite:///PATH (one machine) or postgresql://... (many).
        storage_password_file: a file holding the database password, kept out of the URL.
        heartbeat_interval: seconds between a running trial's heartbeats.
        grace_period: seconds without a heartbeat before a running trial counts as dead
            and is retried; more than the interval.
        checkpoints: where running trials checkpoint and completed ones keep their best
            model: a folder every worker reaches, s3://BUCKET/PREFIX, or "none".
        keep_best: how many of the best completed trials keep their best-epoch model.
        max_retries: times a trial whose worker died is retried while each retry progresses.
        data_dir: the Fashion-MNIST files' folder, and the root of a relative dir:PATH.
        cache: where a dir:PATH dataset's decoded images are kept between epochs.
        threads: TensorFlow threads per worker (None: the cores divided by the workers).
        verbosity: Optuna's logging, -2 (errors only) to 1 (debug).
        runs_dir: where runs write what is theirs (worker logs, exports, reports).
    """

    storage: str = DEFAULT_STORAGE
    storage_password_file: str | None = None
    heartbeat_interval: int = 10
    grace_period: int = 60
    checkpoints: str = DEFAULT_CHECKPOINTS
    keep_best: int = 3
    max_retries: int = 3
    data_dir: str | None = None
    cache: str = "none"
    threads: int | None = None
    verbosity: int = 0
    runs_dir: Path = field(default=Path("runs"))
    # Which flag or variable gave each setting, for messages ("--grace-period" or
    # "SEARCH_GRACE_PERIOD"); not compared.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        def name(key: str) -> str:
            return self.sources.get(key, key)

        for key in ("heartbeat_interval", "grace_period"):
            _check(getattr(self, key), 1, name(key), "a whole number of seconds >= 1")
        for key in ("keep_best", "max_retries"):
            _check(getattr(self, key), 0, name(key), "a whole number >= 0")
        if self.threads is not None:
            _check(self.threads, 1, name("threads"), "a whole number >= 1")
        if self.grace_period <= self.heartbeat_interval:
            raise SettingsError(
                f"the grace period ({self.grace_period} s, {name('grace_period')}) must be"
                f" greater than the heartbeat interval ({self.heartbeat_interval} s,"
                f" {name('heartbeat_interval')})"
            )
        if self.cache not in CACHE_MODES:
            raise SettingsError(
                f"{name('cache')} is {self.cache!r}, but must be one of {', '.join(CACHE_MODES)}"
            )
        location = self.checkpoints
        if "://" in location and not location.startswith("s3://"):
            raise SettingsError(
                f"{name('checkpoints')} is {location!r}: give a folder, s3://BUCKET[/PREFIX]"
                " or none"
            )
        object.__setattr__(self, "runs_dir", Path(self.runs_dir))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> Settings:
        """Settings from `given` (None: not given), else `environ`'s SEARCH_*, else defaults.

        Raises:
            SettingsError: a value breaks its rule; the message names its flag or variable.
        """
        environ = os.environ if environ is None else environ
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key, value in given.items():
            if value is not None:
                values[key], sources[key] = value, _FLAGS.get(key, key)
        for key, (variable, parse) in _ENVIRONMENT.items():
            text = environ.get(variable)
            if key in values or not text:
                continue
            try:
                values[key] = parse(text)
            except ValueError:
                raise SettingsError(f"{variable}={text!r}: must be a whole number") from None
            sources[key] = variable
        return cls(**values, sources=sources)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (None: unchanged)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes, sources={**self.sources, **dict.fromkeys(changes, "")})

    def environment(self) -> dict[str, str]:
        """These settings as SEARCH_* variables: for processes started outside Python
        (a SLURM batch script, a container), which read them back with `from_env`."""
        env = {}
        for key, (variable, _) in _ENVIRONMENT.items():
            value = getattr(self, key)
            if value is not None and value != getattr(Settings, key, None):
                env[variable] = str(value)
        return env


def _check(value: Any, minimum: int, name: str, rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(f"{name} is {value!r}, but must be {rule}")
