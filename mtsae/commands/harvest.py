"""``mtsae harvest``: a model's residual stream over a dataset into a Zarr v3 cache."""

from __future__ import annotations

from typing import Optional

import typer

from mtsae import env
from mtsae.commands.common import rank0_log, user_errors
from mtsae.commands.options import ConfigOptions, Form, option, with_parameters
from mtsae.harvest.config import HarvestConfig

HARVEST_OPTIONS = ConfigOptions(HarvestConfig, forms={"layers": Form(comma_example="5,19", suffix=" Comma-separated.")})

EPILOG = (
    "Examples:\n\n"
    "  mtsae harvest --out caches/demo                     # embedded tiny Gemma-2 + offline corpus\n\n"
    "  mtsae harvest --model google/gemma-2-2b --dataset monology/pile-uncopyrighted "
    "--max-tokens 10000000 --out /data/caches/gemma2b-pile\n\n"
    "  mtsae harvest --out s3://bucket/caches/demo           # straight into object storage\n\n"
    "  mtsae harvest --shared-root s3://bucket/caches        # reuse the team's copy if it exists, else publish"
)

RUN_OPTIONS = [
    option("out", Optional[str], help="Output store path or fsspec URL (s3://...); default caches/<fingerprint[:12]>."),
    option("force", bool, False, help="Replace an existing mtsae cache at --out (never anything else)."),
    option("shared_root", Optional[str], envvar=env.SHARED_ROOT.name, help="Folder or URL of caches by fingerprint: "
           "a complete cache of this harvest there is reused, not recomputed (docs/remote-caches.md)."),
    option("publish", bool, True, help="With a shared root: push the finished cache there."),
    option("check_shared", bool, True, help="With a shared root: before reusing its cache, check its sha256 "
           "digests and audit 2 sequences with the model (docs/cache-format.md, threat model); "
           "--no-check-shared trusts everyone who can write the root."),
    option("progress", bool, True, help="Show a progress bar."),
]


@with_parameters(HARVEST_OPTIONS.parameters(), RUN_OPTIONS)
def harvest(**given):
    """Run a causal LM over a text dataset and store its residual stream in a Zarr v3 cache."""
    from mtsae.distributed import process_group
    from mtsae.harvest.run import harvest as run_harvest

    cfg = HarvestConfig(**HARVEST_OPTIONS.values(given))
    out, force, shared_root, publish, progress = (given[k] for k in ("out", "force", "shared_root", "publish", "progress"))
    with process_group("gloo") as world:  # under torchrun the ranks share the harvest (docs/scaling.md)
        outcome = run_harvest(cfg, out, force=force, log=rank0_log(world), progress=progress, world=world,
                              shared_root=shared_root, check_shared=given["check_shared"])
    if world.is_main:
        if shared_root and publish:
            from mtsae.cache.shared import publish as publish_cache

            publish_cache(outcome.path, shared_root, log=rank0_log(world), progress=progress)
        typer.echo(outcome.path)


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(user_errors(harvest))
