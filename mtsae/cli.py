"""The `mtsae` command line: the app, the `cache` subcommands, and the entry point.

The other commands live in :mod:`mtsae.commands`, one module per stage, their options generated from the
settings dataclasses. Command bodies only parse options and call library functions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtsae import env
from mtsae.commands import analysis, evaluate, harvest, train, unlearn
from mtsae.commands.common import one_line, user_errors
from mtsae.errors import MtsaeError

app = typer.Typer(
    help="Multi-Scale Temporal Sparse Autoencoders: harvest activations, train SAEs, evaluate them with SAE-Bench.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
COMMAND_MODULES = (harvest, train, evaluate, analysis, unlearn)  # `mtsae --help` lists their commands in this order
for module in COMMAND_MODULES:
    module.register(app)
cache_app = typer.Typer(help="Inspect, verify and copy activation caches (local paths or s3://... URLs).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

@cache_app.command("info", epilog="Examples:\n\n  mtsae cache info caches/demo\n\n  mtsae cache info s3://bucket/caches/demo")
@user_errors
def cache_info(
    path: Annotated[str, typer.Argument(help="Cache path or fsspec URL.")],
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


@cache_app.command("verify", epilog="Examples:\n\n  mtsae cache verify caches/demo\n\n"
                                     "  mtsae cache verify s3://bucket/caches/demo    # reads every remote chunk")
@user_errors
def cache_verify(
    path: Annotated[str, typer.Argument(help="Cache path or fsspec URL.")],
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Check the manifest (schema, fingerprint of its content), the arrays against it, every chunk and index array
    against its crc32 checksums and sha256 digests, and report stray files; exit 1 on any problem. Digests prove the
    bytes are those recorded, not that they match the recipe: `mtsae cache audit` checks that."""
    from tqdm.auto import tqdm

    from mtsae.cache.verify import n_chunks_to_check, n_digests_to_check, verify_cache, verify_digests

    with tqdm(total=n_chunks_to_check(path), unit="chunk", desc="verify", disable=not progress) as bar:
        problems = verify_cache(path, progress=bar.update)
    digest_problems: list | None = []
    if not any(p.kind in ("invalid", "mismatch") for p in problems):  # else the manifest cannot say what to hash
        with tqdm(total=n_digests_to_check(path), unit="chunk", desc="digests", disable=not progress) as bar:
            digest_problems = verify_digests(path, progress=bar.update)
    seen = {(p.array, p.chunk) for p in problems}
    problems += [p for p in digest_problems or [] if (p.array, p.chunk) not in seen]  # one line per damaged chunk
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        raise MtsaeError(f"cache {path} failed verification: {len(problems)} problem(s) listed above")
    if digest_problems is None:
        typer.echo(f"note: {path} carries no content digest (written before mtsae recorded sha256 digests): its crc32 "
                   "checksums catch damage but not a deliberate edit; re-harvest it to get digests")
        typer.echo(f"ok: {path} matches its manifest, every chunk matches its checksum, no stray files")
    else:
        typer.echo(f"ok: {path} matches its manifest, every chunk matches its checksum and sha256 digest, "
                   "the manifest its data digest, no stray files")


@cache_app.command("audit", epilog=(
    "Cost: one model load plus one forward pass per audited sequence; on the embedded default (ctx 256) "
    "1.4-2 s per sequence on a loaded 2-core CPU. Tolerance (worst row's relative L2 error): float32 1e-3, float16 3e-2, bfloat16 0.1 "
    "(docs/cache-format.md).\n\nExamples:\n\n  mtsae cache audit caches/demo\n\n"
    "  mtsae cache audit s3://bucket/caches/3f2a9c1d0b7e --sequences 16 --device cuda"))
@user_errors
def cache_audit(
    path: Annotated[str, typer.Argument(help="Cache path or fsspec URL.")],
    sequences: Annotated[int, typer.Option(help="Stored sequences to re-run, chosen at random.")] = 4,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the choice (default: a fresh random one, printed).")] = None,
    device: Annotated[str, typer.Option(help="Where to run the model: auto, cpu, cuda, ...")] = "auto",
):
    """Re-run the recorded model on random stored sequences (their tokens from the cache) and compare its activations
    with the stored rows; exit 1 if any layer differs beyond the dtype's tolerance. The one check that ties a cache
    to its recipe: verify proves the bytes are those recorded, audit that the model computes them."""
    from mtsae.cache.audit import audit_or_refuse

    result = audit_or_refuse(path, sequences, seed=seed, device=device, log=lambda line: typer.echo(line, err=True))
    typer.echo(f"ok: {path} matches its recorded model: {result.summary()}")


@cache_app.command("ls", epilog="Examples:\n\n  mtsae cache ls caches/\n\n  mtsae cache ls s3://bucket/caches")
@user_errors
def cache_ls(root: Annotated[str, typer.Argument(help="Folder or fsspec URL to search for caches.")] = "caches"):
    """List every cache below a folder with its status, fingerprint, model, layers, tokens and size."""
    from mtsae.cache.catalog import find_caches, summary_row
    from mtsae.cache.remote import is_url, local_path

    if not is_url(root) and not Path(local_path(root)).is_dir():
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


