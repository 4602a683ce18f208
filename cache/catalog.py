"""Describe one cache (`mtsae cache info`) or every cache below a folder (`mtsae cache ls`)."""

from __future__ import annotations

import os
from typing import Any, Iterator

from mtsae.cache import format as fmt
from mtsae.cache import remote
from mtsae.cache.reader import read_attrs


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes stored below ``path``, a folder or a URL."""
    return sum(remote.list_objects(path).values())


def find_caches(root: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mtsae cache at or below ``root`` (a folder or URL), not descending into a cache once found."""
    attrs = read_attrs(root)
    if attrs is not None:
        yield str(root), attrs
        return
    for child in remote.subfolders(root):
        yield from find_caches(child)


def _object(value: Any) -> dict[str, Any]:
    """A manifest field that should be an object; {} for anything else (the manifest is untrusted input)."""
    return value if isinstance(value, dict) else {}


def summary_row(path: str | os.PathLike, attrs: dict[str, Any]) -> dict[str, Any]:
    if fmt.manifest_problems(attrs):  # described by `mtsae cache info` / `verify`, not guessed at here
        return {"path": str(path), "status": "invalid manifest", "fingerprint": "", "model": "", "layers": "",
                "tokens": "", "size_mb": round(disk_bytes(path) / 2**20, 1)}
    return {
        "path": str(path),
        "status": attrs.get("status"),
        "fingerprint": attrs["fingerprint"][:12],
        "model": _object(attrs.get("model")).get("id"),
        "layers": ",".join(str(x) for x in attrs["layers"]),
        "tokens": _object(attrs.get("counts")).get("tokens"),
        "size_mb": round(disk_bytes(path) / 2**20, 1),
    }


def info_lines(path: str | os.PathLike, attrs: dict[str, Any]) -> list[str]:
    """Human-readable summary of one cache's manifest."""
    problems = fmt.manifest_problems(attrs)
    if problems:
        return [f"cache        {path}", f"status       invalid manifest: {problems[0]}",
                f"             this cache must not be used; `mtsae cache verify {path}` lists what is wrong"]
    counts = attrs.get("counts", {})
    model, data = _object(attrs.get("model")), _object(attrs.get("dataset"))
    lines = [
        f"cache        {path}",
        f"status       {attrs.get('status')}  (format {attrs.get('format')} v{attrs.get('format_version')})",
        f"fingerprint  {attrs.get('fingerprint')}",
        f"model        {model.get('id')}  revision={model.get('revision')}  d_model={attrs.get('d_model')}",
        f"dataset      {data.get('id')}  split={data.get('split')}  column={data.get('text_column')}",
        f"layers       {', '.join(fmt.hook_name(layer) for layer in attrs.get('layers', []))}",
        f"context      {attrs.get('context_len')} tokens, dtype {attrs.get('dtype')}",
    ]
    if attrs.get("status") == fmt.STATUS_COMPLETE:
        chunking = attrs["storage"]
        lines += [
            f"counts       {counts.get('tokens'):,} tokens, {counts.get('sequences'):,} sequences, "
            f"{counts.get('documents'):,} documents",
            f"storage      {chunking.get('chunk_tokens')} tokens/chunk, compression {chunking.get('compression')}, "
            f"{disk_bytes(path) / 2**20:.1f} MiB on disk",
            f"harvested    {attrs.get('completed_at')} by mtsae {attrs.get('mtsae_version')} "
            f"at {_object(attrs.get('harvest')).get('tokens_per_second') or 0:,.0f} tokens/s",
        ]
    elif "transfer" in attrs:  # a push or pull cut short (cache/transfer.py)
        lines.append(f"             an unfinished copy of {_object(attrs['transfer']).get('source')}: this cache must not be used; "
                     "re-run the same push or pull to finish it")
    else:
        lines.append("             the harvest did not finish: this cache must not be used")
    return lines
