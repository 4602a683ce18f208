"""An in-house unlearning benchmark on the fictional world (issue 15 point 4; docs/unlearning.md).

SAE-Bench's unlearning eval scores multiple-choice answers (a letter), so it only
works once a model has learned the letter format. This benchmark asks the facts
directly, as next-token completions (``world.completion_probes``), and otherwise
follows SAE-Bench's recipe:

1. **Selection** (``sae_bench/evals/unlearning/utils/feature_activation.py``): each
   latent's firing frequency on forget-topic documents and on retain-topic documents
   (BOS/EOS/PAD tokens masked, as ``get_feature_activation_sparsity``), then
   SAE-Bench's own ``get_top_features``: latents whose retain frequency is below the
   threshold, by forget frequency, never-firing ones dropped.
2. **Clamping** (``utils/intervention.py``, ``anthropic_clamp_resid_SAE_features``):
   the SAE is spliced into the residual stream after the hooked layer *with its error
   term*; a selected latent is set to ``-clamp`` at every position where it fires
   (never at position 0, the BOS, as SAE-Bench zeroes it). We add the change of the
   reconstruction, ``decode(clamped) - decode(codes)``, only where a selected latent
   fires, so positions where nothing fires are bit-identical to the plain model.
3. **Scores**: fact-completion accuracy (argmax next token = the fact's value) on the
   forget topic and on the retain topics, for every (latent count, clamp value), and
   the fraction of the facts the plain model knows that it still knows ("kept", the
   measure SAE-Bench reports relative to the unclamped model). Headline: the largest
   forget drop ``1 - forget_kept`` with ``retain_kept >= 0.99``, and its latent count.
   Per latent set: the fraction of forget-document tokens on which any selected latent
   fires (coverage) and of retain-document tokens (false-positive rate).

The plain model's pass is computed once per model and layer (``model_pass``) and shared by every SAE:
the probes' answers and residual streams after the SAE's block, the documents' residual streams. A
clamped point then runs only the blocks after the SAE's, and only on the probes whose stream the clamp
changes; the others keep the plain answer, which is what the whole model gives them (positions where
no selected latent fires are bit-identical). ``sweep(..., reuse=False)`` runs the whole model at every
point instead; tests/test_unlearn.py checks both give the same curve.

The core works on any Gemma-2: a transformers ``Gemma2ForCausalLM`` (forward hook on
``model.model.layers[layer]``) or a transformer_lens ``HookedTransformer``
(``blocks.{layer}.hook_resid_post``). ``mtsae.evaluate.unlearn_runs`` (the CLI) resolves run folders.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from mtsae.errors import MtsaeError
from mtsae.harvest import world as W

DEFAULT_LATENT_COUNTS = (1, 2, 5, 10, 20, 50)
DEFAULT_CLAMP_VALUES = (1.0, 5.0, 20.0, 50.0)
DEFAULT_RETAIN_THRESHOLD = 0.01  # SAE-Bench's retain_thresholds are [0.001, 0.01]
RETAIN_KEPT_TARGET = 0.99  # SAE-Bench's unlearning score: MMLU accuracy (relative) must stay >= 0.99
RESULT_VERSION = 1

Edit = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class UnlearnSettings:
    latent_counts: tuple[int, ...] = DEFAULT_LATENT_COUNTS
    clamp_values: tuple[float, ...] = DEFAULT_CLAMP_VALUES
    retain_threshold: float = DEFAULT_RETAIN_THRESHOLD
    forget_documents: int = 32
    retain_documents: int = 32
    seq_len: int = 256
    batch_size: int = 8  # document rows per forward pass
    probe_batch_size: int = 256  # fact prompts (~7 tokens) per forward pass: per-call overhead dominates them
    progress: bool = True

    def validate(self) -> None:
        if not self.latent_counts or any(n < 0 for n in self.latent_counts):
            raise MtsaeError(f"--latents takes latent counts >= 0, got {list(self.latent_counts)}")
        if not self.clamp_values or any(not math.isfinite(v) or v <= 0 for v in self.clamp_values):
            raise MtsaeError(f"--clamp takes clamp values > 0 (a latent is set to -value), got {list(self.clamp_values)}")
        if not 0 < self.retain_threshold <= 1:
            raise MtsaeError(f"--retain-threshold must be in (0, 1], got {self.retain_threshold}")
        for name in ("forget_documents", "retain_documents", "batch_size", "probe_batch_size"):
            if getattr(self, name) < 1:
                raise MtsaeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise MtsaeError(f"--seq-len must be >= 2, got {self.seq_len}")


# --------------------------------------------------------------------------- the residual stream


def _is_hooked_transformer(model) -> bool:
    return hasattr(model, "run_with_cache") and hasattr(model, "blocks")


@contextlib.contextmanager
def residual_edit(model, layer: int, edit: Edit) -> Iterator[None]:
    """While inside, the residual stream after block ``layer`` passes through ``edit`` (None: unchanged)."""
    if _is_hooked_transformer(model):
        def tl_hook(resid, hook):
            return edit(resid)

        with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", tl_hook)]):
            yield
        return

    def hf_hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        edited = edit(hidden)
        if edited is None:
            return None
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    handle = model.model.layers[layer].register_forward_hook(hf_hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    if _is_hooked_transformer(model):
        return model(ids)
    return model(input_ids=ids).logits


@torch.no_grad()
def residuals(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream after block ``layer`` (``hook_resid_post``) for ``ids`` [B, L]."""
    captured: list[torch.Tensor] = []

    def keep(resid: torch.Tensor) -> None:
        captured.append(resid.detach().clone())

    with residual_edit(model, layer, keep):
        logits_of(model, ids)
    return captured[0]


