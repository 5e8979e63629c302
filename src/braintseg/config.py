"""One typed configuration: YAML file + ``--set key=value`` overrides → frozen dataclasses.

Precedence: dedicated CLI flag > ``--set`` > YAML file > dataclass default.  Unknown keys and
values of the wrong type raise :class:`~braintseg.errors.ConfigError` naming the key and, for
typos, the nearest valid key.  ``configs/default.yaml`` lists every key with a comment and equals
the defaults below (a test checks this).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from braintseg.atomic import atomic_write_text
from braintseg.errors import ConfigError

View = Literal["axial", "sagittal", "coronal"]
VIEWS: tuple[str, ...] = ("axial", "sagittal", "coronal")
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
REGIONS: tuple[str, ...] = ("wt", "tc", "et")
#: the one field of ``predict.output_pattern``, substituted literally
CASE_FIELD = "{case}"
#: output keys of a model with ``model.classification_head`` (segmentation, head)
SEG_OUTPUT, HEAD_OUTPUT = "probabilities", "classification"


@dataclass(frozen=True)
class DataConfig:
    """How BraTS cases become a store (read by ``prepare`` and, for new cases, ``predict``)."""

    crop: tuple[int, int, int, int, int, int] | Literal["auto"] = (42, 194, 29, 221, 2, 146)
    n_folds: int = 5
    holdout_fraction: float = 0.0
    seed: int = 100
    normalization: Literal["zscore", "slice", "none"] = "zscore"
    clip_percentiles: tuple[float, float] = (1.0, 99.0)


@dataclass(frozen=True)
class StoreConfig:
    """PyTables store layout."""

    compression: str = "blosc:lz4"
    complevel: int = 5
    dtype: Literal["float16", "float32", "int16"] = "float16"


@dataclass(frozen=True)
class ModelConfig:
    """The network (defaults: the original attention-guided 2D U-Net)."""

    name: Literal["attention_unet", "unet"] = "attention_unet"
    levels: int = 3
    start_channels: int = 64
    norm: Literal["batch", "group", "instance"] = "batch"
    dropout: float = 0.0
    noise_stddev: float = 0.01
    output: Literal["classes", "regions", "binary"] = "classes"
    classification_head: Literal["none", "tumour", "tumour_type"] = "none"
    downsample: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, input pipeline and checkpointing (defaults: the original's settings)."""

    view: View = "axial"
    batch_size: int = 16
    epochs: int = 100
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    learning_rate: float = 0.008
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "plateau"] = "constant"
    ce_weight: float = 1.25
    loss: Literal["gdl_ce", "dice_ce"] = "gdl_ce"
    classification_weight: float = 0.1
    mixed_precision: Literal["off", "mixed_bfloat16", "mixed_float16"] = "off"
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    seed: int = 100
    flip: bool = True
    rotate_degrees: float = 0.0
    zoom: float = 0.0
    tumour_oversampling: float = 0.0
    monitor: Literal["val_dice_mean", "val_loss", "last"] = "val_dice_mean"
    bn_recalibration: int = 0
    cache: Literal["auto", "ram", "stream"] = "auto"
    cache_max_gb: float | None = None
    prefetch: int = 4
    read_processes: int | None = None
    distribution: Literal["none", "data_parallel", "auto"] = "none"


@dataclass(frozen=True)
class PredictConfig:
    """Inference and optional post-processing (off by default)."""

    batch_size: int = 32
    tta: bool = False
    min_component_size: int = 0
    et_to_ncr_threshold: int = 0
    output_pattern: str = "{case}.nii.gz"


