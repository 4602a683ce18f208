"""`mtsae experiment`: a declared set of runs on one cache -> trained, evaluated, analysed, reported.

A config is a TOML file (or a built-in name: ``embedded``, the demo, and the others in
:mod:`mtsae.evaluate.experiment_builtins`)::

    out = "experiments/embedded"
    evals = ["core", "sparse_probing", "unlearning", "absorption"]   # [] to skip SAE-Bench
    [harvest]            # or: cache = "path/to/cache", or a [synth] table (mtsae synth settings)
    max_tokens = 262144
    [defaults]           # TrainConfig fields shared by every run
    d_sae = 512
    train_tokens = 1200000
    [[runs]]
    name = "baseline_sae"
    preset = "run0"
    [[runs]]
    name = "topk"
    arch = "topk"
    arch_config = { k = 32 }

A ``[temporal_synth]`` table instead of runs and a cache (the built-in ``temporal-synth``) runs the
temporal benchmark of evaluate/temporal_synth.py — temporal vs per-token SAEs trained in memory on
synthetic regimes, at matched L0, over seeds — with the table's sizes (its ``Budget``; ``{}``: the
measured defaults), and writes ``<out>/report/`` with the verdict per regime::

    out = "experiments/temporal-synth-5seeds"
    [temporal_synth]
    seeds = 5

``match_l0 = [5, 16]`` trains every run once per level, at that L0: TopK-style
runs get ``k = level``, the others ``target_l0 = level`` (their sparsity
coefficient adapts, see train/sparsity_control.py); the run ``topk`` becomes
``topk-l0_5`` and ``topk-l0_16``. Comparisons (the ground-truth verdict) are
then made within one level, at matched L0.

Re-running skips every finished step: a run with ``final/`` is not retrained,
one with ``eval/summary.json`` not re-evaluated, one with ``analysis.json``
not re-analysed. A run that fails is reported as such; the others go on.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mtsae.errors import MtsaeError
from mtsae.evaluate.experiment_builtins import BUILTIN
from mtsae.train.rundir import RunDir
from mtsae.values import did_you_mean




@dataclass
class ExperimentConfig:
    out: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    cache: str | None = None
    harvest: dict[str, Any] | None = None
    synth: dict[str, Any] | None = None
    evals: list[str] = field(default_factory=list)
    eval_options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    harvest_out: str | None = None  # where a [harvest] table writes; default caches/<fingerprint[:12]>
    match_l0: list[float] = field(default_factory=list)  # train every run at each of these L0s
    unlearn: bool = False  # also run `mtsae unlearn` (world-LM runs only) and report it
    temporal_synth: dict[str, Any] | None = None  # the temporal benchmark's sizes, instead of runs on a cache

    def expanded_runs(self) -> list[dict[str, Any]]:
        """The runs to train: ``runs`` as given, or one copy per ``match_l0`` level."""
        if not self.match_l0:
            return self.runs
        return [at_l0(spec, level, self.defaults) for level in self.match_l0 for spec in self.runs]

    def validate(self) -> None:
        if self.temporal_synth is not None:
            return self._validate_benchmark()
        sources = [s for s in (self.cache, self.harvest, self.synth) if s is not None]
        if len(sources) != 1:
            raise MtsaeError("an experiment needs exactly one of: cache = PATH, a [harvest] table, a [synth] table")
        names = [r.get("name") for r in self.runs]
        if not self.runs or None in names or len(set(names)) != len(names):
            raise MtsaeError("every [[runs]] entry needs a unique name")
        if not isinstance(self.match_l0, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in self.match_l0):
            raise MtsaeError(f"match_l0 must be a list of positive numbers such as [5, 16], got {self.match_l0!r}")

    def _validate_benchmark(self) -> None:
        """A [temporal_synth] experiment trains its own models in memory: nothing else may be declared."""
        from mtsae.evaluate.temporal_synth import Budget

        plain = ExperimentConfig(out=self.out, temporal_synth=self.temporal_synth)
        clashing = [f for f in self.__dataclass_fields__ if getattr(self, f) != getattr(plain, f)]
        if clashing:
            raise MtsaeError(f"a [temporal_synth] experiment trains its own models on synthetic data; remove "
                             f"{', '.join(clashing)} from it (or the [temporal_synth] table)")
        if not isinstance(self.temporal_synth, dict):
            raise MtsaeError(f"temporal_synth must be a table of sizes, got {self.temporal_synth!r}")
        Budget.from_table(self.temporal_synth)  # bad sizes are refused now, not after minutes of training


def at_l0(spec: dict[str, Any], level: float, defaults: dict[str, Any]) -> dict[str, Any]:
    """``spec`` trained at L0 ``level``: ``k`` for TopK-style architectures, ``target_l0`` for the others."""
    from mtsae.train.config import TrainConfig
    from mtsae.train.registry import get_architecture

    arch = TrainConfig.from_dict(_train_fields(defaults, spec)).arch  # the trainer's own preset/default resolution
    matched = {**spec, "name": f"{spec['name']}-l0_{level:g}"}
    if get_architecture(arch).sparsity_coefficient is None:
        if level != int(level):
            raise MtsaeError(f"match_l0 level {level} is not a whole number, and {arch} sets L0 through an integer k")
        matched["arch_config"] = {**spec.get("arch_config", {}), "k": int(level)}
    else:
        matched["target_l0"] = level
    return matched


def load_experiment(spec: str, out: str | None = None) -> ExperimentConfig:
    """A built-in name or a TOML path; ``out`` overrides the config's folder."""
    if spec in BUILTIN:
        raw = copy.deepcopy(BUILTIN[spec])
        if callable(raw.get("evals")):
            raw["evals"] = raw["evals"]()
    else:
        path = Path(spec)
        if not path.is_file():
            raise MtsaeError(f"experiment config {spec} not found{did_you_mean(spec, BUILTIN)}; pass a TOML file or one "
                             f"of {', '.join(BUILTIN)}")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise MtsaeError(f"experiment config {spec} is not valid TOML: {exc}") from None
    if out is not None:
        raw["out"] = out
    known = set(ExperimentConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise MtsaeError(f"unknown experiment key(s) {unknown}; valid keys: {sorted(known)}")
    if "out" not in raw or ("runs" not in raw and "temporal_synth" not in raw):
        raise MtsaeError("an experiment config needs `out` and at least one [[runs]] table (or a [temporal_synth] table)")
    cfg = ExperimentConfig(**raw)
    cfg.validate()
    return cfg


def run_experiment(cfg: ExperimentConfig, *, log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.temporal_synth is not None:
        from mtsae.evaluate import temporal_synth  # torch: only when asked

        return temporal_synth.experiment(cfg.temporal_synth, out / "report", log)
    cache = _ensure_cache(cfg, out, log, progress)
    runs = cfg.expanded_runs()
    run_dirs = [out / "runs" / spec["name"] for spec in runs]
    trained = [d for spec, d in zip(runs, run_dirs) if _train(cfg, spec, cache, d, log, progress)]
    if cfg.evals:
        _evaluate(cfg, trained, out / "eval", log, progress)
    if cfg.unlearn:
        from mtsae.evaluate import unlearn_runs  # torch: only when asked

        unlearn_runs.unlearn_missing(trained, out / "unlearn", log)
    for run_dir in trained:
        _analyze(run_dir, cache, log)
    return _report(run_dirs, out / "report", log)


def _ensure_cache(cfg: ExperimentConfig, out: Path, log, progress) -> str:
    if cfg.cache is not None:
        from mtsae.cache import open_cache

        open_cache(cfg.cache)  # refuses a missing or incomplete cache up front
        return cfg.cache
    if cfg.synth is not None:
        from mtsae.cache import read_attrs
        from mtsae.harvest.synth import SynthConfig, synthesize

        path = out / "synth.zarr"
        if (read_attrs(path) or {}).get("status") != "complete":
            log(f"[experiment] writing the synthetic cache {path}")
            synthesize(SynthConfig(**cfg.synth), str(path))
        return str(path)
    from mtsae.cache.shared import publish
    from mtsae.cache.shared import shared_root as root_in_effect
    from mtsae.harvest.config import HarvestConfig
    from mtsae.harvest.run import harvest

    # The default, content-addressed path (caches/<fingerprint>): shared with any harvest of the same settings;
    # with a team's shared root (MTSAE_SHARED_ROOT), its copy is reused, or this harvest is published there.
    shared_root = root_in_effect()  # MTSAE_SHARED_ROOT, as for `mtsae harvest`
    outcome = harvest(HarvestConfig(**cfg.harvest), cfg.harvest_out, log=log, progress=progress, shared_root=shared_root)
    if shared_root:
        publish(outcome.path, shared_root, log=log, progress=progress)
    return outcome.path


def _train(cfg: ExperimentConfig, spec: dict[str, Any], cache: str, run_dir: Path, log, progress) -> bool:
    """Train one run unless it is finished; True when a final checkpoint exists afterwards."""
    from mtsae.train.config import TrainConfig
    from mtsae.train.trainer import train

    if RunDir(run_dir).is_finished:
        log(f"[experiment] {spec['name']}: already trained, skipping")
        return True
    try:
        train_cfg = TrainConfig(**_train_fields(cfg.defaults, spec), cache=cache, out=str(run_dir))
        log(f"[experiment] {spec['name']}: training ({train_cfg.arch}, preset {train_cfg.preset})")
        train(train_cfg, force=True, progress=progress, log=log)
    except MtsaeError as exc:
        log(f"[experiment] {spec['name']}: training failed: {exc}")
    except TypeError as exc:
        raise MtsaeError(f"run {spec['name']}: {exc}") from None
    return RunDir(run_dir).is_finished


def _train_fields(defaults: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A run's TrainConfig fields: the experiment's defaults, then the run's own (its name is not one)."""
    return {**defaults, **{k: v for k, v in spec.items() if k != "name"}}


def _evaluate(cfg: ExperimentConfig, run_dirs: list[Path], out: Path, log, progress: bool = True) -> None:
    """One SAE-Bench pass over every run not yet evaluated (the model and probing data load once);
    each run then gets its own rows in ``<run>/eval/summary.json``."""
    from mtsae.evaluate.config import EvalConfig
    from mtsae.evaluate.run import evaluate

    pending = [d for d in run_dirs if not RunDir(d).eval_summary.is_file()]
    for d in set(run_dirs) - set(pending):
        log(f"[experiment] {d.name}: already evaluated, skipping")
    if not pending:
        return
    log(f"[experiment] SAE-Bench {', '.join(cfg.evals)} on {', '.join(d.name for d in pending)}")
    try:
        summary = evaluate(EvalConfig(checkpoints=[str(RunDir(d).final) for d in pending], out=str(out),
                                      evals=list(cfg.evals), **cfg.eval_options), log=log, progress=progress)
    except MtsaeError as exc:
        log(f"[experiment] evaluation failed: {exc}")
        return
    for d in pending:
        run = RunDir(d)
        final = str(run.final.resolve())
        rows = [r for r in summary.rows if r["checkpoint"] == final]
        run.eval_summary.parent.mkdir(exist_ok=True)
        run.eval_summary.write_text(json.dumps({**summary.data, "results": rows}, indent=2, default=str) + "\n")


def _analyze(run_dir: Path, cache: str, log) -> None:
    from mtsae.evaluate.analysis import analyze_run

    target = RunDir(run_dir).analysis
    if target.is_file():
        return
    log(f"[experiment] {run_dir.name}: disentanglement analysis")
    target.write_text(json.dumps(analyze_run(str(run_dir), cache_path=cache), indent=2) + "\n")


def _report(run_dirs: list[Path], out: Path, log) -> dict[str, Any]:
    from mtsae.evaluate.report import load_run, write_records_report
    from mtsae.evaluate.unlearn_runs import read_results

    analyses = {d.name: json.loads(RunDir(d).analysis.read_text()) for d in run_dirs if RunDir(d).analysis.is_file()}
    records = [load_run(d) for d in run_dirs]  # once, for the sections and the report
    unlearn = read_results(out.parent / "unlearn")
    sections = seeds_section(records, unlearn) + analysis_sections(analyses) + unlearn_section(unlearn, records)
    data = write_records_report(records, out, analyses=analyses, extra_sections=sections)
    flagged = [r for r in data["runs"] if r["flags"]]
    for r in flagged:
        log(f"[experiment] FLAGGED {r['name']}: {'; '.join(r['flags'])}")
    log(f"[experiment] report: {out / 'report.html'}")
    return data


def seeds_section(records: list, unlearn: list[dict]) -> list[str]:
    """Runs trained once per seed, grouped back: every score side by side with its spread (none: no section)."""
    from mtsae.evaluate.seed_spread import spread_section

    return spread_section(records, unlearn)


def unlearn_section(results: list[dict], records: list) -> list[str]:
    """The ``mtsae unlearn`` results an experiment holds, as a report section (none: no section); runs the report
    marks not L0-matched stay out of its across-seeds comparison."""
    if not results:
        return []
    from mtsae.evaluate import unlearn_runs
    from mtsae.evaluate.figures import l0_unmatched

    return unlearn_runs.report_section(results, l0_unmatched([r for r in records if not r.flags]))


def analysis_sections(analyses: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown for the disentanglement and ground-truth sections of the report."""
    if not analyses:
        return []
    lines = ["## Feature disentanglement (held-out windows)", "",
             "| run | arch | L0 | adjacent-step cosine | time scale p10 / median / p90 (tokens) | decoder max / mean cos | near-duplicates |",
             "|---|---|---|---|---|---|---|"]
    for name, a in analyses.items():
        ts, dec = a["time_scales"], a["decoder"]
        scales = " / ".join(_time_scale(ts, q) for q in ("p10", "median", "p90")) if ts.get("alive_features") else "no live features"
        lines.append(f"| {name} | {a['architecture']} | {a['l0']:.1f} | {a['adjacent_separation']:.3f} | {scales} | "
                     f"{dec['max_cosine']:.3f} / {dec['mean_cosine']:.4f} | {dec['near_duplicate_pairs']} |")
    lines += ["", *_time_scale_limits(analyses), ""]
    truth = {name: a for name, a in analyses.items() if a.get("ground_truth")}
    if truth:
        lines += ground_truth_section(truth)
    return lines


def _time_scale(ts: dict[str, Any], quantile: str) -> str:
    """A time-scale percentile, as "≥ limit" when it sits at what the measurement can see."""
    value, limit = ts[quantile], ts.get("limit")
    return f"≥ {limit}" if limit is not None and value >= limit else f"{value:.2f}"


def _time_scale_limits(analyses: dict[str, dict[str, Any]]) -> list[str]:
    """Say which runs' time scales hit the measurement's limit instead of reporting the limit as a result."""
    notes = []
    for name, a in analyses.items():
        ts = a["time_scales"]
        if ts.get("at_limit_fraction"):
            knob = "--max-lag" if ts["limited_by"] == "max_lag" else f"the {a.get('window')}-token window"
            notes.append(f"{name}: {ts['at_limit_fraction']:.0%} of live features still correlate at lag {ts['limit']} "
                         f"(the largest {knob} allows), so their time scale is at least that, not measured")
    if not notes:
        return []
    return ["Time scales marked ≥ hit the measurement's limit: " + "; ".join(notes) + ". Re-run `mtsae analyze` with a "
            "larger --max-lag (up to the window length - 1) to measure them."]


def ground_truth_section(analyses: dict[str, dict[str, Any]]) -> list[str]:
    buckets = list(next(iter(analyses.values()))["ground_truth"]["by_time_scale"])
    lines = ["## Ground truth: recovery of known features", "",
             "| run | arch | L0 | MMCS | recovered (cos ≥ 0.9) | " + " | ".join(f"{b}: MMCS / recovered" for b in buckets) + " |",
             "|---|---|---|---|---|" + "---|" * len(buckets)]
    for name, a in analyses.items():
        g = a["ground_truth"]
        per = " | ".join(f"{g['by_time_scale'][b]['mmcs']:.3f} / {g['by_time_scale'][b]['recovered_fraction']:.0%}"
                         for b in buckets)
        lines.append(f"| {name} | {a['architecture']} | {a['l0']:.1f} | {g['mmcs']:.3f} | {g['recovered_fraction']:.0%} | {per} |")
    lines.append("")
    for level, group in by_l0_level(analyses).items():
        prefix = "" if level is None else f"At matched L0 {level}: "
        lines += [prefix + slow_feature_verdict(group), ""]
    return lines


def by_l0_level(analyses: dict[str, dict[str, Any]]) -> dict[str | None, dict[str, dict[str, Any]]]:
    """Runs grouped by their ``match_l0`` level (the ``-l0_<level>`` name suffix); None: runs without one."""
    groups: dict[str | None, dict[str, dict[str, Any]]] = {}
    for name, a in analyses.items():
        match = re.search(r"-l0_([0-9.e+-]+)$", name)
        groups.setdefault(match.group(1) if match else None, {})[name] = a
    return groups


def slow_feature_verdict(analyses: dict[str, dict[str, Any]]) -> str:
    """One plain sentence: does MTSAE recover more slow features than the baselines at comparable L0?"""
    slow = next((b for b in next(iter(analyses.values()))["ground_truth"]["by_time_scale"] if b.startswith("slow")), None)
    from mtsae.train.registry import get_architecture

    temporal = {n: a for n, a in analyses.items() if get_architecture(a["architecture"]).is_temporal}
    baselines = {n: a for n, a in analyses.items() if n not in temporal}
    if slow is None or not temporal or not baselines:
        return "No verdict: the comparison needs slow features, an MTSAE run and a baseline run."

    def score(a):
        return a["ground_truth"]["by_time_scale"][slow]["recovered_fraction"], a["ground_truth"]["by_time_scale"][slow]["mmcs"]

    best_t = max(temporal, key=lambda n: score(temporal[n]))
    best_b = max(baselines, key=lambda n: score(baselines[n]))
    (rt, mt), (rb, mb) = score(temporal[best_t]), score(baselines[best_b])
    lt, lb = temporal[best_t]["l0"], baselines[best_b]["l0"]
    matched = abs(lt - lb) <= 0.25 * max(lt, lb, 1e-9)
    outcome = "more" if rt > rb else "fewer" if rt < rb else "as many"
    closeness = "higher" if mt > mb else "lower" if mt < mb else "equal"
    return (f"**Verdict:** the best MTSAE run ({best_t}) recovers {outcome} slow features than the best baseline "
            f"({best_b}) at cosine ≥ 0.9: {rt:.0%} vs {rb:.0%}; its slow-feature MMCS is {closeness} "
            f"({mt:.3f} vs {mb:.3f}); L0 {lt:.1f} vs {lb:.1f} "
            f"({'comparable' if matched else 'NOT matched: they differ by more than 25 %, so the comparison is confounded'}).")
