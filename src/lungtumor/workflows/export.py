"""``lungtumor export``: a checkpoint or run folder as a model package (.zip) or as ONNX networks.

The package format is ``inference.package`` (safetensors weights, JSON config, preprocessing and card, a
README and a manifest of sha256s; docs/deploy.md); ``predict --model PACKAGE.zip`` loads it directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lungtumor.core.errors import InputError, ensure_writable_dir
from lungtumor.inference.checkpoint import checkpoint_file, read_checkpoint
from lungtumor.inference.package import is_package, read_members, write_package
from lungtumor.workflows.manifest import sha256_file
from lungtumor.workflows.onnx_export import export_onnx

#: What ``--format`` takes.
EXPORT_FORMATS = ("package", "onnx")


@dataclass
class ExportResult:
    """What ``export`` wrote: the package file or the ONNX files, and the source checkpoint."""

    source: Path
    format: str
    files: list[Path] = field(default_factory=list)
    members: dict[str, dict] = field(default_factory=dict)  # package: name -> {"sha256", "bytes"}

    def summary_lines(self) -> list[str]:
        """Human-readable lines: each file written (and a package's members)."""
        lines = [f"exported {self.source} as {self.format}:"]
        for f in self.files:
            lines.append(f"  {f} ({f.stat().st_size / 1e6:.2f} MB)")
        for name, m in self.members.items():
            lines.append(f"    {name}  {m['bytes']} bytes  sha256 {m['sha256'][:16]}")
        return lines


def export_model(
    source: str | os.PathLike, out: str | os.PathLike, fmt: str = "package", opset: int | None = None
) -> ExportResult:
    """Export a checkpoint (.ckpt, run folder or package) as a model package ``out`` (``*.zip``) or, with
    ``fmt="onnx"``, as ONNX files in the folder ``out`` (``opset``: the ONNX opset, default torch's).

    Raises:
        InputError: an unknown format, a bad output name, or an unreadable checkpoint.
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError("--format", f"unknown format {fmt!r}; use {', '.join(EXPORT_FORMATS)}")
    src = checkpoint_file(source)
    out = Path(out)
    if fmt == "onnx":
        return ExportResult(src, fmt, export_onnx(src, out, opset=opset))
    if not is_package(out):
        raise InputError(out, "a model package is a .zip file: name the output <name>.zip")
    if out.is_dir():
        raise InputError(out, "output path exists and is a folder")
    ck = read_checkpoint(src)  # before anything is written: a bad checkpoint leaves nothing behind
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    write_package(ck, out, {"file": src.name, "sha256": sha256_file(src)})
    manifest, _ = read_members(out)  # read back: the file on disk passes the checks predict makes
    return ExportResult(src, fmt, [out], dict(manifest["members"]))
