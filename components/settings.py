"""One typed, frozen settings tree mirroring ``params.yaml``.

Precedence (highest first): ``--set key=value`` overrides, ``ASKD_`` environment variables
(nested with ``__``, e.g. ``ASKD_PREPARE__MAX_DURATION_S=20``), the selected profile's overrides
(``profiles.<profile>``), then the sections of ``params.yaml``. ``--set profiles.<profile>.<key>=value`` edits
the profile itself before it is applied.

Only ``params.yaml`` is visible to DVC: values set through the environment or ``--set`` change a run
but not ``dvc.lock``. Use ``dvc exp run -S key=value`` for tracked experiments.

Nothing here does I/O at import time; :func:`load_settings` reads the file when called.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from components.sections import (  # noqa: F401  (re-exported: the tree's section classes)
    AskdSchedule,
    EvalSettings,
    GateSettings,
    LabelSettings,
    OptimSettings,
    PrepareSettings,
    RealSpeechSettings,
    RegistrySettings,
    ServeSettings,
    StudentSettings,
    SynthSettings,
    TeacherSettings,
    TrainSettings,
)

DEFAULT_PARAMS_FILE = Path("params.yaml")
ENV_PREFIX = "ASKD_"
# Every profile lists every one of these sections ({} = no change): each DVC stage tracks only its own
# section of the selected profile (``profiles.${profile}.<section>`` in dvc.yaml), so changing the `full`
# profile's training overrides reruns `train`, not the hours of synthesis and labelling before it.
PROFILE_SECTIONS = ("teacher", "synth", "real_speech", "prepare", "label", "train", "evaluate", "gate", "registry")


class SettingsError(ValueError):
    """Invalid configuration; ``str(err)`` is one line per problem, each naming the key."""


class Settings(BaseSettings):
    """The whole pipeline's settings; mirrors ``params.yaml`` section by section."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )

    profile: str = "quick"
    profiles: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    teacher: TeacherSettings = TeacherSettings()
    synth: SynthSettings = SynthSettings()
    real_speech: RealSpeechSettings = RealSpeechSettings()
    prepare: PrepareSettings = PrepareSettings()
    label: LabelSettings = LabelSettings()
    train: TrainSettings = TrainSettings()
    evaluate: EvalSettings = EvalSettings()
    gate: GateSettings = GateSettings()
    registry: RegistrySettings = RegistrySettings()
    serve: ServeSettings = ServeSettings()
    presets: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# loading


class _DictSource(PydanticBaseSettingsSource):
    """A settings source that returns an already-merged dict (params.yaml + profile)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, required by ABC
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``update`` merged in recursively (neither argument is modified)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["train.lr=3e-4", "profile=full"]`` into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError(f"invalid override '{pair}': expected key=value, e.g. prepare.seed=1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"invalid override '{pair}': '{part}' is not a section")
        node[parts[-1]] = value
    return nested


def _read_params(params_file: Path) -> dict[str, Any]:
    if not params_file.is_file():
        raise SettingsError(f"params file '{params_file}' not found (run from the project root or pass --params)")
    try:
        data = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SettingsError(f"params file '{params_file}' is not valid YAML: {err}".replace("\n", " ")) from err
    if not isinstance(data, dict):
        raise SettingsError(f"params file '{params_file}' must hold a mapping of sections")
    return data


def _format_error(err: dict[str, Any], root: type[BaseModel]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, err["loc"][:-1])
        return f"unknown setting '{key}' (allowed keys here: {', '.join(allowed)})"
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):
        return f"invalid setting '{key}': {msg}"
    return f"invalid setting '{key}' = {value!r}: {msg}"


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _check_profiles(profiles: dict[str, Any]) -> None:
    """Each profile is a mapping that names every section of :data:`PROFILE_SECTIONS` (DVC needs the keys)."""
    problems = []
    for name, body in profiles.items():
        if not isinstance(body, dict):
            problems.append(f"invalid setting 'profiles.{name}': a profile is a mapping of sections")
            continue
        missing = [sec for sec in PROFILE_SECTIONS if sec not in body]
        if missing:
            problems.append(
                f"invalid setting 'profiles.{name}': missing section(s) {', '.join(missing)} "
                f"(write `{missing[0]}: {{}}` for no change; dvc.yaml tracks profiles.<profile>.<section>)"
            )
        problems += [f"unknown setting 'profiles.{name}.{sec}' (allowed keys here: {', '.join(PROFILE_SECTIONS)})"
                     for sec in body if sec not in PROFILE_SECTIONS]
    if problems:
        raise SettingsError("\n".join(problems))


def _apply_preset(params: dict[str, Any], cli: dict[str, Any]) -> dict[str, Any]:
    """Merge ``presets[train.preset]`` (a named training recipe) over the sections it names."""
    presets = params.get("presets") or {}
    name = (cli.get("train") or {}).get("preset") or os.environ.get(f"{ENV_PREFIX}TRAIN__PRESET")
    name = name or (params.get("train") or {}).get("preset", "askd")
    if not presets:
        return params
    if name not in presets:
        raise SettingsError(f"invalid setting 'train.preset' = {name!r}: unknown preset (allowed: {', '.join(presets)})")
    return deep_merge(params, presets[name] or {})


def load_settings(
    params_file: str | Path = DEFAULT_PARAMS_FILE,
    overrides: list[str] | tuple[str, ...] = (),
) -> Settings:
    """Read ``params_file``, apply the profile, environment and ``overrides``; validate everything.

    Raises :class:`SettingsError` (one line per problem) before any work is done.
    """
    params = _read_params(Path(params_file))
    cli = parse_overrides(overrides)
    profile = cli.get("profile") or os.environ.get(f"{ENV_PREFIX}PROFILE") or params.get("profile", "quick")
    profiles = params.get("profiles") or {}
    if isinstance(profiles, dict) and isinstance(cli.get("profiles"), dict):  # `--set profiles.full.x=1` edits the
        profiles = deep_merge(profiles, cli.pop("profiles"))                  # profile before it is applied
        params = {**params, "profiles": profiles}
    if isinstance(profiles, dict) and profiles:
        _check_profiles(profiles)
        if profile not in profiles:
            raise SettingsError(
                f"invalid setting 'profile' = {profile!r}: unknown profile (allowed: {', '.join(profiles)})"
            )
        params = deep_merge(params, profiles[profile] or {})
    params = _apply_preset(params, cli)

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
            return (init_settings, env_settings, _DictSource(settings_cls, params))

    try:
        return _Loaded(**cli)
    except ValidationError as err:
        lines = [_format_error(e, Settings) for e in err.errors(include_url=False)]
        raise SettingsError("\n".join(lines)) from None


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    """JSON-ready dict of the resolved settings (paths as strings)."""
    return settings.model_dump(mode="json")
