"""The `mtsae` command line. Command bodies only parse options and call library functions."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mtsae.errors import MtsaeError
from mtsae.harvest.config import HarvestConfig, help_text

app = typer.Typer(
    help="Multi-Scale Temporal Sparse Autoencoders: harvest activations, train SAEs, evaluate them with SAE-Bench.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
cache_app = typer.Typer(help="Inspect, verify and copy activation caches (local paths or s3://... URLs).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

EXIT_USER_ERROR = 1

if TYPE_CHECKING:  # torch: imported by the commands that run, so --help and usage errors stay fast
    from mtsae.distributed import World


def user_errors(command):
    """Turn a user mistake into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MtsaeError as exc:
            typer.echo(f"error: {one_line(str(exc))}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except OSError as exc:  # the machine's part (a path too long, a folder that vanished), not a bug of ours
            where = f" ({exc.filename})" if exc.filename else ""
            typer.echo(f"error: {one_line(f'{exc.strerror or exc}{where}')}; check the paths given and their "
                       "permissions, then re-run", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except MemoryError:
            typer.echo("error: not enough memory for what the options ask; lower the sizes (--d-sae, "
                       "--batch-size, --n-features, ...)", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing was marked complete", err=True)
            raise typer.Exit(130) from None

    return wrapper


def one_line(text: str) -> str:
    """Line breaks and control characters a user typed into a value (a path) must not split the error line."""
    import unicodedata

    return "".join(ch if ch == "\t" or unicodedata.category(ch) not in ("Cc", "Zl", "Zp")
                   else ch.encode("unicode_escape").decode() for ch in text)


def rank0_log(world: "World"):
    """Progress lines go to stderr from rank 0 only (every rank would print the same)."""
    return (lambda line: typer.echo(line, err=True)) if world.is_main else (lambda _line: None)


def training_backend(device: str | None) -> str:
    """nccl when training on CUDA, gloo otherwise (CPU, and the tests)."""
    import torch

    wants_cuda = (device or "auto") == "auto" and torch.cuda.is_available() or str(device).startswith("cuda")
    return "nccl" if wants_cuda else "gloo"


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
        "--max-tokens 10000000 --out /data/caches/gemma2b-pile\n\n"
        "  mtsae harvest --out s3://bucket/caches/demo           # straight into object storage\n\n"
        "  mtsae harvest --shared-root s3://bucket/caches        # reuse the team's copy if it exists, else publish"
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
    out: Annotated[Optional[str], typer.Option(help="Output store path or fsspec URL (s3://...); default caches/<fingerprint[:12]>.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing mtsae cache at --out (never anything else).")] = False,
    shared_root: Annotated[Optional[str], typer.Option(envvar="MTSAE_SHARED_ROOT", help="Folder or URL of caches by "
                           "fingerprint: a complete cache of this harvest there is reused, not recomputed (docs/remote-caches.md).")] = None,
    publish: Annotated[bool, typer.Option(help="With a shared root: push the finished cache there.")] = True,
    check_shared: Annotated[bool, typer.Option(help="With a shared root: before reusing its cache, check its sha256 "
                            "digests and audit 2 sequences with the model (docs/cache-format.md, threat model); "
                            "--no-check-shared trusts everyone who can write the root.")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Run a causal LM over a text dataset and store its residual stream in a Zarr v3 cache."""
    from mtsae.distributed import process_group
    from mtsae.harvest.run import harvest as run_harvest

    cfg = HarvestConfig(
        model=model, model_revision=model_revision, dataset=dataset, dataset_config=dataset_config,
        dataset_revision=dataset_revision, split=split, text_column=text_column, layers=parse_layers(layers),
        context_len=context_len, max_tokens=max_tokens, batch_size=batch_size, dtype=dtype, device=device,
        attn_implementation=attn_implementation, chunk_tokens=chunk_tokens, compression=compression,
    )
    with process_group("gloo") as world:  # under torchrun the ranks share the harvest (docs/scaling.md)
        outcome = run_harvest(cfg, out, force=force, log=rank0_log(world), progress=progress, world=world,
                              shared_root=shared_root, check_shared=check_shared)
    if world.is_main:
        if shared_root and publish:
            from mtsae.cache.shared import publish as publish_cache

            publish_cache(outcome.path, shared_root, log=rank0_log(world), progress=progress)
        typer.echo(outcome.path)


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
    shared_root: Annotated[Optional[str], typer.Option(envvar="MTSAE_SHARED_ROOT", help="Folder or URL of caches by fingerprint.")] = None,
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


# --- mtsae train ---------------------------------------------------------------------------------
from mtsae.train import config as train_config  # noqa: E402  (the train command's option docs)
from mtsae.train.presets import describe_presets  # noqa: E402
from mtsae.train.registry import builtin_architecture_names  # noqa: E402


def _train_help(name: str, extra: str = "") -> str:
    """A TrainConfig field's documentation, plus its default when the text does not state one."""
    text = train_config.help_text(name) + extra
    if "Default:" not in text and "(required)" not in text:
        default = train_config.field_default(name)
        text += " Default: not set." if default is None else f" Default: {default}."
    return text


def _arch_help(text: str) -> str:
    return f"Architecture option: {text} Default: the preset's, else the architecture's (see docs/architectures.md)."


@app.command(
    epilog=(
        "Options given on the command line override --config; a --preset fills arch, arch options, layer, "
        "d-sae, lr and window unless given.\n\n"
        "Examples:\n\n"
        "  mtsae train --cache caches/demo --preset run0 --d-sae 512 --out runs/demo-run0\n\n"
        "  mtsae train --cache caches/demo --layer 19 --arch mtsae --preset run2 --d-sae 512 --out runs/demo-run2\n\n"
        "  mtsae train --config train.toml --out runs/big --resume          # continue after an interruption\n\n"
        "  mtsae train --cache caches/demo --arch topk --k 32 --steps 2000 --out runs/topk --force\n\n"
        "  mtsae train --cache caches/demo --preset run2 --target-l0 16 --out runs/run2-l0-16   # matched sparsity"
    )
)
@user_errors
def train(
    config: Annotated[Optional[Path], typer.Option(help="TOML file of training options: the names below "
                                                       "with _ for -, plus an arch_config table.")] = None,
    cache: Annotated[Optional[str], typer.Option(help=_train_help("cache"))] = None,
    out: Annotated[Optional[str], typer.Option(help=_train_help("out"))] = None,
    preset: Annotated[Optional[str], typer.Option(help=_train_help("preset", f" One of: {describe_presets()}."))] = None,
    arch: Annotated[Optional[str], typer.Option(help=_train_help("arch", f" One of: {', '.join(builtin_architecture_names())}."))] = None,
    layer: Annotated[Optional[int], typer.Option(help=_train_help("layer"))] = None,
    d_sae: Annotated[Optional[int], typer.Option(help=_train_help("d_sae"))] = None,
    l1_coefficient: Annotated[Optional[float], typer.Option(help=_arch_help("L1 penalty weight (relu, mtsae)."))] = None,
    k: Annotated[Optional[int], typer.Option(help=_arch_help("active latents per token (topk, batchtopk, mtsae with activation=topk)."))] = None,
    dilations: Annotated[Optional[str], typer.Option(help=_arch_help("comma-separated dilation rates, e.g. 1,3,9 (mtsae)."))] = None,
    cos_coefficient: Annotated[Optional[float], typer.Option(help=_arch_help("adjacent-step cosine separation weight (mtsae)."))] = None,
    padding: Annotated[Optional[str], typer.Option(help=_arch_help("temporal padding: causal (the architecture default; the only one that may be spliced into a model), or circular, replicate, zeros, which read later tokens (mtsae)."))] = None,
    kernel_size: Annotated[Optional[int], typer.Option(help=_arch_help("taps per temporal kernel (mtsae)."))] = None,
    dead_tokens_threshold: Annotated[Optional[int], typer.Option(help=_arch_help("training tokens without firing after which a feature counts as dead (all)."))] = None,
    arch_option: Annotated[Optional[list[str]], typer.Option(help="Any other architecture option as KEY=VALUE (JSON value), repeatable, e.g. --arch-option activation=topk.")] = None,
    window: Annotated[Optional[int], typer.Option(help=_train_help("window"))] = None,
    stride: Annotated[Optional[int], typer.Option(help=_train_help("stride"))] = None,
    batch_windows: Annotated[Optional[int], typer.Option(help=_train_help("batch_windows"))] = None,
    train_tokens: Annotated[Optional[int], typer.Option(help=_train_help("train_tokens"))] = None,
    steps: Annotated[Optional[int], typer.Option(help=_train_help("steps"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=_train_help("lr"))] = None,
    lr_warmup_steps: Annotated[Optional[int], typer.Option(help=_train_help("lr_warmup_steps"))] = None,
    lr_decay: Annotated[Optional[str], typer.Option(help=_train_help("lr_decay"))] = None,
    lr_decay_fraction: Annotated[Optional[float], typer.Option(help=_train_help("lr_decay_fraction"))] = None,
    sparsity_warmup_steps: Annotated[Optional[int], typer.Option(help=_train_help("sparsity_warmup_steps"))] = None,
    target_l0: Annotated[Optional[float], typer.Option(help=_train_help("target_l0"))] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help=_train_help("grad_clip"))] = None,
    normalize_activations: Annotated[Optional[str], typer.Option(help=_train_help("normalize_activations"))] = None,
    holdout_fraction: Annotated[Optional[float], typer.Option(help=_train_help("holdout_fraction"))] = None,
    eval_every: Annotated[Optional[int], typer.Option(help=_train_help("eval_every"))] = None,
    eval_tokens: Annotated[Optional[int], typer.Option(help=_train_help("eval_tokens"))] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help=_train_help("checkpoint_every"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_train_help("seed"))] = None,
    device: Annotated[Optional[str], typer.Option(help=_train_help("device"))] = None,
    dtype: Annotated[Optional[str], typer.Option(help=_train_help("dtype"))] = None,
    prefetch_batches: Annotated[Optional[int], typer.Option(help=_train_help("prefetch_batches"))] = None,
    wandb: Annotated[Optional[str], typer.Option("--wandb", metavar="PROJECT", help=_train_help("wandb"))] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint (same options).")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing run in --out (never a folder that is not an mtsae run).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Train an SAE on a cache's activations; prints the final held-out metrics and checkpoint path."""
    from mtsae.distributed import process_group
    from mtsae.train.trainer import train as run_train

    arch_config = {
        "l1_coefficient": l1_coefficient, "k": k, "dilations": train_config.parse_int_list(dilations, "--dilations"),
        "cos_coefficient": cos_coefficient, "padding": padding, "kernel_size": kernel_size,
        "dead_tokens_threshold": dead_tokens_threshold,
    }
    arch_config = {key: value for key, value in arch_config.items() if value is not None}
    arch_config.update(train_config.parse_assignments(arch_option))
    overrides = dict(
        cache=cache, out=out, preset=preset, arch=arch, layer=layer, d_sae=d_sae, arch_config=arch_config or None,
        window=window, stride=stride, batch_windows=batch_windows, train_tokens=train_tokens, steps=steps, lr=lr,
        lr_warmup_steps=lr_warmup_steps, lr_decay=lr_decay, lr_decay_fraction=lr_decay_fraction,
        sparsity_warmup_steps=sparsity_warmup_steps, target_l0=target_l0, grad_clip=grad_clip, normalize_activations=normalize_activations,
        holdout_fraction=holdout_fraction, eval_every=eval_every, eval_tokens=eval_tokens,
        checkpoint_every=checkpoint_every, seed=seed, device=device, dtype=dtype, prefetch_batches=prefetch_batches,
        wandb=wandb,
    )
    cfg = train_config.load_config(config, overrides)
    with process_group(training_backend(cfg.device)) as world:  # torchrun: data-parallel (docs/scaling.md)
        result = run_train(cfg, resume=resume, force=force, progress=progress, log=rank0_log(world), world=world)
    if not world.is_main:
        return
    metrics = " ".join(f"{name}={result.metrics[name]:.4g}" for name in ("mse", "fve", "l0", "dead_fraction", "sep"))
    short, sequences, short_tokens, tokens = result.too_short
    typer.echo(f"held-out after {result.steps:,} steps ({result.tokens:,} tokens): {metrics}; never trained on: "
               f"{short:,} of {sequences:,} train sequences ({short_tokens:,} of {tokens:,} tokens, "
               f"{short_tokens / max(tokens, 1):.1%}) are shorter than the {cfg.window}-token window")
    typer.echo(result.checkpoint)


# --- mtsae eval ----------------------------------------------------------------------------------
from mtsae.evaluate import config as eval_config  # noqa: E402  (the eval command's option docs)


@app.command(
    "eval",
    epilog=(
        "Examples:\n\n"
        "  mtsae eval runs/demo/final --out results/demo                 # embedded model: offline, tiny settings\n\n"
        "  mtsae eval runs/g2b/final --out results/g2b --forget-corpus bio-forget-corpus.jsonl   # gemma-2-2b, standard\n\n"
        "  mtsae eval runs/a/final runs/b/final --out results/ab --evals core,sparse_probing --config eval.toml\n\n"
        "  mtsae eval runs/g2b/final --out results/g2b --offline /data/sae-bench-mirror\n\n"
        "  mtsae eval runs/g2b/final --saelens gemma-scope-2b-pt-res-canonical:layer_19/width_16k/canonical --out results/vs"
    ),
)
@user_errors
def eval_command(
    checkpoints: Annotated[Optional[list[str]], typer.Argument(help=eval_config.help_text("checkpoints"))] = None,
    out: Annotated[str, typer.Option(help=eval_config.help_text("out"))] = "",
    saelens: Annotated[Optional[list[str]], typer.Option(
        "--saelens", metavar="RELEASE:ID", help=eval_config.help_text("saelens") + " Repeatable.")] = None,
    evals: Annotated[str, typer.Option(help=eval_config.help_text("evals") + " Comma-separated.")] = ",".join(eval_config.EVALS),
    model: Annotated[Optional[str], typer.Option(help=eval_config.help_text("model"))] = None,
    unlearning_model: Annotated[Optional[str], typer.Option(help=eval_config.help_text("unlearning_model"))] = None,
    profile: Annotated[str, typer.Option(help=eval_config.help_text("profile"))] = "auto",
    config: Annotated[Optional[str], typer.Option(help=eval_config.help_text("config_file"))] = None,
    offline: Annotated[Optional[str], typer.Option(help=eval_config.help_text("offline"))] = None,
    forget_corpus: Annotated[Optional[str], typer.Option(help=eval_config.help_text("forget_corpus"))] = None,
    device: Annotated[str, typer.Option(help=eval_config.help_text("device"))] = "auto",
    llm_dtype: Annotated[Optional[str], typer.Option(help=eval_config.help_text("llm_dtype"))] = None,
    llm_batch_size: Annotated[Optional[int], typer.Option(help=eval_config.help_text("llm_batch_size"))] = None,
    force: Annotated[bool, typer.Option(help=eval_config.help_text("force"))] = False,
    keep_artifacts: Annotated[bool, typer.Option(help=eval_config.help_text("keep_artifacts"))] = False,
    allow_non_causal: Annotated[bool, typer.Option(help=eval_config.help_text("allow_non_causal"))] = False,
):
    """Run SAE-Bench's core, sparse probing, unlearning and absorption evals on checkpoints; prints a summary."""
    from mtsae.evaluate.run import evaluate

    cfg = eval_config.EvalConfig(
        checkpoints=checkpoints or [], saelens=saelens or [], out=out, evals=[e.strip() for e in evals.split(",") if e.strip()], model=model,
        unlearning_model=unlearning_model, profile=profile, config_file=config, offline=offline,
        forget_corpus=forget_corpus, device=device, llm_dtype=llm_dtype, llm_batch_size=llm_batch_size,
        force=force, keep_artifacts=keep_artifacts, allow_non_causal=allow_non_causal,
    )
    summary = evaluate(cfg, log=lambda line: typer.echo(line, err=True))
    typer.echo(summary.table())
    typer.echo(f"summary: {summary.path}")
    if summary.failed:
        raise MtsaeError(f"{len(summary.failed)} eval result(s) failed; see {summary.path} and the *_error.txt files")


# --- mtsae unlearn (evaluate/unlearn.py; docs/unlearning.md) ----------------------------------------
@app.command(epilog="Examples:\n\n  mtsae unlearn runs/world-relu runs/world-mtsae --out results/unlearn\n\n"
                     "  mtsae unlearn runs/world-mtsae --latents 1,5,20 --clamp 5,50 --retain-threshold 0.001")
@user_errors
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


# --- mtsae synth / analyze / report / experiment --------------------------------------------------
from mtsae.harvest import synth as synth_module  # noqa: E402  (option docs)


def _synth_help(name: str) -> str:
    from dataclasses import fields

    return next(f.metadata["help"] for f in fields(synth_module.SynthConfig) if f.name == name)


@app.command(epilog="Examples:\n\n  mtsae synth --out caches/synth\n\n  mtsae synth --out caches/synth-big --n-features 1024 --n-sequences 4000")
@user_errors
def synth(
    out: Annotated[str, typer.Option(help="Output store path or fsspec URL (must not exist).")],
    d_model: Annotated[int, typer.Option(help=_synth_help("d_model"))] = 64,
    n_features: Annotated[int, typer.Option(help=_synth_help("n_features"))] = 256,
    n_sequences: Annotated[int, typer.Option(help=_synth_help("n_sequences"))] = 800,
    seq_len: Annotated[int, typer.Option(help=_synth_help("seq_len"))] = 256,
    min_dwell: Annotated[float, typer.Option(help=_synth_help("min_dwell"))] = 1.0,
    max_dwell: Annotated[float, typer.Option(help=_synth_help("max_dwell"))] = 100.0,
    p_active: Annotated[float, typer.Option(help=_synth_help("p_active"))] = 0.02,
    noise: Annotated[float, typer.Option(help=_synth_help("noise"))] = 0.05,
    slow_scale: Annotated[float, typer.Option(help=_synth_help("slow_scale"))] = 1.0,
    slow_from: Annotated[float, typer.Option(help=_synth_help("slow_from"))] = 32.0,
    seed: Annotated[int, typer.Option(help=_synth_help("seed"))] = 0,
):
    """Write a synthetic cache of known multi-scale temporal features (ground truth stored beside them)."""
    from mtsae.cache.remote import exists

    cfg = synth_module.SynthConfig(d_model=d_model, n_features=n_features, n_sequences=n_sequences, seq_len=seq_len,
                                   min_dwell=min_dwell, max_dwell=max_dwell, p_active=p_active, noise=noise, seed=seed,
                                   slow_scale=slow_scale, slow_from=slow_from)
    cfg.validate()  # before the output check: a bad value is named even when --out is taken
    if exists(out):  # a path or a URL (s3://...)
        raise MtsaeError(f"{out} already exists; choose a new --out")
    attrs = synth_module.synthesize(cfg, out)
    typer.echo(f"wrote {attrs['counts']['tokens']:,} tokens of {n_features} known features to {out}", err=True)
    typer.echo(out)


@app.command(epilog="Example:\n\n  mtsae analyze runs/demo-run2 --out runs/demo-run2/analysis.json")
@user_errors
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


@app.command(epilog="Example:\n\n  mtsae report runs/demo-run0 runs/demo-run2 --out reports/demo")
@user_errors
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


@app.command(epilog="Examples:\n\n  mtsae experiment embedded        # the seed's four runs + TopK/BatchTopK/JumpReLU, SAE-Bench, report\n\n"
                     "  mtsae experiment synthetic       # ground-truth recovery benchmark\n\n  mtsae experiment my-experiment.toml")
@user_errors
def experiment(
    config: Annotated[str, typer.Argument(help="TOML file, or a built-in experiment: embedded (the demo's), embedded-full (adds absorption and all 8 sparse-probing datasets), synthetic.")],
    out: Annotated[Optional[str], typer.Option(help="Override the config's output folder.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
):
    """Train every declared run that is missing, evaluate, analyse, and write the report."""
    from mtsae.evaluate.experiment import load_experiment, run_experiment

    cfg = load_experiment(config, out)
    run_experiment(cfg, log=lambda line: typer.echo(line, err=True), progress=progress)
    typer.echo(str(Path(cfg.out) / "report" / "report.html"))


EXIT_USAGE = 2  # click's code for a command-line usage mistake (unknown option, missing or mistyped value)


def main() -> int:
    """The ``mtsae`` entry point: click's usage errors end in one ``error:`` line too (exit 2), not a framed box."""
    # click's exception classes, wherever this typer takes click from (recent typers vendor their own copy).
    clicks = sys.modules[typer.BadParameter.__module__]
    no_args = getattr(clicks, "NoArgsIsHelpError", ())  # click >= 8.2
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
    except clicks.Abort:
        typer.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
