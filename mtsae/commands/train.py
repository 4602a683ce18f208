"""``mtsae train``: an SAE on a cache's activations."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mtsae.commands.common import rank0_log, training_backend, user_errors
from mtsae.commands.options import ConfigOptions, Form, option, with_parameters
from mtsae.train import config as train_config
from mtsae.train.arch_options import ArchFlags
from mtsae.train.presets import describe_presets
from mtsae.train.registry import builtin_architecture_names


def _train_help(name: str, text: str) -> str:
    """A TrainConfig field's documentation, plus its default when the text does not state one."""
    if "Default:" not in text and "(required)" not in text:
        default = train_config.field_default(name)
        text += " Default: not set." if default is None else f" Default: {default}."
    return text


def _arch_help(_name: str, text: str) -> str:
    return f"Architecture option: {text} Default: the preset's, else the architecture's (see docs/architectures.md)."


TRAIN_OPTIONS = ConfigOptions(
    train_config.TrainConfig, unset_defaults=True, help=_train_help,  # None: the --config file's value, else the default
    forms={
        "preset": Form(suffix=f" One of: {describe_presets()}."),
        "arch": Form(suffix=f" One of: {', '.join(builtin_architecture_names())}."),
        "wandb": Form(decls=("--wandb",), metavar="PROJECT"),
    },
    not_exposed={"arch_config": "set key by key by the architecture flags (ARCH_OPTIONS) and --arch-option"},
)
ARCH_OPTIONS = ConfigOptions(ArchFlags, unset_defaults=True, help=_arch_help,
                             forms={"dilations": Form(comma_example="1,3,9")})

EPILOG = (
    "Options given on the command line override --config; a --preset fills arch, arch options, layer, "
    "d-sae, lr and window unless given.\n\n"
    "Examples:\n\n"
    "  mtsae train --cache caches/demo --preset run0 --d-sae 512 --out runs/demo-run0\n\n"
    "  mtsae train --cache caches/demo --layer 19 --arch mtsae --preset run2 --d-sae 512 --out runs/demo-run2\n\n"
    "  mtsae train --config train.toml --out runs/big --resume          # continue after an interruption\n\n"
    "  mtsae train --cache caches/demo --arch topk --k 32 --steps 2000 --out runs/topk --force\n\n"
    "  mtsae train --cache caches/demo --preset run2 --target-l0 16 --out runs/run2-l0-16   # matched sparsity"
)


def _parameters() -> list:
    """TrainConfig's options, the architecture flags where its arch_config stands, and the run's own options."""
    fields = TRAIN_OPTIONS.parameters()
    at = [f.name for f in TRAIN_OPTIONS.fields()].index("window")
    config = option("config", Optional[Path], help="TOML file of training options: the names below "
                                                  "with _ for -, plus an arch_config table.")
    arch_option = option("arch_option", Optional[list[str]], help="Any other architecture option as KEY=VALUE "
                         "(JSON value), repeatable, e.g. --arch-option activation=topk.")
    return [config, *fields[:at], *ARCH_OPTIONS.parameters(), arch_option, *fields[at:],
            option("resume", bool, False, help="Continue the run in --out from its latest checkpoint (same options)."),
            option("force", bool, False, help="Replace an existing run in --out (never a folder that is not an mtsae run)."),
            option("progress", bool, True, help="Show a progress bar.")]


@with_parameters(_parameters())
def train(**given):
    """Train an SAE on a cache's activations; prints the final held-out metrics and checkpoint path."""
    from mtsae.distributed import process_group
    from mtsae.train.trainer import train as run_train

    arch_config = {key: value for key, value in ARCH_OPTIONS.values(given).items() if value is not None}
    arch_config.update(train_config.parse_assignments(given.pop("arch_option")))
    overrides = {**TRAIN_OPTIONS.values(given), "arch_config": arch_config or None}
    cfg = train_config.load_config(given["config"], overrides)
    with process_group(training_backend(cfg.device)) as world:  # torchrun: data-parallel (docs/scaling.md)
        result = run_train(cfg, resume=given["resume"], force=given["force"], progress=given["progress"],
                           log=rank0_log(world), world=world)
    if world.is_main:
        _print_result(result, cfg.window)


def _print_result(result, window: int) -> None:
    metrics = " ".join(f"{name}={result.metrics[name]:.4g}" for name in ("mse", "fve", "l0", "dead_fraction", "sep"))
    short, sequences, short_tokens, tokens = result.too_short
    typer.echo(f"held-out after {result.steps:,} steps ({result.tokens:,} tokens): {metrics}; never trained on: "
               f"{short:,} of {sequences:,} train sequences ({short_tokens:,} of {tokens:,} tokens, "
               f"{short_tokens / max(tokens, 1):.1%}) are shorter than the {window}-token window")
    typer.echo(result.checkpoint)


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(user_errors(train))