class _GivenResidual(torch.nn.Module):
    """Stands in for blocks 0..layer while the model continues from a residual stream computed earlier:
    the last of them hands that stream on (in the block's own output form), the others pass theirs through."""

    def __init__(self, resid: torch.Tensor | None, as_tuple: bool):
        super().__init__()
        self.resid, self.as_tuple = resid, as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states if self.resid is None else self.resid
        return (out,) if self.as_tuple else out


@torch.no_grad()
def last_logits_from(model, resid: torch.Tensor, layer: int, block_returns_tuple: bool) -> torch.Tensor:
    """The last position's logits of ``model`` continued from ``resid``, the residual stream after block
    ``layer``: only the later blocks run. transformers: blocks 0..layer are swapped for stand-ins for the call,
    so the model's own forward (masks, positions, final norm, soft-capping) does the rest."""
    if _is_hooked_transformer(model):
        return model(resid, start_at_layer=layer + 1)[:, -1]
    blocks = model.model.layers
    originals = [blocks[i] for i in range(layer + 1)]
    try:
        for i in range(layer + 1):
            blocks[i] = _GivenResidual(resid if i == layer else None, block_returns_tuple)
        ids = torch.zeros(resid.shape[:2], dtype=torch.long, device=resid.device)  # embedded, then replaced
        return model(input_ids=ids).logits[:, -1]
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


# --------------------------------------------------------------------------- clamping


def clamp_edit(sae, latents: Sequence[int], value: float) -> Edit:
    """SAE-Bench's clamp intervention as an edit: selected latents that fire become ``-value``.

    With no latents nothing is spliced (SAE-Bench returns None too).
    """
    latents = list(latents)

    @torch.no_grad()
    def edit(resid: torch.Tensor) -> torch.Tensor | None:
        if not latents:
            return None
        codes = sae.encode(resid.to(sae.W_dec.dtype))
        codes[:, 0, :] = 0.0  # SAE-Bench zeroes the BOS position for all SAEs
        selected = codes[:, :, latents]
        firing = selected > 0
        clamped = codes.clone()
        clamped[:, :, latents] = torch.where(firing, torch.full_like(selected, -float(value)), selected)
        change = sae.decode(clamped) - sae.decode(codes)
        # The error term keeps what the SAE misses; where nothing fires, the stream is left exactly as it was.
        return torch.where(firing.any(-1, keepdim=True), resid + change.to(resid.dtype), resid)

    return edit


# --------------------------------------------------------------------------- documents and firing


