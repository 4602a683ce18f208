"""The `mtsae` command line. Command bodies only parse options and call library functions."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtsae.errors import MtsaeError
from mtsae.harvest.config import HarvestConfig, help_text

app = typer.Typer(
    help="Multi-Scale Temporal Sparse Autoencoders: harvest activations, train SAEs, evaluate them with SAE-Bench.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
cache_app = typer.Typer(help="Inspect activation caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

EXIT_USER_ERROR = 1


def user_errors(command):
    """Turn a user mistake into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MtsaeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing was marked complete", err=True)
            raise typer.Exit(130) from None

    return wrapper


def parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MtsaeError(f"--layers takes comma-separated integers such as 5,19, got {text!r}") from None


_DEFAULTS = HarvestConfig()


@app.command(
    epilog=(
        "Examples:\n\n"
        "  mtsae harvest --out caches/demo                     # embedded tiny Gemma-2 + offline corpus\n\n"
        "  mtsae harvest --model google/gemma-2-2b --dataset monology/pile-uncopyrighted "
        "--max-tokens 10000000 --out /data/caches/gemma2b-pile"
    )
)
@user_errors
def harvest(
    model: Annotated[str, typer.Option(help=help_text("model"))] = _DEFAULTS.model,
    dataset: Annotated[str, typer.Option(help=help_text("dataset"))] = _DEFAULTS.dataset,
    dataset_config: Annotated[Optional[str], typer.Option(help=help_text("dataset_config"))] = None,
    split: Annotated[str, typer.Option(help=help_text("split"))] = _DEFAULTS.split,
    text_column: Annotated[str, typer.Option(help=help_text("text_column"))] = _DEFAULTS.text_column,
    layers: Annotated[str, typer.Option(help=help_text("layers") + " Comma-separated.")] = "5,19",
    context_len: Annotated[Optional[int], typer.Option(help=help_text("context_len"))] = None,
    max_tokens: Annotated[int, typer.Option(help=help_text("max_tokens"))] = _DEFAULTS.max_tokens,
    batch_size: Annotated[int, typer.Option(help=help_text("batch_size"))] = _DEFAULTS.batch_size,
    dtype: Annotated[str, typer.Option(help=help_text("dtype"))] = _DEFAULTS.dtype,
    device: Annotated[str, typer.Option(help=help_text("device"))] = _DEFAULTS.device,
    attn_implementation: Annotated[str, typer.Option(help=help_text("attn_implementation"))] = _DEFAULTS.attn_implementation,
    chunk_tokens: Annotated[int, typer.Option(help=help_text("chunk_tokens"))] = _DEFAULTS.chunk_tokens,
    compression: Annotated[str, typer.Option(help=help_text("compression"))] = _DEFAULTS.compression,
    model_revision: Annotated[Optional[str], typer.Option(help=help_text("model_revision"))] = None,
    dataset_revision: Annotated[Optional[str], typer.Option(help=help_text("dataset_revision"))] = None,
    out: Annotated[Optional[str], typer.Option(help="Output store path; default caches/<fingerprint[:12]>.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing mtsae cache at --out (never anything else).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Run a causal LM over a text dataset and store its residual stream in a Zarr v3 cache."""
    from mtsae.harvest.run import harvest as run_harvest

    cfg = HarvestConfig(
        model=model, model_revision=model_revision, dataset=dataset, dataset_config=dataset_config,
        dataset_revision=dataset_revision, split=split, text_column=text_column, layers=parse_layers(layers),
        context_len=context_len, max_tokens=max_tokens, batch_size=batch_size, dtype=dtype, device=device,
        attn_implementation=attn_implementation, chunk_tokens=chunk_tokens, compression=compression,
    )
    outcome = run_harvest(cfg, out, force=force, log=lambda line: typer.echo(line, err=True), progress=progress)
    typer.echo(outcome.path)


@cache_app.command("info", epilog="Example:\n\n  mtsae cache info caches/demo")
@user_errors
def cache_info(
    path: Annotated[str, typer.Argument(help="Cache path.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False,
):
    """Show a cache's manifest: model, dataset, layers, counts, size, completeness."""
    from mtsae.cache import read_attrs
    from mtsae.cache.catalog import info_lines

    attrs = read_attrs(path)
    if attrs is None:
        raise MtsaeError(f"no mtsae cache at {path}")
    if as_json:
        typer.echo(json.dumps(attrs, indent=2, sort_keys=True))
    else:
        typer.echo("\n".join(info_lines(path, attrs)))


@cache_app.command("ls", epilog="Example:\n\n  mtsae cache ls caches/")
@user_errors
def cache_ls(root: Annotated[str, typer.Argument(help="Folder to search for caches.")] = "caches"):
    """List every cache below a folder with its status, fingerprint, model, layers, tokens and size."""
    from mtsae.cache.catalog import find_caches, summary_row

    if not Path(root).is_dir():
        raise MtsaeError(f"{root} is not a folder")
    rows = [summary_row(path, attrs) for path, attrs in find_caches(root)]
    if not rows:
        typer.echo(f"no caches below {root}", err=True)
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    typer.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        typer.echo("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def main() -> None:
    app(prog_name="mtsae")


if __name__ == "__main__":
    sys.exit(main())
