"""What an engine set's manifest records about its build, read and checked in one place.

The runtime reads only what running needs (files, sizes, vote, preprocessing). The rest is the
trains side's record: each stream's backbone configs and checkpoint, the LoRA settings, the seed
of random weights, the tool versions and the calibration images. ``verify`` and ``bench --compare
torch`` rebuild the fp32 reference from it, so a wrong value would make them compare the engine
with another network. A manifest rewritten with a fresh digest (by hand, or by another tool)
passes the integrity check, so these fields are checked here before anything uses them: every
problem is an ``EngineSetError`` naming the field, never a traceback from inside a module build.
Plain data without torch: ``bench`` reads the backbone configs for its FLOP counts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dfd.calibration.calibset import SOURCE_PIXELS_KEY
from dfd.runtime.manifest import MANIFEST_NAME, EngineSetError, Manifest

from .configs import (STREAM_NAMES, STREAM_SPECS, ClipVisionConfig, ConfigError, DinoV2Config, LoraSettings,
                      clip_config_from, dinov2_config_from)

_SHA256 = re.compile(r"[0-9a-f]{64}")
# the random-weights seeds a build takes: torch.manual_seed's range, [-2**63, 2**64 - 1], once a
# stream adds its index
SEED_RANGE = (-2**63, 2**64 - len(STREAM_NAMES))


@dataclass(frozen=True)
class RecordedCheckpoint:
    """The checkpoint file a stream was built from: its name in the weights folder and its hash."""

    file: str
    sha256: str


@dataclass(frozen=True)
class RecordedStream:
    """How one stream was built: its backbones' configs and its checkpoint (None: random weights)."""

    dino: DinoV2Config
    clip: ClipVisionConfig | None
    checkpoint: RecordedCheckpoint | None


@dataclass(frozen=True)
class RecordedBuild:
    """The build record of an engine set, checked (see ``read_recorded_build``)."""

    streams: dict[str, RecordedStream]
    random_weights: bool
    weights_dir: Path | None  # where the checkpoints were at build time (absolute)
    seed: int
    lora: LoraSettings
    versions: dict[str, str]  # tool -> version: "torch", "dfd-export", ...
    calibrated: bool  # the set has a calibration record (an INT8 build)
    calibration_images: frozenset[str] | None  # sha256 of each calibration image's pixels; None: not recorded

    def checkpoint_folder(self, weights_dir: Path | None) -> Path | None:
        """Where the set's checkpoints are: ``weights_dir`` (they moved since the build), else the
        folder the build recorded; None for a random-weights set."""
        if self.random_weights:
            return None
        return Path(weights_dir) if weights_dir else self.weights_dir

    def checkpoint_files(self, weights_dir: Path | None) -> list[Path]:
        """The checkpoint files the fp32 reference is rebuilt from (none for a random-weights set):
        files ``verify`` and ``bench --compare torch`` read, which their reports must never
        overwrite."""
        folder = self.checkpoint_folder(weights_dir)
        if folder is None:
            return []
        return [folder / stream.checkpoint.file for stream in self.streams.values() if stream.checkpoint]


def read_recorded_build(manifest: Manifest) -> RecordedBuild:
    """The build record of ``manifest``, every field the reference is rebuilt from checked.

    Call it after ``verify_files`` (the digest): a damaged record is then one a tool wrote, and
    the remedy is a rebuild with this dfd-export."""
    raw, where = manifest.raw, str(manifest.root / MANIFEST_NAME)
    build = _field(raw, "build", dict, where)
    weights_dir = _field(build, "weights_dir", (str, type(None)), where, "build.")
    streams = {name: _recorded_stream(name, raw["streams"][name], where) for name in manifest.streams}
    with_checkpoint = [name for name, stream in streams.items() if stream.checkpoint]
    if manifest.random_weights and with_checkpoint:
        raise _error(where, f"random_weights is true, yet the {', '.join(with_checkpoint)} stream(s) record a "
                            f"checkpoint")
    if not manifest.random_weights and len(with_checkpoint) < len(streams):
        without = [name for name in streams if name not in with_checkpoint]
        raise _error(where, f"random_weights is false, yet the {', '.join(without)} stream(s) record no checkpoint")
    if with_checkpoint and not weights_dir:
        raise _error(where, "the streams record checkpoints but build.weights_dir names no folder")
    versions = _field(raw, "tool_versions", dict, where)
    if not all(isinstance(v, str) for v in versions.values()):
        raise _error(where, f"tool_versions must map each tool to a version string, got {_shown(versions)}")
    calibration = raw.get("calibration")
    return RecordedBuild(
        streams=streams,
        random_weights=manifest.random_weights,
        weights_dir=Path(weights_dir) if weights_dir else None,
        seed=_seed(build, where),
        lora=_lora(build, where),
        versions=dict(versions),
        calibrated=calibration is not None,
        calibration_images=_calibration_images(calibration, where) if calibration is not None else None,
    )