def document_rows(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """SAE-Bench's ``tokenize_and_concat_dataset`` layout: texts joined by EOS, cut into [rows, seq_len],
    BOS at position 0 of each row. Tokenized text by text, not in character chunks as SAE-Bench does:
    a character cut splits a word into <unk>s with a word-level tokenizer."""
    ids: list[int] = []
    for i, text in enumerate(texts):
        ids += ([tokenizer.eos_token_id] if i else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = len(ids) // seq_len
    if rows == 0:
        raise MtsaeError(f"{len(texts)} document(s) give {len(ids)} tokens, fewer than one {seq_len}-token row; "
                         "use more documents or a smaller --seq-len")
    table = torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)
    table[:, 0] = tokenizer.bos_token_id
    return table


def token_mask(rows: torch.Tensor, tokenizer) -> torch.Tensor:
    """True for the tokens SAE-Bench counts (its ``get_bos_pad_eos_mask``: not BOS, EOS or PAD)."""
    from sae_bench.sae_bench_utils.activation_collection import get_bos_pad_eos_mask

    return get_bos_pad_eos_mask(rows, tokenizer)


def _batches(n: int, size: int, progress: bool, desc: str) -> Iterator[slice]:
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n, size), desc=desc, disable=not progress, leave=False):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def latent_firing(model, sae, rows: torch.Tensor, layer: int, batch_size: int, progress: bool = False,
                  desc: str = "firing") -> torch.Tensor:
    """Bool [rows, seq_len, d_sae]: where each latent fires (code > 0) on the rows' tokens."""
    out = []
    for part in _batches(rows.shape[0], batch_size, progress, desc):
        resid = residuals(model, rows[part].to(_device_of(model)), layer)
        out.append((sae.encode(resid.to(sae.W_dec.dtype)) > 0).cpu())
    return torch.cat(out)


@torch.no_grad()
def explained_variance(model, sae, rows: torch.Tensor, mask: torch.Tensor, layer: int) -> float:
    """The SAE's fraction of variance explained on ``rows``' counted tokens at ``layer``: a check that the SAE
    belongs to this layer of this model (an SAE from another layer or model scores near or below 0)."""
    return explained_variance_of(sae, residuals(model, rows.to(_device_of(model)), layer), mask)


@torch.no_grad()
def explained_variance_of(sae, resid: torch.Tensor, mask: torch.Tensor) -> float:
    """``explained_variance`` on residuals computed earlier."""
    x = resid[mask.to(resid.device)].to(sae.W_dec.dtype)
    recon = sae.decode(sae.encode(resid.to(sae.W_dec.dtype)))[mask.to(resid.device)]
    total = (x - x.mean(0)).pow(2).sum()
    return float(1 - (x - recon).pow(2).sum() / total) if total > 0 else float("nan")


def firing_frequency(firing: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per latent, the fraction of counted tokens it fires on (SAE-Bench's feature sparsity)."""
    counted = mask.to(firing.device)
    return (firing & counted[..., None]).sum((0, 1)).double() / counted.sum().clamp(min=1)


def select_latents(forget_frequency: torch.Tensor, retain_frequency: torch.Tensor, retain_threshold: float) -> list[int]:
    """SAE-Bench's own ``get_top_features``: retain frequency < threshold, by forget frequency, nonzero only."""
    from sae_bench.evals.unlearning.utils.feature_activation import get_top_features

    chosen = get_top_features(forget_frequency.cpu().numpy(), retain_frequency.cpu().numpy(), retain_threshold)
    return [int(i) for i in chosen]


def coverage(firing: torch.Tensor, mask: torch.Tensor, latents: Sequence[int]) -> float:
    """Fraction of counted tokens on which any of ``latents`` fires (0.0 for no latents)."""
    counted = mask.to(firing.device)
    if not latents or not counted.any():
        return 0.0
    return float((firing[:, :, list(latents)].any(-1) & counted).sum() / counted.sum())


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- fact completion


@dataclass(frozen=True)
class ProbeSet:
    """Completion probes tokenized and grouped by length (no padding: positions stay the model's own)."""

    groups: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]  # (ids [n, L], answer ids [n], probe index [n])
    size: int


def answer_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise MtsaeError(f"the fact value {word!r} is not one token of this model's tokenizer ({ids}); "
                         "completion probes need a world model's tokenizer")
    return ids[0]


def probe_set(tokenizer, probes: Sequence[dict]) -> ProbeSet:
    """``world.completion_probes`` records as model inputs: ``<bos> prompt`` → the answer's token."""
    by_length: dict[int, list[tuple[list[int], int, int]]] = {}
    for index, probe in enumerate(probes):
        ids = [tokenizer.bos_token_id, *tokenizer(probe["prompt"], add_special_tokens=False)["input_ids"]]
        by_length.setdefault(len(ids), []).append((ids, answer_token(tokenizer, probe["answer"]), index))
    groups = tuple(
        (torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows]))
        for _, rows in sorted(by_length.items()))
    return ProbeSet(groups, len(probes))


