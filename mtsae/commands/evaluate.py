"""``mtsae eval``: SAE-Bench's evals on checkpoints."""

from __future__ import annotations

import typer

from mtsae.commands.common import user_errors
from mtsae.commands.options import ConfigOptions, Form, with_parameters
from mtsae.errors import MtsaeError
from mtsae.evaluate import config as eval_config

EVAL_OPTIONS = ConfigOptions(eval_config.EvalConfig, forms={
    "checkpoints": Form(argument=True),
    "saelens": Form(decls=("--saelens",), metavar="RELEASE:ID", suffix=" Repeatable."),
    "evals": Form(comma_example="core,sparse_probing", suffix=" Comma-separated."),
    "config_file": Form(decls=("--config",)),
})

EPILOG = (
    "Examples:\n\n"
    "  mtsae eval runs/demo/final --out results/demo                 # embedded model: offline, tiny settings\n\n"
    "  mtsae eval runs/g2b/final --out results/g2b --forget-corpus bio-forget-corpus.jsonl   # gemma-2-2b, standard\n\n"
    "  mtsae eval runs/a/final runs/b/final --out results/ab --evals core,sparse_probing --config eval.toml\n\n"
    "  mtsae eval runs/g2b/final --out results/g2b --offline /data/sae-bench-mirror\n\n"
    "  mtsae eval runs/g2b/final --saelens gemma-scope-2b-pt-res-canonical:layer_19/width_16k/canonical --out results/vs"
)


@with_parameters(EVAL_OPTIONS.parameters())
def eval_command(**given):
    """Run SAE-Bench's core, sparse probing, unlearning and absorption evals on checkpoints; prints a summary."""
    from mtsae.evaluate.run import evaluate

    cfg = eval_config.EvalConfig(**EVAL_OPTIONS.values(given))
    summary = evaluate(cfg, log=lambda line: typer.echo(line, err=True))
    typer.echo(summary.table())
    typer.echo(f"summary: {summary.path}")
    if summary.failed:
        raise MtsaeError(f"{len(summary.failed)} eval result(s) failed; see {summary.path} and the *_error.txt files")


def register(app: typer.Typer) -> None:
    app.command("eval", epilog=EPILOG)(user_errors(eval_command))
