"""Study definitions: a TOML file validated once into a StudyConfig.

Every rule a key must follow lives in `_SCHEMA`; an error names the file, the key and the
rule, and is raised before anything touches a storage.
"""

from __future__ import annotations

import json
import math
import sys
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "successive_halving", "median", "none")
COLOR_MODES = ("grayscale", "rgb")
# Keys of [data] that only an image-folder dataset (dir:PATH) takes, and must take.
FOLDER_KEYS = ("image_size", "color_mode")


class ConfigError(ValueError):
    """A study definition that breaks a rule; the message names the file and key."""


@dataclass(frozen=True)
class StudySection:
    name: str
    space: str
    seed: int = 0
    metric: str = "val_accuracy"


@dataclass(frozen=True)
class DataSection:
    dataset: str = "fashion_mnist"
    validation_split: float = 0.2
    split_seed: int = 0
    train_subset: int | None = None
    validation_subset: int | None = None
    # dir:PATH only: every image is resized to (height, width) and converted to this mode.
    image_size: tuple[int, int] | None = None
    color_mode: str | None = None


@dataclass(frozen=True)
class TrialsSection:
    n_trials: int
    max_epochs: int
    timeout_minutes: float | None = None
    # A trial's wall-clock budget: after its first epoch it plans as many epochs as fit
    # (max_epochs at most), and its learning-rate schedule ends with them (`search.pacing`).
    trial_minutes: float | None = None
    # An epoch projected to cost more than this many times the study's typical epoch ends
    # its trial as pruned, "too costly", within seconds (`search.pacing`).
    max_epoch_ratio: float = 8.0
    sampler: str = "tpe"
    pruner: str = "successive_halving"
    # The epochs of successive halving's first rung (None: max_epochs / 9 rounded up, so
    # its rungs at 1x and 3x fall within the epochs and the finalists train on unjudged).
    min_epochs: int | None = None
    # Start from the space's prior (its centre first, then prior samples and mutations
    # mixed with the sampler): `search.prior`.
    prior: bool = True
    # Configs with more parameters than this are pruned before they train.
    max_params: int | None = None
    enqueue_baselines: bool = False


@dataclass(frozen=True)
class StudyConfig:
    """A validated study definition."""

    study: StudySection
    data: DataSection
    trials: TrialsSection
    # Fixed settings of the space (its OPTIONS), not searched: e.g. pretrained weights.
    space: dict[str, Any] = field(default_factory=dict)
    # Centres that replace the space's prior ones, by param name (`search.prior`).
    prior: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def direction(self) -> str:
        return METRICS[self.study.metric]

    def to_dict(self) -> dict[str, Any]:
        """The definition as plain JSON data (what the study records in its attributes).

        JSON has no tuples: `image_size` is a list here, as a storage gives it back.
        """
        return json.loads(json.dumps(asdict(self)))

    def with_budget(
        self, *, n_trials: int | None = None, timeout_minutes: float | None = None
    ) -> StudyConfig:
        """A copy with the budget overridden from the command line."""
        trials = asdict(self.trials)
        if n_trials is not None:
            trials["n_trials"] = n_trials
        if timeout_minutes is not None:
            trials["timeout_minutes"] = timeout_minutes
        return from_dict({**self.to_dict(), "trials": trials}, source="the command line")

    def space_config(self, space: Any, suggested: dict[str, Any]) -> dict[str, Any]:
        """A suggested config with the space's fixed OPTIONS (study values over defaults)."""
        return {**suggested, **getattr(space, "OPTIONS", {}), **self.space}


def check_space_options(config: StudyConfig, space: Any, *, source: str) -> None:
    """Every [space] key must be one of the space's OPTIONS."""
    allowed = getattr(space, "OPTIONS", {})
    for key in config.space:
        if key not in allowed:
            raise ConfigError(
                f"{source}: unknown key [space] {key}; space {config.study.space!r} takes"
                f" {', '.join(allowed) or 'no options'}"
            )


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _above_one(v: float) -> str | None:
    return None if v > 1 else "must be > 1"


def _one_of(*choices: str):
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"

    return check


def _name(v: str) -> str | None:
    return None if v.strip() and v == v.strip() else "must be a non-empty name without edge spaces"


def _fraction(v: float) -> str | None:
    return None if 0 < v < 1 else "must be between 0 and 1 (exclusive)"


def _at_least(n: int):
    return lambda v: None if v >= n else f"must be >= {n}"


def _image_size(v: list) -> str | None:
    ok = len(v) == 2 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v)
    return None if ok else "must be [height, width], two integers >= 1"


# section -> key -> (type, rule); types say what TOML value is accepted.
_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "study": {
        "name": (str, _name),
        "space": (str, _name),
        "seed": (int, _at_least(0)),
        "metric": (str, _one_of(*METRICS)),
    },
    "data": {
        "dataset": (str, _name),
        "validation_split": (float, _fraction),
        "split_seed": (int, _at_least(0)),
        "train_subset": (int, _at_least(1)),
        "validation_subset": (int, _at_least(1)),
        "image_size": (list, _image_size),
        "color_mode": (str, _one_of(*COLOR_MODES)),
    },
    "trials": {
        "n_trials": (int, _at_least(1)),
        "max_epochs": (int, _at_least(1)),
        "timeout_minutes": (float, _positive),
        "trial_minutes": (float, _positive),
        "max_epoch_ratio": (float, _above_one),
        "sampler": (str, _one_of(*SAMPLERS)),
        "pruner": (str, _one_of(*PRUNERS)),
        "min_epochs": (int, _at_least(1)),
        "prior": (bool, None),
        "max_params": (int, _at_least(1)),
        "enqueue_baselines": (bool, None),
    },
}
_SECTIONS = {"study": StudySection, "data": DataSection, "trials": TrialsSection}


