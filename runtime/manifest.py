"""The engine-set manifest: what a built folder contains, and the proof it is intact.

An engine set is a folder with ``manifest.json`` naming, per stream, its files (ONNX graph and,
for TensorRT, the engine) with their sha256, input size and precision, plus the vote weights and
preprocessing parameters. The build side writes it with ``write_manifest``; the runtime opens a
set only through ``load_manifest``, which refuses (``EngineSetError``) a folder that is not an
engine set, is incomplete, or whose files do not hash to what the manifest says.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DfdError

MANIFEST_NAME = "manifest.json"
FORMAT = "dfd-engine-set"
FORMAT_VERSION = 1
STREAM_ORDER = ("global", "face", "fusion")
_CHUNK = 8 * 1024 * 1024


class EngineSetError(DfdError, RuntimeError):
    """The folder is not a usable engine set; the message says why and what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the engine-set folder
    sha256: str
    bytes: int
    role: str  # "onnx", "onnx-data", "engine", "timing-cache"

    @classmethod
    def of(cls, root: Path, path: Path, role: str) -> "FileEntry":
        path = Path(path)
        return cls(str(path.relative_to(root)), sha256_file(path), path.stat().st_size, role)


@dataclass(frozen=True)
class StreamEntry:
    name: str
    input_size: int
    precision: str  # "fp32", "fp16", "int8"
    backend: str  # "onnxruntime" or "tensorrt"
    files: tuple[FileEntry, ...]
    details: dict[str, Any] = field(default_factory=dict)  # architecture, calibration, ...

    def file(self, role: str) -> FileEntry | None:
        return next((f for f in self.files if f.role == role), None)


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``. ``raw`` keeps every field, including ones newer code wrote."""

    root: Path
    streams: dict[str, StreamEntry]
    vote_weights: dict[str, float]
    preprocessing: dict[str, Any]
    random_weights: bool
    raw: dict[str, Any]
    face_detector: StreamEntry | None = None  # the packaged face localiser, when the set has one

    def entries(self) -> list[StreamEntry]:
        """Every network in the set: the streams, then the face detector if present."""
        return list(self.streams.values()) + ([self.face_detector] if self.face_detector else [])

    def path_of(self, entry: FileEntry) -> Path:
        return self.root / entry.path


def _require(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise EngineSetError(f"{where}: manifest field '{key}' is missing")
    return data[key]


def parse_manifest(root: Path, data: dict[str, Any]) -> Manifest:
    where = str(Path(root) / MANIFEST_NAME)
    if data.get("format") != FORMAT:
        raise EngineSetError(f"{where} is not a dfd-export engine-set manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise EngineSetError(
            f"{where} has format version {data.get('format_version')}; this runtime reads "
            f"version {FORMAT_VERSION}. Rebuild the engine set with this dfd-export."
        )
    streams = {name: _entry(name, entry, where) for name, entry in _require(data, "streams", where).items()}
    unknown = sorted(set(streams) - set(STREAM_ORDER))
    if unknown or not streams:
        raise EngineSetError(f"{where}: streams must be among {STREAM_ORDER}; got {sorted(streams)}")
    face = data.get("face_detector")
    vote = _require(data, "vote", where)
    return Manifest(
        root=Path(root),
        streams=streams,
        vote_weights={k: float(v) for k, v in _require(vote, "weights", where).items()},
        preprocessing=_require(data, "preprocessing", where),
        random_weights=bool(data.get("random_weights", False)),
        raw=data,
        face_detector=_entry("face_detector", face, where) if face else None,
    )


def _entry(name: str, entry: dict[str, Any], where: str) -> StreamEntry:
    files = tuple(FileEntry(**f) for f in _require(entry, "files", f"{where} [{name}]"))
    return StreamEntry(
        name=name,
        input_size=int(_require(entry, "input_size", where)),
        precision=str(_require(entry, "precision", where)),
        backend=str(_require(entry, "backend", where)),
        files=files,
        details={k: v for k, v in entry.items() if k not in {"input_size", "precision", "backend", "files"}},
    )


def load_manifest(engine_dir: Path, *, verify: bool = True) -> Manifest:
    """Read and (by default) verify an engine set; ``EngineSetError`` says what is wrong."""
    root = Path(engine_dir)
    if not root.exists():
        raise EngineSetError(f"engine set folder not found: {root}")
    if not root.is_dir():
        raise EngineSetError(f"{root} is a file; pass the engine set folder (it holds {MANIFEST_NAME})")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise EngineSetError(
            f"{root} is not an engine set: no {MANIFEST_NAME}. Build one with `dfd-export build --out {root}`."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineSetError(f"{path} is unreadable or not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EngineSetError(f"{path} is not a JSON object")
    try:
        manifest = parse_manifest(root, data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise EngineSetError(f"{path} is malformed: {exc}") from exc
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> None:
    """Every listed file exists, has its size, and hashes to its sha256 (tamper check)."""
    problems: list[str] = []
    for stream in manifest.entries():
        for entry in stream.files:
            path = manifest.path_of(entry)
            if not path.is_file():
                problems.append(f"missing file {entry.path} ({stream.name} stream)")
            elif path.stat().st_size != entry.bytes:
                problems.append(f"{entry.path} has {path.stat().st_size} bytes, manifest says {entry.bytes}")
            elif sha256_file(path) != entry.sha256:
                problems.append(f"{entry.path} does not match its sha256 (modified or corrupt)")
    if problems:
        listing = "\n  ".join(problems)
        raise EngineSetError(
            f"engine set {manifest.root} failed its integrity check; rebuild it:\n  {listing}"
        )


def write_manifest(engine_dir: Path, data: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (a crash never leaves half a manifest)."""
    root = Path(engine_dir)
    parse_manifest(root, data)  # never write something the runtime would refuse to read
    path = root / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