@dataclass(frozen=True)
class Config:
    """The whole configuration; written as ``config.yaml`` next to every output."""

    data: DataConfig = field(default_factory=DataConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """Return a copy with some keys changed, e.g. ``cfg.replace(train={"epochs": 2})``."""
        raw = to_dict(self)
        for name, values in sections.items():
            if name not in raw:
                raise ConfigError(_unknown(name, list(raw), "config"))
            raw[name].update(values)
        return from_dict(raw)


# --------------------------------------------------------------------------- building


def _unknown(key: str, valid: Sequence[str], where: str) -> str:
    hint = difflib.get_close_matches(key.split(".")[-1], list(valid), n=1)
    msg = f"unknown key '{key}' in {where}"
    if hint:
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        msg += f" (did you mean '{prefix}{hint[0]}'?)"
    else:
        msg += f"; valid keys: {', '.join(valid)}"
    return msg


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        return f"list of {len(args)} {_type_name(args[0])}s"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(key, arg, value)
            except ConfigError as exc:
                errors.append((arg, exc))
        for arg, exc in errors:  # a list given for a tuple field: the tuple's message is clearest
            if get_origin(arg) is tuple and isinstance(value, (list, tuple)):
                raise exc
        raise ConfigError(f"{key} must be {_type_name(tp)}; received {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} must be null; received {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key} must be one of {_type_name(tp)}; received {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            n = len(value) if isinstance(value, (list, tuple)) else "a scalar"
            raise ConfigError(f"{key} must be {_type_name(tp)}; received {n} values: {value!r}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_coerce(f"{key}[{i}]", a, v) for i, (a, v) in pairs)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the annotations above are used
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"{key} must be {_type_name(tp)}; received {value!r}")


def _build(cls: type, raw: Mapping[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown(full, list(fields), where))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full} must be a mapping of keys; received {value!r}")
            kwargs[key] = _build(tp, value, f"{full}.", where)  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(full, tp, value)
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    """Check relations between values; raise ConfigError with what was expected."""
    d, m, t = cfg.data, cfg.model, cfg.train
    if d.crop != "auto":
        x0, x1, y0, y1, z0, z1 = d.crop
        if min(d.crop) < 0 or x1 <= x0 or y1 <= y0 or z1 <= z0:
            raise ConfigError(
                f"data.crop must be 6 ints x0,x1,y0,y1,z0,z1 with 0 <= start < stop; "
                f"received {list(d.crop)}"
            )
    if d.n_folds < 2:
        raise ConfigError(f"data.n_folds must be >= 2; received {d.n_folds}")
    if not 0.0 <= d.holdout_fraction < 1.0:
        raise ConfigError(f"data.holdout_fraction must be in [0, 1); received {d.holdout_fraction}")
    lo, hi = d.clip_percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError("data.clip_percentiles must satisfy 0 <= lo < hi <= 100; "
                          f"received {[lo, hi]}")
    if not 1 <= m.levels <= 6:
        raise ConfigError(f"model.levels must be between 1 and 6; received {m.levels}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1); received {m.dropout}")
    if m.downsample not in (1, 2, 4):
        raise ConfigError(f"model.downsample must be 1, 2 or 4; received {m.downsample!r}")
    lowest = {"model.start_channels": (m.start_channels, 1), "train.epochs": (t.epochs, 1),
              "train.batch_size": (t.batch_size, 1), "train.prefetch": (t.prefetch, 1),
              "predict.batch_size": (cfg.predict.batch_size, 1),
              "train.bn_recalibration": (t.bn_recalibration, 0),
              "train.classification_weight": (t.classification_weight, 0)}
    for key, (value, low) in lowest.items():
        if value < low:
            raise ConfigError(f"{key} must be >= {low}; received {value}")
    for key in ("steps_per_epoch", "validation_steps"):
        value = getattr(t, key)
        if value is not None and value < 1:
            raise ConfigError(f"train.{key} must be null or >= 1; received {value}")
    if t.read_processes is not None and t.read_processes < 0:
        raise ConfigError(f"train.read_processes must be null or >= 0; received "
                          f"{t.read_processes}")
    if t.cache_max_gb is not None and t.cache_max_gb <= 0:
        raise ConfigError(f"train.cache_max_gb must be null or > 0; received {t.cache_max_gb}")
    if t.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate must be > 0; received {t.learning_rate}")
    if not 0.0 <= t.tumour_oversampling <= 1.0:
        raise ConfigError("train.tumour_oversampling must be in [0, 1]; "
                          f"received {t.tumour_oversampling}")
    if t.bn_recalibration and t.distribution != "none":
        raise ConfigError("train.bn_recalibration is for one-device runs; received "
                          f"{t.bn_recalibration} with train.distribution: {t.distribution} "
                          "(set it to 0)")
    if t.schedule == "plateau" and t.monitor == "last":
        raise ConfigError("train.schedule: plateau needs a validation figure to watch; "
                          "received train.monitor: last (use val_loss or val_dice_mean)")
    if m.classification_head != "none" and m.output != "binary":
        raise ConfigError("model.classification_head needs model.output: binary (2D slice "
                          f"stores); received output {m.output!r} with head "
                          f"{m.classification_head!r}")
    check_output_pattern(cfg.predict.output_pattern)
    return cfg


def check_output_pattern(pattern: str) -> str:
    """Check ``predict.output_pattern``: ``{case}`` exactly once, no other brace, no ``/``,
    ending in ``.nii.gz`` or ``.nii``.  The pattern is never given to ``str.format``.

    Raises:
        ConfigError: naming the key and the received pattern.
    """
    rest = pattern.replace(CASE_FIELD, "")
    if (pattern.count(CASE_FIELD) != 1 or "{" in rest or "}" in rest or "/" in pattern
            or "\\" in pattern or not pattern.endswith((".nii.gz", ".nii"))):
        raise ConfigError(
            "predict.output_pattern must contain '{case}' once and no other field or brace, "
            f"no '/', and end in .nii.gz or .nii; received {pattern!r}"
        )
    return pattern


def output_name(pattern: str, case_id: str) -> str:
    """The file name for ``case_id``: ``{case}`` in ``pattern`` replaced literally."""
    return pattern.replace(CASE_FIELD, case_id)


def from_dict(raw: Mapping[str, Any], where: str = "config") -> Config:
    """Build and validate a Config from nested dicts (as read from YAML)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of sections; received {type(raw).__name__}")
    return validate(_build(Config, raw, "", where))


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dicts/lists (YAML-safe) for a Config or one of its sections."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _set_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=1); received {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    sections = [f.name for f in dataclasses.fields(Config)]
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(
            _unknown(parts[0], sections, f"--set {key}") if parts[0] not in sections
            else f"--set key must be SECTION.KEY (e.g. train.epochs); received {key!r}"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:  # e.g. '{case}_seg.nii.gz': the text as typed, then type-checked
        value = text
    raw.setdefault(parts[0], {})
    if not isinstance(raw[parts[0]], dict):
        raise ConfigError(f"section '{parts[0]}' must be a mapping")
    raw[parts[0]][parts[1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections; received {type(raw).__name__}")
    return raw


def load_config(
    path: Path | None = None,
    overrides: Sequence[str] = (),
    base: Config | None = None,
) -> Config:
    """YAML file (optional) → ``--set`` overrides → validated frozen Config.

    Args:
        path: a YAML file with any subset of the sections/keys of ``configs/default.yaml``.
        overrides: strings ``"section.key=value"``; values are parsed with ``yaml.safe_load``.
        base: start from this config instead of the defaults (e.g. a run's saved config).

    Raises:
        ConfigError: unknown key (with a did-you-mean hint), wrong type, invalid value.
    """
    raw = to_dict(base) if base is not None else {}
    where = str(path) if path is not None else "config"
    if path is not None:
        for section, values in read_yaml(path).items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section].update(values)
            else:
                raw[section] = values
    for item in overrides:
        _set_override(raw, item)
        where = f"{where} / --set" if "--set" not in where else where
    return from_dict(raw, where)


def dump_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically: temporary name, then rename)."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