def section_of(key: str) -> str | None:
    """The table of [study], [data] and [trials] a key belongs to (None: none of them)."""
    return next((section for section, table in _SCHEMA.items() if key in table), None)


def table_keys() -> list[str]:
    """Every key of [study], [data] and [trials], in the order docs/studies.md lists them."""
    return [key for table in _SCHEMA.values() for key in table]


# What a definition stored before a key existed meant by its absence: studies created
# before priors ran without one, and their pruners' first rung was one epoch.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {"trials": {"prior": False, "min_epochs": 1}}


# Keys that moved out of the study definition, and where to: how a worker runs is not part
# of what the study is, so changing them never makes a study "changed".
MOVED_KEYS: dict[tuple[str, str], str] = {
    ("trials", "heartbeat_interval"): "the storage option --heartbeat-interval"
    " (or SEARCH_HEARTBEAT_INTERVAL)",
    ("trials", "grace_period"): "the storage option --grace-period (or SEARCH_GRACE_PERIOD)",
}


def with_legacy_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored definition with the keys it predates filled in as it ran, and moved keys gone."""
    filled = {section: dict(table) for section, table in stored.items()}
    for section, key in MOVED_KEYS:
        if isinstance(filled.get(section), dict):
            filled[section].pop(key, None)
    for section, defaults in LEGACY_DEFAULTS.items():
        filled.setdefault(section, {})
        for key, value in defaults.items():
            filled[section].setdefault(key, value)
    return filled


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML file.

    Raises:
        ConfigError: the file is missing, not TOML, or a key breaks a rule.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return from_dict(raw, source=str(path))


def from_dict(raw: dict[str, Any], *, source: str) -> StudyConfig:
    """Validate a definition given as plain data (a parsed TOML file or a stored one)."""
    unknown = sorted(set(raw) - set(_SCHEMA) - {"space", "prior"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown section [{unknown[0]}]; sections are"
            f" {', '.join(_SCHEMA)}, space and prior"
        )
    space_options = raw.get("space", {})
    if not isinstance(space_options, dict):
        raise ConfigError(f"{source}: [space] must be a table of the space's OPTIONS")
    prior = raw.get("prior", {})
    if not isinstance(prior, dict):
        raise ConfigError(f"{source}: [prior] must be a table of param centres")
    sections = {}
    for section, cls in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        sections[section] = cls(**_validate_table(source, section, table, cls))
    trials = sections["trials"]
    if trials.min_epochs is None:
        trials = replace(trials, min_epochs=math.ceil(trials.max_epochs / 9))
        sections["trials"] = trials
    if trials.min_epochs > trials.max_epochs:
        raise ConfigError(
            f"{source}: [trials] min_epochs is {trials.min_epochs}, but must be <= max_epochs"
            f" ({trials.max_epochs})"
        )
    if prior and not trials.prior:
        raise ConfigError(f"{source}: a [prior] table, but [trials] prior = false")
    config = StudyConfig(**sections, space=dict(space_options), prior=dict(prior))
    if config.data.train_subset is not None and config.data.train_subset < 10:
        raise ConfigError(f"{source}: [data] train_subset is too small to stratify; use >= 10")
    _check_folder_keys(config.data, source)
    return config


def _check_folder_keys(data: DataSection, source: str) -> None:
    """image_size and color_mode: required for a dir:PATH dataset, refused for any other."""
    folder = data.dataset.startswith("dir:")
    for key in FOLDER_KEYS:
        given = getattr(data, key) is not None
        if folder and not given:
            raise ConfigError(f"{source}: [data] {key} is required for a dir:PATH dataset")
        if given and not folder:
            raise ConfigError(
                f"{source}: [data] {key} is only for dir:PATH datasets; {data.dataset!r}"
                " images keep their own size and channels"
            )


def _validate_table(source: str, section: str, table: dict[str, Any], cls: type) -> dict[str, Any]:
    schema = _SCHEMA[section]
    table = dict(table)
    for key in [k for k in table if (section, k) in MOVED_KEYS]:
        # A study file written before the key moved still runs; the user learns where it went.
        del table[key]
        print(
            f"{source}: [{section}] {key} is ignored, no longer a study setting; use"
            f" {MOVED_KEYS[section, key]}",
            file=sys.stderr,
        )
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key [{section}] {unknown[0]}; allowed keys: {', '.join(schema)}"
        )
    required = [f.name for f in fields(cls) if f.default is MISSING]
    missing = [key for key in required if key not in table]
    if missing:
        raise ConfigError(f"{source}: [{section}] {missing[0]} is required")
    values = {}
    for key, value in table.items():
        if value is None:
            continue
        expected, rule = schema[key]
        # TOML integers are fine where a float is expected; bools are not numbers here.
        ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(
                f"{source}: [{section}] {key} is {value!r}, but must be {expected.__name__}"
            )
        problem = rule(value) if rule else None
        if problem:
            raise ConfigError(f"{source}: [{section}] {key} is {value!r}, but {problem}")
        # Arrays (image_size) are kept as tuples: a section stays hashable.
        values[key] = tuple(value) if isinstance(value, list) else value
    return values