@torch.no_grad()
def completion_correct(model, probes: ProbeSet, batch_size: int) -> torch.Tensor:
    """Bool [probes]: the model's argmax next token is the fact's value (under whatever edit is active)."""
    correct = torch.zeros(probes.size, dtype=torch.bool)
    device = _device_of(model)
    for ids, answers, index in probes.groups:
        for part in _batches(ids.shape[0], batch_size, False, ""):
            predicted = logits_of(model, ids[part].to(device))[:, -1].argmax(-1).cpu()
            correct[index[part]] = predicted == answers[part]
    return correct


@torch.no_grad()
def completion_and_residuals(model, probes: ProbeSet, layer: int,
                             batch_size: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``completion_correct`` of the plain model, and each probe group's residual stream after block ``layer``
    (batched as ``completion_correct`` batches), kept so that clamped points need only the later blocks."""
    correct = torch.zeros(probes.size, dtype=torch.bool)
    device, kept = _device_of(model), []
    for ids, answers, index in probes.groups:
        parts: list[torch.Tensor] = []
        for part in _batches(ids.shape[0], batch_size, False, ""):
            with residual_edit(model, layer, lambda resid: parts.append(resid.detach().clone())):
                predicted = logits_of(model, ids[part].to(device))[:, -1].argmax(-1).cpu()
            correct[index[part]] = predicted == answers[part]
        kept.append(torch.cat(parts))
    return correct, tuple(kept)


@torch.no_grad()
def completion_correct_from(model, layer: int, probes: ProbeSet, resids: Sequence[torch.Tensor], base: torch.Tensor,
                            edit: Edit, batch_size: int, block_returns_tuple: bool) -> torch.Tensor:
    """``completion_correct`` under ``edit`` at ``layer``, from the kept residual streams: a probe whose stream
    the edit leaves unchanged (no selected latent fires on it) keeps the plain model's answer ``base``; only the
    others run, and only through the blocks after ``layer``."""
    correct = base.clone()
    for (ids, answers, index), resid in zip(probes.groups, resids):
        for part in _batches(resid.shape[0], batch_size, False, ""):
            edited = edit(resid[part])
            if edited is None:
                continue
            changed = (edited != resid[part]).flatten(1).any(-1).cpu()
            if changed.any():
                logits = last_logits_from(model, edited[changed.to(edited.device)], layer, block_returns_tuple)
                correct[index[part][changed]] = logits.argmax(-1).cpu() == answers[part][changed]
    return correct


def block_returns_tuple(model, layer: int) -> bool:
    """Whether this transformers version's decoder blocks return a tuple (older) or the tensor (5.x)."""
    if _is_hooked_transformer(model):
        return False
    seen: list[bool] = []
    handle = model.model.layers[layer].register_forward_hook(lambda m, i, out: seen.append(isinstance(out, tuple)))
    try:
        logits_of(model, torch.zeros(1, 2, dtype=torch.long, device=_device_of(model)))
    finally:
        handle.remove()
    return seen[0]


def kept_fraction(base: torch.Tensor, now: torch.Tensor) -> float | None:
    """Of the probes the plain model completes correctly, the fraction still correct (None if it knows none)."""
    known = int(base.sum())
    return None if known == 0 else float((now & base).sum()) / known


# --------------------------------------------------------------------------- the sweep


@dataclass
class Corpus:
    """What the sweep reuses at every point: probes, the plain model's answers, where latents fire."""

    forget: ProbeSet
    retain: ProbeSet
    base_forget: torch.Tensor
    base_retain: torch.Tensor
    forget_rows: torch.Tensor
    forget_firing: torch.Tensor
    forget_mask: torch.Tensor
    retain_firing: torch.Tensor
    retain_mask: torch.Tensor
    # Set when the sweep reuses the plain model's pass (``ModelPass``): the probes' residual streams after the
    # SAE's block, so each point runs only the later blocks, and only on the probes its clamp changes.
    forget_resid: tuple[torch.Tensor, ...] | None = None
    retain_resid: tuple[torch.Tensor, ...] | None = None
    block_returns_tuple: bool = False
    first_rows_resid: torch.Tensor | None = None  # the first batch of forget rows, for the explained variance


@dataclass(frozen=True)
class ModelPass:
    """What the plain model gives at one layer, the same for every SAE: probes, their answers and residual
    streams, the document rows and theirs (batched as ``latent_firing`` batches). Computed once per model."""

    forget: ProbeSet
    retain: ProbeSet
    base_forget: torch.Tensor
    base_retain: torch.Tensor
    forget_resid: tuple[torch.Tensor, ...]
    retain_resid: tuple[torch.Tensor, ...]
    forget_rows: torch.Tensor
    forget_mask: torch.Tensor
    retain_mask: torch.Tensor
    forget_doc_resid: tuple[torch.Tensor, ...]
    retain_doc_resid: tuple[torch.Tensor, ...]
    block_returns_tuple: bool


def _probes_and_documents(tokenizer, world: W.World,
                          settings: UnlearnSettings) -> tuple[ProbeSet, ProbeSet, torch.Tensor, torch.Tensor]:
    """The forget and retain fact probes and the forget and retain document rows the benchmark scores."""
    forget = probe_set(tokenizer, W.completion_probes(world, W.FORGET_TOPIC))
    retain = probe_set(tokenizer, [p for topic in W.RETAIN_TOPICS for p in W.completion_probes(world, topic)])
    forget_rows, retain_rows = (
        document_rows(tokenizer, [d["text"] for d in corpus(world, n)], settings.seq_len)
        for corpus, n in ((W.forget_corpus, settings.forget_documents), (W.retain_corpus, settings.retain_documents)))
    return forget, retain, forget_rows, retain_rows


def model_pass(model, tokenizer, layer: int, world: W.World, settings: UnlearnSettings) -> ModelPass:
    """The plain model's pass at ``layer`` (``ModelPass``), checked to continue exactly from its kept streams."""
    forget, retain, forget_rows, retain_rows = _probes_and_documents(tokenizer, world, settings)
    base_forget, forget_resid = completion_and_residuals(model, forget, layer, settings.probe_batch_size)
    base_retain, retain_resid = completion_and_residuals(model, retain, layer, settings.probe_batch_size)
    device = _device_of(model)

    def doc_resid(rows: torch.Tensor, desc: str) -> tuple[torch.Tensor, ...]:
        return tuple(residuals(model, rows[part].to(device), layer)
                     for part in _batches(rows.shape[0], settings.batch_size, settings.progress, desc))

    as_tuple = block_returns_tuple(model, layer)
    for probes, resids, base in ((forget, forget_resid, base_forget), (retain, retain_resid, base_retain)):
        check_continuation(model, layer, probes, resids, base, settings.probe_batch_size, as_tuple)
    return ModelPass(forget, retain, base_forget, base_retain, forget_resid, retain_resid, forget_rows,
                     token_mask(forget_rows, tokenizer), token_mask(retain_rows, tokenizer),
                     doc_resid(forget_rows, "forget documents"), doc_resid(retain_rows, "retain documents"), as_tuple)


@torch.no_grad()
def check_continuation(model, layer: int, probes: ProbeSet, resids: Sequence[torch.Tensor], base: torch.Tensor,
                       batch_size: int, as_tuple: bool) -> None:
    """Continuing the model from the kept streams, unedited, must give the plain model's answers (a guard
    against a transformers version whose blocks cannot be stood in for)."""
    again = torch.zeros_like(base)
    for (ids, answers, index), resid in zip(probes.groups, resids):
        for part in _batches(resid.shape[0], batch_size, False, ""):
            again[index[part]] = last_logits_from(model, resid[part], layer, as_tuple).argmax(-1).cpu() == answers[part]
    if not torch.equal(again, base):
        import transformers

        raise MtsaeError(f"continuing the model from block {layer}'s residual stream changes {int((again != base).sum())}"
                         f" of {base.numel()} answers (transformers {transformers.__version__}); mtsae unlearn "
                         "cannot reuse the plain model's pass with this version, report it")


def corpus_from(sae, plain: ModelPass) -> Corpus:
    """The sweep's ``Corpus`` for ``sae`` from the plain model's pass: only the SAE's encoder runs."""
    def firing(doc_resid: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat([(sae.encode(r.to(sae.W_dec.dtype)) > 0).cpu() for r in doc_resid])

    return Corpus(plain.forget, plain.retain, plain.base_forget, plain.base_retain, plain.forget_rows,
                  firing(plain.forget_doc_resid), plain.forget_mask, firing(plain.retain_doc_resid), plain.retain_mask,
                  plain.forget_resid, plain.retain_resid, plain.block_returns_tuple, plain.forget_doc_resid[0])


def prepare(model, tokenizer, sae, layer: int, world: W.World, settings: UnlearnSettings) -> Corpus:
    """The ``Corpus`` straight from the model (every SAE pays every pass; ``model_pass`` + ``corpus_from``
    compute the same once per model)."""
    forget, retain, forget_rows, retain_rows = _probes_and_documents(tokenizer, world, settings)
    fire = dict(layer=layer, batch_size=settings.batch_size, progress=settings.progress)
    return Corpus(
        forget, retain,
        completion_correct(model, forget, settings.probe_batch_size),
        completion_correct(model, retain, settings.probe_batch_size),
        forget_rows, latent_firing(model, sae, forget_rows, desc="forget documents", **fire),
        token_mask(forget_rows, tokenizer),
        latent_firing(model, sae, retain_rows, desc="retain documents", **fire), token_mask(retain_rows, tokenizer),
    )


def score_point(model, sae, layer: int, corpus: Corpus, latents: Sequence[int], value: float,
                batch_size: int) -> dict[str, Any]:
    """Forget and retain fact completion with ``latents`` clamped to ``-value`` (from the kept residual streams
    when the corpus has them: the same answers, fewer blocks run)."""
    edit = clamp_edit(sae, latents, value)
    if corpus.forget_resid is not None and corpus.retain_resid is not None:
        forget, retain = (completion_correct_from(model, layer, probes, resids, base, edit, batch_size,
                                                  corpus.block_returns_tuple)
                          for probes, resids, base in ((corpus.forget, corpus.forget_resid, corpus.base_forget),
                                                       (corpus.retain, corpus.retain_resid, corpus.base_retain)))
    else:
        with residual_edit(model, layer, edit):
            forget = completion_correct(model, corpus.forget, batch_size)
            retain = completion_correct(model, corpus.retain, batch_size)
    return {
        "forget_accuracy": float(forget.float().mean()), "retain_accuracy": float(retain.float().mean()),
        "forget_kept": kept_fraction(corpus.base_forget, forget), "retain_kept": kept_fraction(corpus.base_retain, retain),
    }


def latent_set_rates(corpus: Corpus, latents: Sequence[int]) -> dict[str, float]:
    return {"forget_token_coverage": coverage(corpus.forget_firing, corpus.forget_mask, latents),
            "retain_false_positive_rate": coverage(corpus.retain_firing, corpus.retain_mask, latents)}


def sweep(model, tokenizer, sae, layer: int, world: W.World, settings: UnlearnSettings,
          plain: ModelPass | None = None, reuse: bool = True) -> dict[str, Any]:
    """The whole benchmark for one SAE at ``layer`` of ``model``: selection, curve, latent sets, headline.

    ``plain``: the plain model's pass at ``layer`` with these settings (``model_pass``), shared by the SAEs of one
    model; computed here when not given. ``reuse=False`` runs every point through the whole model instead (the
    reference the reuse is tested against: the same curve).
    """
    from tqdm.auto import tqdm

    settings.validate()
    if reuse:
        corpus = corpus_from(sae, plain or model_pass(model, tokenizer, layer, world, settings))
    else:
        corpus = prepare(model, tokenizer, sae, layer, world, settings)
    forget_frequency = firing_frequency(corpus.forget_firing, corpus.forget_mask)
    retain_frequency = firing_frequency(corpus.retain_firing, corpus.retain_mask)
    selected = select_latents(forget_frequency, retain_frequency, settings.retain_threshold)
    counts = sorted(set(settings.latent_counts))
    grid = [(n, v) for n in counts for v in settings.clamp_values]
    curve, scored = [], {}
    for n, value in tqdm(grid, desc="clamping", disable=not settings.progress, leave=False):
        latents = tuple(selected[:n])
        key = (latents, value if latents else 0.0)  # fewer latents available than asked: scored once
        if key not in scored:
            scored[key] = score_point(model, sae, layer, corpus, latents, value, settings.probe_batch_size)
        curve.append({"latents_requested": n, "latents": len(latents), "clamp": value, **scored[key]})
    latent_sets = [{"latents_requested": n, "latents": min(n, len(selected)),
                    **latent_set_rates(corpus, selected[:n])} for n in counts]
    return {
        "plain_model": {"forget_accuracy": float(corpus.base_forget.float().mean()),
                        "retain_accuracy": float(corpus.base_retain.float().mean()),
                        "forget_facts": corpus.forget.size, "retain_facts": corpus.retain.size},
        "selection": _selection_record(model, sae, layer, selected, forget_frequency, retain_frequency, corpus, settings),
        "curve": curve, "latent_sets": latent_sets, "headline": headline(curve),
    }


def _selection_record(model, sae, layer: int, selected, forget_frequency, retain_frequency, corpus: Corpus,
                      settings: UnlearnSettings) -> dict[str, Any]:
    top = selected[: max(settings.latent_counts)]
    rows = corpus.forget_rows[: settings.batch_size]
    mask = corpus.forget_mask[: len(rows)]
    return {
        "explained_variance": (explained_variance(model, sae, rows, mask, layer) if corpus.first_rows_resid is None
                               else explained_variance_of(sae, corpus.first_rows_resid, mask)),
        "retain_threshold": settings.retain_threshold, "candidates": len(selected),
        "forget_tokens": int(corpus.forget_mask.sum()), "retain_tokens": int(corpus.retain_mask.sum()),
        "latents": [{"latent": i, "forget_frequency": float(forget_frequency[i]),
                     "retain_frequency": float(retain_frequency[i])} for i in top],
    }


def headline(curve: Sequence[dict]) -> dict[str, Any]:
    """The largest forget drop (1 - forget_kept) among points with retain_kept >= 0.99; fewest latents on ties.

    ``forget_drop`` is None when the plain model completes no forget fact (nothing to unlearn).
    """
    eligible = [p for p in curve if p["forget_kept"] is not None
                and (p["retain_kept"] is None or p["retain_kept"] >= RETAIN_KEPT_TARGET)]
    if not eligible:
        reason = ("the plain model completes no forget-topic fact" if all(p["forget_kept"] is None for p in curve)
                  else f"no point keeps retain accuracy >= {RETAIN_KEPT_TARGET}")
        return {"forget_drop": None, "latents": None, "clamp": None, "reason": reason}
    best = min(eligible, key=lambda p: (p["forget_kept"], p["latents"], p["clamp"]))
    return {"forget_drop": 1.0 - best["forget_kept"], "latents": best["latents"], "clamp": best["clamp"],
            "forget_accuracy": best["forget_accuracy"], "retain_kept": best["retain_kept"], "reason": None}
