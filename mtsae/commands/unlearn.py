"""``mtsae unlearn``: the in-house unlearning benchmark (evaluate/unlearn.py, docs/unlearning.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtsae.commands.common import user_errors

EPILOG = ("Examples:\n\n  mtsae unlearn runs/world-relu runs/world-mtsae --out results/unlearn\n\n"
          "  mtsae unlearn runs/world-mtsae --latents 1,5,20 --clamp 5,50 --retain-threshold 0.001")


def unlearn(
    runs: Annotated[list[str], typer.Argument(help="Run folders (or checkpoints) of SAEs trained on a world LM.")],
    out: Annotated[str, typer.Option(help="Folder for <run>.json and unlearn.md.")] = "unlearn",
    latents: Annotated[str, typer.Option(help="Numbers of selected latents to clamp, comma-separated.")] = "1,2,5,10,20,50",
    clamp: Annotated[str, typer.Option(help="Clamp values: a firing selected latent is set to -value. Comma-separated.")] = "1,5,20,50",
    retain_threshold: Annotated[float, typer.Option(help="Select only latents firing on fewer retain tokens than this fraction (SAE-Bench: 0.01 or 0.001).")] = 0.01,
    forget_documents: Annotated[int, typer.Option(help="Forget-topic documents for latent selection.")] = 32,
    retain_documents: Annotated[int, typer.Option(help="Retain-topic documents for latent selection and the false-positive rate.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per document row.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    allow_non_causal: Annotated[bool, typer.Option(help="Run SAEs whose codes read later tokens anyway (flagged).")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
):
    """In-house unlearning benchmark: clamp SAE-Bench-selected latents, score fact completion on the world."""
    from mtsae.evaluate import unlearn as U
    from mtsae.evaluate.unlearn_runs import markdown_summary, parse_numbers, unlearn_runs

    settings = U.UnlearnSettings(
        latent_counts=parse_numbers(latents, "--latents", int), clamp_values=parse_numbers(clamp, "--clamp"),
        retain_threshold=retain_threshold, forget_documents=forget_documents, retain_documents=retain_documents,
        seq_len=seq_len, batch_size=batch_size, progress=progress)
    results = unlearn_runs(runs, out, settings, device=device, allow_non_causal=allow_non_causal,
                           log=lambda line: typer.echo(line, err=True))
    typer.echo(markdown_summary(results))
    typer.echo(f"results: {Path(out) / 'unlearn.md'}")


def register(app: typer.Typer) -> None:
    app.command("unlearn", epilog=EPILOG)(user_errors(unlearn))