def _error(where: str, problem: str) -> EngineSetError:
    return EngineSetError(f"{where}: {problem}; rebuild the engine set with this dfd-export")


def _shown(value: Any, limit: int = 80) -> str:
    """A recorded value as JSON, cut short: an error message quotes it, whatever was written there."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


_JSON_TYPES = {dict: "a JSON object", str: "a string", int: "an integer", type(None): "null"}


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, prefix: str = "") -> Any:
    if key not in data:
        raise _error(where, f"the build record has no {prefix}{key}")
    if not isinstance(data[key], kind):
        wanted = " or ".join(_JSON_TYPES[k] for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _error(where, f"{prefix}{key} must be {wanted}, got {_shown(data[key])}")
    return data[key]


def _recorded_stream(name: str, entry: dict[str, Any], where: str) -> RecordedStream:
    """A stream's configs (every field the build writes, no other) and its checkpoint."""
    prefix = f"streams.{name}."
    architecture = _field(entry, "architecture", dict, where, prefix)
    expected = {"dinov2", "clip"} if STREAM_SPECS[name].uses_clip else {"dinov2"}
    if set(architecture) != expected:
        raise _error(where, f"{prefix}architecture must hold {' and '.join(sorted(expected))}, "
                            f"got {', '.join(sorted(architecture)) or 'nothing'}")
    label = f"{prefix}architecture."
    dino = _tower_config(architecture["dinov2"], DinoV2Config, dinov2_config_from, f"{label}dinov2", where)
    clip = (_tower_config(architecture["clip"], ClipVisionConfig, clip_config_from, f"{label}clip", where)
            if "clip" in architecture else None)
    source = _field(entry, "source", dict, where, prefix)
    checkpoint = _field(source, "checkpoint", (dict, type(None)), where, f"{prefix}source.")
    return RecordedStream(dino, clip, _checkpoint(checkpoint, f"{prefix}source.checkpoint", where))


def _tower_config(record: Any, cls: type, read: Callable[[dict[str, Any], str], Any], label: str, where: str) -> Any:
    """One backbone's recorded config: exactly the fields of ``cls`` (the build writes them all, so
    one missing or unknown is another tool's record), each checked as ``read`` checks a
    ``config.json``."""
    if not isinstance(record, dict):
        raise _error(where, f"{label} must be a JSON object, got {_shown(record)}")
    known = [f.name for f in fields(cls)]
    unknown, missing = sorted(set(record) - set(known)), [key for key in known if key not in record]
    if unknown or missing:
        raise _error(where, f"{label} " + "; ".join(
            ([f"has field(s) this dfd-export does not know: {', '.join(unknown)}"] if unknown else [])
            + ([f"lacks {', '.join(missing)}"] if missing else [])))
    try:
        return read(record, f"{where}: {label}")
    except ConfigError as exc:
        raise EngineSetError(f"{exc}; rebuild the engine set with this dfd-export") from None


def _checkpoint(entry: dict[str, Any] | None, label: str, where: str) -> RecordedCheckpoint | None:
    if entry is None:
        return None
    file, sha256 = entry.get("file"), entry.get("sha256")
    if not (isinstance(file, str) and file not in ("", "..") and Path(file).name == file):
        raise _error(where, f"{label}.file must be a file name in the weights folder, got {_shown(file)}")
    if not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise _error(where, f"{label}.sha256 must be 64 lowercase hex digits, got {_shown(sha256)}")
    return RecordedCheckpoint(file, sha256)


def _seed(build: dict[str, Any], where: str) -> int:
    """The seed of random weights, in the range a build accepts."""
    seed = _field(build, "seed", int, where, "build.")
    if isinstance(seed, bool) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise _error(where, f"build.seed must be an integer torch can seed with, got {_shown(seed)}")
    return seed


def _lora(build: dict[str, Any], where: str) -> LoraSettings:
    lora = _field(build, "lora", dict, where, "build.")
    r, alpha = lora.get("r"), lora.get("alpha")
    if (set(lora) != {"r", "alpha"} or isinstance(r, bool) or not isinstance(r, int) or r < 1
            or isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha)
            or alpha <= 0):
        raise _error(where, f"build.lora must be {{\"r\": a positive integer, \"alpha\": a positive number}}, "
                            f"got {_shown(lora)}")
    return LoraSettings(r, float(alpha))


def _calibration_images(calibration: Any, where: str) -> frozenset[str] | None:
    """The calibration images' pixel hashes, or None for a set built before they were recorded."""
    if not isinstance(calibration, dict):
        raise _error(where, f"calibration must be a JSON object, got {_shown(calibration)}")
    recorded = calibration.get(SOURCE_PIXELS_KEY)
    if recorded is None:
        return None
    if not (isinstance(recorded, list) and all(isinstance(h, str) and _SHA256.fullmatch(h) for h in recorded)):
        raise _error(where, f"calibration.{SOURCE_PIXELS_KEY} must be a list of sha256 digests, got {_shown(recorded)}")
    return frozenset(recorded)
