"""``mtsae synth``, ``analyze``, ``report``, ``experiment``: known features, and what runs learned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtsae.commands.common import user_errors
from mtsae.commands.options import REQUIRED, ConfigOptions, option, with_parameters
from mtsae.errors import MtsaeError
from mtsae.harvest import synth as synth_module

SYNTH_OPTIONS = ConfigOptions(synth_module.SynthConfig)
SYNTH_OUT = option("out", str, REQUIRED, help="Output store path or fsspec URL (must not exist).")


@with_parameters([SYNTH_OUT], SYNTH_OPTIONS.parameters())
def synth(**given):
    """Write a synthetic cache of known multi-scale temporal features (ground truth stored beside them)."""
    from mtsae.cache.remote import exists

    cfg = synth_module.SynthConfig(**SYNTH_OPTIONS.values(given))
    out = given["out"]
    cfg.validate()  # before the output check: a bad value is named even when --out is taken
    if exists(out):  # a path or a URL (s3://...)
        raise MtsaeError(f"{out} already exists; choose a new --out")
    attrs = synth_module.synthesize(cfg, out)
    typer.echo(f"wrote {attrs['counts']['tokens']:,} tokens of {cfg.n_features} known features to {out}", err=True)
    typer.echo(out)


def analyze(
    run: Annotated[str, typer.Argument(help="Training run directory (with final/).")],
    cache: Annotated[Optional[str], typer.Option(help="Cache to read held-out windows from. Default: the run's.")] = None,
    max_windows: Annotated[int, typer.Option(help="Held-out windows to analyse.")] = 256,
    max_lag: Annotated[int, typer.Option(help="Largest autocorrelation lag in tokens.")] = 32,
    out: Annotated[Optional[str], typer.Option(help="Write the JSON here as well.")] = None,
):
    """Feature disentanglement of a run: time scales, decoder geometry, adjacent-step separation, ground truth."""
    from mtsae.evaluate.analysis import analyze_run

    result = analyze_run(run, cache_path=cache, max_windows=max_windows, max_lag=max_lag)
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    typer.echo(text)


def report(
    runs: Annotated[list[str], typer.Argument(help="Training run directories (eval results read from <run>/eval/).")],
    out: Annotated[str, typer.Option(help="Folder for the figures, report.md, report.html and report.json.")],
    loss_components: Annotated[bool, typer.Option(help="Also draw each run's own total loss, one axis per run, in loss_curves.png.")] = False,
):
    """Figures and a Markdown/HTML report of runs; broken runs are flagged and left out of the figures."""
    from mtsae.evaluate.report import write_report

    data = write_report(runs, out, loss_components=loss_components)
    for run in data["runs"]:
        if run["flags"]:
            typer.echo(f"FLAGGED {run['name']}: {'; '.join(run['flags'])}", err=True)
    typer.echo(str(Path(out) / "report.html"))


def experiment(
    config: Annotated[str, typer.Argument(help="TOML file, or a built-in experiment: embedded (the demo's: the trained world LM, 3 runs x 2 seeds at L0 16, reduced SAE-Bench, mtsae unlearn), embedded-full (the seed's runs, the temporal SAE and the baselines x 3 seeds, all four evals), world (the temporal SAE and its per-token twins x 3 seeds), embedded-random (the seed's runs on the random-weights model: a pipeline check), synthetic, temporal-synth (temporal vs per-token SAEs on synthetic regimes, 3 seeds, a verdict per regime).")],
    out: Annotated[Optional[str], typer.Option(help="Override the config's output folder.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
):
    """Train every declared run that is missing, evaluate, analyse, and write the report."""
    from mtsae.evaluate.experiment import load_experiment, run_experiment

    cfg = load_experiment(config, out)
    run_experiment(cfg, log=lambda line: typer.echo(line, err=True), progress=progress)
    typer.echo(str(Path(cfg.out) / "report" / "report.html"))


def register(app: typer.Typer) -> None:
    app.command(epilog="Examples:\n\n  mtsae synth --out caches/synth\n\n"
                       "  mtsae synth --out caches/synth-big --n-features 1024 --n-sequences 4000")(user_errors(synth))
    app.command(epilog="Example:\n\n  mtsae analyze runs/demo-run2 --out runs/demo-run2/analysis.json")(user_errors(analyze))
    app.command(epilog="Example:\n\n  mtsae report runs/demo-run0 runs/demo-run2 --out reports/demo")(user_errors(report))
    app.command(epilog="Examples:\n\n  mtsae experiment embedded        # the demo: harvest the world LM, train, SAE-Bench, "
                       "mtsae unlearn, report\n\n  mtsae experiment embedded-full   # the same comparison in full "
                       "(24 runs)\n\n  mtsae experiment synthetic       # ground-truth recovery benchmark\n\n"
                       "  mtsae experiment temporal-synth  # temporal vs per-token at matched L0, 2 regimes x 3 seeds "
                       "(about 5 min on 2 quiet cores)\n\n"
                       "  mtsae experiment my-experiment.toml")(user_errors(experiment))
