"""Reading checkpoint files: the reference's ``torch.save`` state dicts (``.pth``, read with
``weights_only`` so no pickled code runs) and the same state dicts saved as safetensors, whole or
as names, shapes and dtypes only.

Why apart from :mod:`dfd.export.checkpoint`: that module decides what the keys mean (prefixes,
LoRA, layouts); this one only gets tensors out of a file, and says plainly what a file is when it
is not a checkpoint at all (an empty file, a Git LFS pointer, an HTML page from a failed download,
a whole pickled model).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from dfd.runtime.errors import DfdError

from .configs import STREAM_SPECS


class CheckpointError(DfdError, ValueError):
    """A checkpoint cannot be read, or does not match the architecture its config describes; names
    the file, and the keys."""


def find_checkpoint(weights_dir: Path, stream: str) -> Path:
    """The ``stream``'s checkpoint in ``weights_dir``: the reference's file name
    (``dinov2_252.pth``, ...), else the same name as ``.safetensors``; the ``.pth`` path when
    neither is there, for the caller's not-found message."""
    reference = Path(weights_dir) / STREAM_SPECS[stream].checkpoint
    converted = reference.with_suffix(".safetensors")
    return converted if not reference.exists() and converted.is_file() else reference


def read_state_dict(path: Path, *, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """``torch.load`` a reference ``.pth`` safely (tensors only, no pickled code), or read the same
    state dict saved as safetensors.

    With ``shapes_only`` the tensors are on the meta device: names, shapes and dtypes, read from
    the file's index without its values (milliseconds for a 4.6 GB checkpoint), which is how a
    build checks every checkpoint before its long work."""
    path = Path(path)
    if not path.is_file():
        what = ("is a directory" if path.is_dir() else "is not a regular file" if path.exists()
                else "is a broken symbolic link" if path.is_symlink() else "does not exist")
        raise CheckpointError(f"checkpoint {path} {what}; the reference's checkpoints are files "
                              f"(dinov2_252.pth, dinov2_252_crop.pth, dinov2_clip.pth)")
    if _is_safetensors(path):
        return _read_safetensors(path, shapes_only)
    not_a_checkpoint = _not_a_torch_file(path)
    if not_a_checkpoint:
        raise CheckpointError(f"checkpoint {path} {not_a_checkpoint}")
    try:
        state = torch.load(path, map_location="meta" if shapes_only else "cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "Weights only load failed" in str(exc):
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects besides tensors (a whole model "
                                  f"saved with torch.save(model)?), which are never unpickled here since that can "
                                  f"run code; save model.state_dict() instead") from exc
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or truncated?): {first_line}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} is not a state dict of tensors: it holds a {type(state).__name__}")
    others = [(key, value) for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if others:
        key, value = others[0]
        nested = [k for k, v in others if isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor)
                                                                               for t in v.values())]
        hint = (f"; its tensors look nested under {nested[0]!r} (a training checkpoint?): save that mapping alone, "
                f"torch.save(checkpoint[{nested[0]!r}], path)" if nested else "")
        raise CheckpointError(f"{path} is not a state dict of tensors: {len(others)} of its {len(state)} entries are "
                              f"not tensors, e.g. {key!r} ({type(value).__name__}){hint}")
    odd = [key for key in state if not isinstance(key, str)]
    if odd:
        raise CheckpointError(f"{path} is not a reference state dict: {len(odd)} key(s) are not parameter names, "
                              f"e.g. {odd[0]!r}")
    return dict(state)


def _is_safetensors(path: Path) -> bool:
    """Whether the file is in the safetensors format (a little-endian u64 header length, then the
    JSON header), which state dicts re-saved from the hub often are; read from its first bytes.
    A header length past the file's end is a download cut short inside the header: still
    safetensors, for the reader to call truncated, not "not a PyTorch checkpoint"."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False  # _not_a_torch_file reports the read error
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") >= 2


# safetensors' dtype names (its format documentation) -> torch dtypes, for meta tensors
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8,
                       "BOOL": torch.bool}


def _read_safetensors(path: Path, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict (the same keys as the reference's ``.pth``), or with
    ``shapes_only`` its header as meta tensors. Nothing in the format can run code, so it needs no
    ``weights_only`` guard."""
    from safetensors import SafetensorError, safe_open  # installed with timm
    from safetensors.torch import load_file

    try:
        if not shapes_only:
            return load_file(str(path), device="cpu")
        header = {}
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                entry = handle.get_slice(key)
                header[key] = (entry.get_shape(), entry.get_dtype())
    except (SafetensorError, OSError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read safetensors checkpoint {path} (corrupt or truncated?): "
                              f"{first_line}") from exc
    odd = {key: dtype for key, (_, dtype) in header.items() if dtype not in _SAFETENSORS_DTYPES}
    if odd:
        key, dtype = next(iter(odd.items()))
        raise CheckpointError(f"{path}: {len(odd)} tensor(s) have a dtype no checkpoint weight has, e.g. {key} "
                              f"({dtype}); expected one of {', '.join(_SAFETENSORS_DTYPES)}")
    return {key: torch.empty(shape, dtype=_SAFETENSORS_DTYPES[dtype], device="meta")
            for key, (shape, dtype) in header.items()}


def _not_a_torch_file(path: Path) -> str | None:
    """Why the file cannot be a ``torch.save`` output (a ZIP archive, or the legacy pickle format),
    read from its first bytes, or None. The usual cases are a failed download: an empty file, a
    Git LFS pointer, an HTML error page."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the checkpoint itself: fetch it with `git lfs pull`"
    if head.lstrip().startswith(b"<"):
        return "is an HTML or XML page, not a checkpoint (a failed download?)"
    return "is not a PyTorch checkpoint (torch.save writes a ZIP archive; this file starts otherwise)"
