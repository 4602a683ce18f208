"""``mtsae unlearn``: the in-house unlearning benchmark (evaluate/unlearn.py) on SAE run folders.

Checks every run before scoring any (exists, causal, trained on a world model whose ``world.json``
matches this mtsae's world and its weights' sha256, layer and width fit), then runs
:func:`mtsae.evaluate.unlearn.sweep` per run and writes ``OUT/<run>.json`` and ``OUT/unlearn.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from mtsae.errors import MtsaeError
from mtsae.evaluate.unlearn import RESULT_VERSION, ModelPass, UnlearnSettings, model_pass, sweep
from mtsae.harvest import world as W

WORLD_FILE = "world.json"  # written by harvest/world_lm.py's _publish_model


@dataclass(frozen=True)
class WorldModel:
    path: Path
    record: dict[str, Any]
    world: W.World

    @property
    def label(self) -> str:
        """How every report names the model; "random weights" when it never trained."""
        r = self.record
        trained = f"{r.get('steps_done')} steps" if r.get("steps_done") else "random weights"
        return (f"world LM {self.path} (world v{r['world_version']} seed {r['world_seed']}, {trained}, "
                f"sha256 {str(r.get('weights_sha256'))[:12]})")


def world_model_path(info) -> Path:
    """The model folder a checkpoint was trained on: the shipped world LM (``world``, ``world:world-lm-v3``,
    checked against its pinned sha256), or a folder scripts/train_world_lm.py wrote."""
    from mtsae.evaluate.names import is_embedded, is_world

    name = info.model_name
    if is_world(name):
        from mtsae.harvest.world_assets import check_world_version, ensure_world_model

        check_world_version(name)
        return ensure_world_model()
    if is_embedded(name):
        raise MtsaeError(f"checkpoint {info.label} was trained on {name} (random weights), not on a world model; "
                         "the in-house unlearning benchmark needs an SAE trained on a world LM (docs/world.md)")
    path = Path(name).expanduser()
    if not (path / WORLD_FILE).is_file():
        raise MtsaeError(f"checkpoint {info.label} was trained on {name}, which is not a world model (no "
                         f"{WORLD_FILE}); the in-house unlearning benchmark needs an SAE trained on a world LM")
    return path


def read_world_model(path: Path) -> WorldModel:
    """``world.json`` checked against this mtsae's world and the weights' sha256."""
    from mtsae.harvest.world_lm import WEIGHTS_FILE, sha256_of

    try:
        record = json.loads((path / WORLD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise MtsaeError(f"cannot read {path / WORLD_FILE} ({exc}); the world model folder is damaged") from None
    if not isinstance(record, dict) or not isinstance(record.get("world_seed"), int):
        raise MtsaeError(f"{path / WORLD_FILE} has no integer world_seed; the world model folder is damaged")
    if record.get("world_version") != W.WORLD_VERSION:
        raise MtsaeError(f"{path} was trained on world version {record.get('world_version')!r}, this mtsae builds "
                         f"world version {W.WORLD_VERSION}; evaluate it with the mtsae version that trained it")
    weights = path / WEIGHTS_FILE
    if not weights.is_file() or sha256_of(weights) != record.get("weights_sha256"):
        raise MtsaeError(f"{weights} does not match the sha256 recorded in {path / WORLD_FILE}; the weights "
                         "were changed or damaged, retrain or restore them")
    return WorldModel(path, record, W.build_world(record["world_seed"]))


def check_causal(infos: Sequence, allow_non_causal: bool, log: Callable[[str], None]) -> None:
    """Splicing an SAE whose codes read later tokens lets the model see its future (as ``mtsae eval``)."""
    leaky = [info.label for info in infos if not info.is_causal]
    if not leaky:
        return
    if not allow_non_causal:
        raise MtsaeError(f"{', '.join(leaky)}: not causal (its codes at token t read tokens after t), so clamping "
                         "it would score a model that sees its own future; train with --padding causal, or pass "
                         "--allow-non-causal to run it anyway (results are flagged)")
    log(f"warning: {', '.join(leaky)} not causal; their scores come from a model that sees later tokens "
        "(flagged non_causal in the result)")


def check_fits(info, path: Path) -> None:
    """The checkpoint's layer and width exist in the model (its config only: before any weights load)."""
    from mtsae.evaluate.models import local_model_dims

    dims = local_model_dims(path)
    if info.layer >= dims.n_layers or info.d_in != dims.d_model:
        raise MtsaeError(f"checkpoint {info.label} reads layer {info.layer} with d_in {info.d_in}, but its model has "
                         f"{dims.n_layers} layers of width {dims.d_model}; it was trained on another model")


