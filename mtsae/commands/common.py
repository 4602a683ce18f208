"""What every command shares: one-line user errors, rank-0 logging, the training process group's backend."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import typer

from mtsae.errors import MtsaeError

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