@cache_app.command("pull", epilog=(
    "Examples:\n\n  mtsae cache pull s3://bucket/caches/3f2a9c1d0b7e             # into caches/<fingerprint[:12]>\n\n"
    "  mtsae cache pull s3://bucket/caches/gemma2b-pile /data/caches/gemma2b-pile   # re-run to resume"))
@user_errors
def cache_pull(
    url: Annotated[str, typer.Argument(help="fsspec URL of a complete cache (s3://..., gs://...).")],
    dest: Annotated[Optional[str], typer.Argument(help="Local folder. Default: caches/<fingerprint[:12]>.")] = None,
    jobs: Annotated[int, typer.Option(help="Objects downloaded at once.")] = 8,
    force: Annotated[bool, typer.Option(help="Replace another mtsae cache at DEST (never anything else).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Make, or resume, a local copy of a remote cache, verified against its per-chunk checksums; complete only at the end."""
    from mtsae.cache.transfer import pull

    outcome = pull(url, dest, force=force, jobs=jobs, progress=progress, log=lambda line: typer.echo(line, err=True))
    typer.echo(outcome.destination)


@cache_app.command("push", epilog=(
    "Examples:\n\n  mtsae cache push caches/demo s3://bucket/caches/demo\n\n"
    "  mtsae cache push caches/demo --shared-root s3://bucket/caches   # to s3://bucket/caches/<fingerprint[:12]>\n\n"
    "A shared root is write-once per fingerprint: pushing over another cache at its address is refused, even with --force."))
@user_errors
def cache_push(
    path: Annotated[str, typer.Argument(help="Local complete cache.")],
    url: Annotated[Optional[str], typer.Argument(help="Destination URL (or shared folder). Default: its address in the shared root.")] = None,
    shared_root: Annotated[Optional[str], typer.Option(envvar=env.SHARED_ROOT.name, help="Folder or URL of caches by fingerprint.")] = None,
    verify: Annotated[bool, typer.Option(help="Check the local cache's checksums before uploading.")] = True,
    jobs: Annotated[int, typer.Option(help="Objects uploaded at once.")] = 8,
    force: Annotated[bool, typer.Option(help="Replace another mtsae cache at URL (never anything else).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Upload a finished cache, resumably (objects already there are skipped); its manifest goes last."""
    from mtsae.cache.shared import refuse_overwrite, shared_address
    from mtsae.cache.transfer import complete_cache_attrs, push

    if url is None:
        if not shared_root:
            raise MtsaeError("give a destination URL, or --shared-root (or MTSAE_SHARED_ROOT) to push to its address there")
        attrs = complete_cache_attrs(path)
        url = shared_address(shared_root, attrs["fingerprint"])
        refuse_overwrite(url, attrs)  # write-once per fingerprint, --force or not
    outcome = push(path, url, force=force, verify=verify, jobs=jobs, progress=progress,
                   log=lambda line: typer.echo(line, err=True))
    typer.echo(outcome.destination)


@cache_app.command("upgrade", epilog=(
    "Examples:\n\n  mtsae cache upgrade caches/demo\n\n"
    "Safe to interrupt: the manifest is written last, so the cache stays readable (format 1 or 2); run it again "
    "to finish. docs/cache-format.md#version-2-and-the-upgrade"))
@user_errors
def cache_upgrade(path: Annotated[str, typer.Argument(help="Local complete cache.")]):
    """Upgrade a format-1 bfloat16 cache to format 2 in place: its activations become Zarr's bfloat16 (the same
    bytes), so zarr, xarray and tensorstore read values instead of uint16 bits. Rewrites metadata only."""
    from mtsae.cache.upgrade import upgrade_cache

    upgrade_cache(path, log=lambda line: typer.echo(line, err=True))
    typer.echo(path)


EXIT_USAGE = 2  # click's code for a command-line usage mistake (unknown option, missing or mistyped value)


def main() -> int:
    """The ``mtsae`` entry point: click's usage errors end in one ``error:`` line too (exit 2), not a framed box."""
    # click's exception classes, wherever this typer takes click from (recent typers vendor their own copy).
    clicks = sys.modules[typer.BadParameter.__module__]
    no_args = getattr(clicks, "NoArgsIsHelpError", ())  # click >= 8.2
    aborted = getattr(clicks, "Abort", None) or typer.Abort  # typer's vendored click keeps Abort in typer
    try:
        code = app(prog_name="mtsae", standalone_mode=False)
    except no_args:  # `mtsae`, `mtsae cache`: the help, as before
        return app(prog_name="mtsae", args=[*sys.argv[1:], "--help"], standalone_mode=False) or 0
    except clicks.UsageError as exc:
        hint = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
        typer.echo(f"error: {one_line(exc.format_message()).rstrip('.')}{hint}", err=True)
        return EXIT_USAGE
    except clicks.ClickException as exc:
        typer.echo(f"error: {one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except (aborted, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