def load_model(path: Path, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


def result_file(out: Path, release: str) -> Path:
    return out / f"{release}.json"


def _check_out(out: Path, releases: Sequence[str], infos: Sequence) -> None:
    """Replace only our own earlier result for the same checkpoint; never another file."""
    for release, info in zip(releases, infos):
        path = result_file(out, release)
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
            ours = record.get("benchmark") == "mtsae-unlearn" and record["checkpoint"]["checkpoint"] == info.label
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ours = False
        if not ours:
            raise MtsaeError(f"{path} exists and is not this benchmark's result for {info.label}; "
                             "move it away or choose another --out")


def unlearn_runs(runs: Sequence[str], out: str | Path, settings: UnlearnSettings, device: str = "auto",
                 allow_non_causal: bool = False, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The benchmark for each run folder; writes ``OUT/<run>.json`` and ``OUT/unlearn.md``, returns the results.

    Every check (runs exist, causal, world models and their sha256, fit) runs before any scoring.
    """
    from mtsae.devices import resolve_device
    from mtsae.evaluate.adapter import load_adapter
    from mtsae.evaluate.checkpoints import read_checkpoint_info
    from mtsae.evaluate.run import release_names

    settings.validate()
    infos = [read_checkpoint_info(run) for run in runs]
    check_causal(infos, allow_non_causal, log)
    worlds = {path: read_world_model(path) for path in {world_model_path(info) for info in infos}}
    releases, out, torch_device = release_names(infos), Path(out), resolve_device(device)
    for info in infos:
        check_fits(info, world_model_path(info))
    _check_out(out, releases, infos)
    saes = [load_adapter(info, device=torch_device) for info in infos]  # refuses non-unit-norm decoders up front
    models = {path: load_model(path, torch_device) for path in worlds}
    results, plain_passes = [], {}  # the plain model's pass per (model, layer), shared by its SAEs
    with _threads_for(torch_device, max(m.config.hidden_size for m, _ in models.values())):
        for info, release, sae in zip(infos, releases, saes):
            path = world_model_path(info)
            log(f"[unlearn] {release}: {info.architecture} at layer {info.layer} on {worlds[path].label}")
            if (path, info.layer) not in plain_passes:
                plain_passes[path, info.layer] = model_pass(*models[path], info.layer, worlds[path].world, settings)
            results.append(_run_one(info, release, sae, worlds[path], models[path], settings, out,
                                    plain_passes[path, info.layer]))
    _write(out / "unlearn.md", markdown_report(results))
    return results


def _run_one(info, release: str, sae, wm: WorldModel, model_and_tokenizer: tuple, settings: UnlearnSettings,
             out: Path, plain: ModelPass) -> dict[str, Any]:
    model, tokenizer = model_and_tokenizer
    result = sweep(model, tokenizer, sae, info.layer, wm.world, settings, plain=plain)
    record = _record(info, release, wm, settings, result)
    _write(result_file(out, release), json.dumps(record, indent=1) + "\n")
    return record


SMALL_MODEL_WIDTH = 256  # below this, CPU threads only spin (docs/evaluation.md measured it for the embedded model)


@contextlib.contextmanager
def _threads_for(device: torch.device, width: int) -> Iterator[None]:
    """One intra-op thread for a small model on CPU, restored afterwards (as ``mtsae eval`` does)."""
    before = torch.get_num_threads()
    if device.type == "cpu" and width <= SMALL_MODEL_WIDTH:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _record(info, release: str, wm: WorldModel, settings: UnlearnSettings, result: dict) -> dict[str, Any]:
    return {
        "benchmark": "mtsae-unlearn", "version": RESULT_VERSION, "release": release, "model": wm.label,
        "model_path": str(wm.path), "world": {"version": wm.record["world_version"], "seed": wm.record["world_seed"]},
        "checkpoint": info.describe(), "non_causal": not info.is_causal, "settings": dataclasses.asdict(settings),
        **result,
    }


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a temporary sibling renamed into place."""
    import os

    from mtsae.errors import writing

    with writing(str(path), "rerun"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


# --------------------------------------------------------------------------- Markdown


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def markdown_summary(results: Sequence[dict]) -> str:
    """One row per run: the headline and the latent set it used."""
    lines = ["| run | model | arch | plain forget / retain acc. | forget drop at retain kept ≥ 0.99 | latents | clamp "
             "| forget-token coverage | retain FP rate |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        h = r["headline"]
        rates = next((s for s in r["latent_sets"] if s["latents"] == h["latents"]), {}) if h["latents"] else {}
        drop = _pct(h["forget_drop"]) if h["forget_drop"] is not None else f"not scorable ({h['reason']})"
        flag = " (non-causal)" if r["non_causal"] else ""
        lines.append(
            f"| {r['release']}{flag} | {r['model']} | {r['checkpoint']['architecture']} "
            f"| {_pct(r['plain_model']['forget_accuracy'])} / {_pct(r['plain_model']['retain_accuracy'])} "
            f"| {drop} | {h['latents'] if h['latents'] is not None else '–'} | {h['clamp'] if h['clamp'] else '–'} "
            f"| {_pct(rates.get('forget_token_coverage'))} | {_pct(rates.get('retain_false_positive_rate'))} |")
    return "\n".join(lines) + "\n"


def markdown_curve(result: dict) -> str:
    """forget kept / retain kept for each (latents asked, clamp); coverage and FP rate per latent set."""
    clamps = list(dict.fromkeys(p["clamp"] for p in result["curve"] if p["latents_requested"]))
    lines = [f"### {result['release']} — {result['model']}", "",
             "| latents (used) | " + " | ".join(f"clamp {c:g}: forget / retain kept" for c in clamps)
             + " | forget-token coverage | retain FP rate |", "|---" * (len(clamps) + 3) + "|"]
    for s in result["latent_sets"]:
        n = s["latents_requested"]
        cells = [next(p for p in result["curve"] if p["latents_requested"] == n and (p["clamp"] == c or not n))
                 for c in clamps]
        lines.append(f"| {n} ({s['latents']}) | " + " | ".join(f"{_pct(p['forget_kept'])} / {_pct(p['retain_kept'])}"
                                                             for p in cells)
                     + f" | {_pct(s['forget_token_coverage'])} | {_pct(s['retain_false_positive_rate'])} |")
    return "\n".join(lines) + "\n"


def markdown_report(results: Sequence[dict]) -> str:
    parts = ["# In-house unlearning benchmark (mtsae unlearn)", "", markdown_summary(results)]
    parts += [markdown_curve(r) for r in results]
    return "\n".join(parts)


def parse_numbers(text: str, option: str, kind: type = float) -> tuple:
    """``"1,2,5"`` → (1, 2, 5); one ``error:`` line for anything else."""
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values:
        raise MtsaeError(f"{option} takes comma-separated {kind.__name__}s like 1,2,5, got {text!r}")
    return values


def unlearn_missing(run_dirs: Sequence[Path], out: Path, log: Callable[[str], None] = print) -> None:
    """`mtsae experiment`'s step: the benchmark at its default settings for every finished run without a result."""
    from mtsae.evaluate.checkpoints import read_checkpoint_info
    from mtsae.evaluate.run import release_names

    from mtsae.train.rundir import RunDir

    finals = [RunDir(d).final for d in run_dirs if RunDir(d).final.is_dir()]
    if not finals:
        return
    releases = release_names([read_checkpoint_info(str(f)) for f in finals])
    missing = [str(f) for f, release in zip(finals, releases) if not result_file(out, release).is_file()]
    if missing:
        log(f"[experiment] mtsae unlearn on {len(missing)} run(s) -> {out}")
        unlearn_runs(missing, out, UnlearnSettings(progress=False), log=log)


def read_results(out: Path) -> list[dict]:
    """The results an experiment's unlearn folder holds (none when it has no such folder)."""
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))] if out.is_dir() else []


def report_section(results: Sequence[dict], not_matched: set[str] = frozenset()) -> list[str]:
    """The experiment report's unlearning section for ``results`` (``read_results``): the across-seeds summary
    (without the ``not_matched`` runs) and one row per result (none: no section)."""
    if not results:
        return []
    from mtsae.evaluate.unlearn_summary import summary_section

    return ["## Unlearning: `mtsae unlearn` (fact completion on the world)", "", *summary_section(results, not_matched),
            markdown_summary(results), "Per-run curves: `unlearn/unlearn.md` (docs/unlearning.md).", ""]
