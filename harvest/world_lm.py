"""Train a small Gemma-2 on the fictional world (harvest/world.py); entry point of scripts/train_world_lm.py.

The model is transformers' ``Gemma2ForCausalLM`` (the code path of google/gemma-2-2b)
built from the embedded model's config (``embedded._model_config``) with the width
and depth given here; at least 20 layers, so SAE-Bench's layers 5 and 19 exist.
Training is seeded (init and data stream); it is reproducible in procedure, not bit
for bit across machines (BLAS kernels and thread counts change float sums).

``OUT/state.pt`` is written every ``--checkpoint-every`` steps (atomically); a rerun
with the same settings resumes from it, a rerun after completion only reports the
weights' sha256, and a rerun with other settings stops with one ``error:`` line.
The finished model lands in ``OUT/model/`` (safetensors, config, tokenizer,
``world.json``) by rename, so a crash never leaves a half-written model there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mtsae.durable import publish_dir, publish_file
from mtsae.errors import MtsaeError, writing
from mtsae.harvest import embedded
from mtsae.harvest import world as W
from mtsae.harvest import world_drill

MIN_LAYERS = 20  # SAE-Bench's Gemma-2-2b layers 5 and 19 must exist
STATE_FILE = "state.pt"
MODEL_DIR = "model"
WEIGHTS_FILE = "model.safetensors"
MIXES = ("documents", "drill")
Probe = Callable[..., dict]  # (model, tokenizer, world) -> {measure: value}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_world_lm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (state.pt, train-log.jsonl, model/)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the fictional world")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    p.add_argument("--hidden", type=int, default=64, help="residual width (hidden_size)")
    p.add_argument("--layers", type=int, default=26, help=f"decoder layers (>= {MIN_LAYERS})")
    p.add_argument("--heads", type=int, default=4, help="attention heads (key/value heads: half)")
    p.add_argument("--ctx", type=int, default=256, help="tokens per training sequence")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-steps", type=int, help="optimizer steps to train")
    budget.add_argument("--tokens", type=int, help="training tokens (rounded up to whole steps)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, warmup then cosine)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between state.pt writes")
    stage = p.add_argument_group("a second stage (docs/world.md): continue a published model on the drill stream")
    stage.add_argument("--init", type=Path, help="a model folder this script published (OUT/model) to start from; "
                       "one of an earlier world version whose vocabulary this one extends is grown into it")
    stage.add_argument("--mix", choices=MIXES, default="documents",
                       help="documents: the world's documents with a practice question every 4th text; "
                            "drill: per document, --drill-closed practice and --drill-open-book open-book questions "
                            "and --drill-spelling spelling lines over the whole vocabulary")
    stage.add_argument("--drill-closed", type=int, default=6, help="practice questions per document (drill)")
    stage.add_argument("--drill-open-book", type=int, default=3, help="open-book questions per document (drill)")
    stage.add_argument("--drill-spelling", type=int, default=10, help="vocabulary spelling lines per document (drill)")
    stage.add_argument("--drill-letters", type=int, default=0,
                       help="first-letter lines per document over every alphabetic token, half as '{word} {letter}' "
                            "(drill; the trials in docs/world.md, 'Letters and exam questions together')")
    stage.add_argument("--drill-qa", type=int, default=0,
                       help="question-answer lines per document over the facts of every entity, exam entities "
                            "included, no choices (drill; docs/world.md, 'Exam questions: recall, not letters')")
    stage.add_argument("--drill-balanced", action="store_true",
                       help="draw each drill question's distractors in proportion to how often each value is a "
                            "practice answer, so that how often a value is right says little about it (docs/world.md, "
                            "'Exam questions: recall, not letters')")
    stage.add_argument("--distill-from", type=Path,
                       help="a model folder this script published: on every text but the first-letter lines, add "
                            "--distill-weight x KL(its next-token distribution || this model's), so a new skill is "
                            "learned while what that model did elsewhere is kept (docs/world.md, 'Letters kept apart')")
    stage.add_argument("--distill-weight", type=float, default=1.0, help="weight of the --distill-from term")
    part = stage.add_mutually_exclusive_group()
    part.add_argument("--embeddings-only", action="store_true",
                      help="train only the token embeddings (tied with the output); every layer stays as --init has "
                           "it (docs/world.md, 'Letters in the embeddings')")
    part.add_argument("--freeze-below", type=int, metavar="LAYER",
                      help="train only decoder layers LAYER and up and the final norm; the embeddings and every layer "
                           "below stay as --init has them, so the residual stream after layer LAYER-1 is --init's "
                           "exactly (docs/world.md, 'Letters in the embeddings')")
    p.add_argument("--probe-every", type=int, default=0,
                   help="every N steps, log single-ordering accuracy on held-out practice and open-book questions "
                        "and forget-topic fact completion (0: never)")
    stage.add_argument("--answer-weight", type=float, default=1.0,
                       help="loss weight of the answer letter after 'Answer: (' (every other token: 1)")
    args = p.parse_args(argv)
    _validate(p, args)
    return args


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.layers < MIN_LAYERS:
        p.error(f"--layers must be >= {MIN_LAYERS} (layers 5 and 19 must exist), got {args.layers}")
    if args.heads < 2 or args.heads % 2 or args.hidden % args.heads:
        p.error(f"--heads must be even and divide --hidden; got --heads {args.heads} --hidden {args.hidden}")
    if args.probe_every < 0:
        p.error(f"--probe-every must be >= 0, got {args.probe_every}")
    for name in ("hidden", "ctx", "batch", "max_steps", "tokens", "checkpoint_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("drill_closed", "drill_open_book", "drill_spelling", "drill_letters", "drill_qa"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("answer_weight", "distill_weight"):
        value = getattr(args, name)
        if not math.isfinite(value) or value <= 0:
            p.error(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    for name in ("init", "distill_from"):
        folder = getattr(args, name)
        if folder is not None and not (folder / "world.json").is_file():
            p.error(f"--{name.replace('_', '-')} {folder} is not a model folder this script published (no world.json)")
    partial = (("--embeddings-only", args.embeddings_only), ("--freeze-below", args.freeze_below is not None))
    for option, given in partial:
        if given and args.init is None:
            p.error(f"{option} keeps layers as --init has them: give --init")
    if args.freeze_below is not None and not 1 <= args.freeze_below < args.layers:
        p.error(f"--freeze-below must be between 1 and {args.layers - 1} (--layers - 1), got {args.freeze_below}")
    args.steps = args.max_steps or math.ceil(args.tokens / (args.batch * args.ctx))


def settings_of(args: argparse.Namespace) -> dict:
    """What defines a run: a resume or rerun must match it exactly."""
    keys = ("world_seed", "seed", "hidden", "layers", "heads", "ctx", "batch", "steps", "lr")
    settings = {"world_version": W.WORLD_VERSION, **{k: getattr(args, k) for k in keys}}
    if args.init is not None:  # a second stage: its start is part of what defines it
        settings["init_sha256"] = sha256_of(args.init / WEIGHTS_FILE)
    if args.mix != "documents":
        settings |= {k: getattr(args, k) for k in ("mix", "drill_closed", "drill_open_book", "drill_spelling")}
        # the optional drill texts: absent when off, so world-lm-v2's settings read as they were
        settings |= {k: getattr(args, k) for k in ("drill_letters", "drill_qa", "drill_balanced") if getattr(args, k)}
    if args.answer_weight != 1.0:
        settings["answer_weight"] = args.answer_weight
    if args.distill_from is not None:
        settings |= {"distill_sha256": sha256_of(args.distill_from / WEIGHTS_FILE),
                     "distill_weight": args.distill_weight}
    if args.embeddings_only:
        settings["embeddings_only"] = True
    if args.freeze_below is not None:
        settings["freeze_below"] = args.freeze_below
    return settings


def model_config(vocab_size: int, args: argparse.Namespace):
    """The embedded model's Gemma-2 config at this width and depth."""
    config = embedded._model_config(vocab_size)
    head_dim = args.hidden // args.heads
    config.update({
        "hidden_size": args.hidden, "intermediate_size": 4 * args.hidden, "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.heads // 2, "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim, "max_position_embeddings": max(256, args.ctx),
        # gemma-2's alternation, sliding first, for this depth
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(args.layers)],
    })
    config._attn_implementation = "eager"  # transformers' Gemma-2 rejects sdpa
    return config


def stream_texts(world: W.World, args: argparse.Namespace):
    """``texts(index) -> list of (text, kept)``: block ``index`` of the stream ``--mix`` names; ``kept`` is False
    for the first-letter lines, the one text --distill-from does not hold this model to."""
    if args.mix == "drill":
        return lambda i: [(t["text"], not t["id"].startswith("letter-spelling")) for t in world_drill.drill_texts(
            world, i, args.drill_closed, args.drill_open_book, args.drill_spelling, args.drill_letters, args.drill_qa,
            args.drill_balanced)]
    return lambda i: [(W.training_text(world, i)["text"], True)]


def token_batches(texts, tokenizer, ctx: int, batch: int, skip: int):
    """Endless ([batch, ctx] LongTensor of ids, same-shape bool ``kept`` of their texts) packed from
    ``texts(0), texts(1), ...``; the first ``skip`` are dropped."""
    import torch

    buffer: list[int] = []
    kept: list[bool] = []
    index, produced, need = 0, 0, batch * ctx
    while True:
        while len(buffer) < need:
            for text, keep in texts(index):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if not ids or ids[0] != tokenizer.bos_token_id:
                    ids = [tokenizer.bos_token_id, *ids]
                buffer.extend([*ids, tokenizer.eos_token_id])
                kept.extend([keep] * (len(ids) + 1))
            index += 1
        chunk, buffer = buffer[:need], buffer[need:]
        mask, kept = kept[:need], kept[need:]
        produced += 1
        if produced > skip:
            yield (torch.tensor(chunk, dtype=torch.long).view(batch, ctx),
                   torch.tensor(mask, dtype=torch.bool).view(batch, ctx))


def answer_positions(ids, answer_ids: tuple[int, int]):
    """True where the next token is an answer letter: the position of '(' right after ':' (``Answer: (``)."""
    import torch

    colon, paren = answer_ids
    before = torch.nn.functional.pad(ids[:, :-1] == colon, (1, 0))
    return (ids == paren) & before


def lm_loss(logits, ids, answer_ids: tuple[int, int], answer_weight: float):
    """Next-token cross-entropy, the answer letters weighted ``answer_weight`` (1: the plain mean)."""
    import torch

    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                           reduction="none").view(ids.shape[0], -1)
    weights = torch.ones_like(ce)
    weights[answer_positions(ids, answer_ids)[:, :-1]] = answer_weight
    return (ce * weights).sum() / weights.sum()


def distill_loss(logits, teacher_logits, kept):
    """Mean over the ``kept`` positions of KL(teacher's next-token distribution || the student's)."""
    import torch

    student = torch.log_softmax(logits[kept].float(), dim=-1)
    teacher = torch.log_softmax(teacher_logits[kept].float(), dim=-1)
    if student.shape[0] == 0:
        return logits.sum() * 0.0  # no kept position in this batch: nothing to hold, and still a graph
    return torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warmup over the first 5% of steps, then cosine down to 10% of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_state(out: Path, model, optimizer, step: int, settings: dict) -> None:
    import torch

    state = {"settings": settings, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    publish_file(out / STATE_FILE, lambda tmp: torch.save(state, tmp))


def _load_state(out: Path, model, optimizer, settings: dict) -> int:
    """The step to resume at (0 for a fresh run); refuses a state written with other settings."""
    import torch

    path = out / STATE_FILE
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["settings"]
    except Exception as exc:  # noqa: BLE001 - any unreadable state is the user's to remove
        raise MtsaeError(f"{path} is not a training state this script wrote ({exc.__class__.__name__}); "
                         "remove it or use another --out") from None
    if saved != settings:
        raise MtsaeError(f"{out} holds a run with other settings ({_differences(saved, settings)}); "
                         "use another --out or the same settings")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _load_init(model, init: Path, option: str = "--init") -> None:
    """Load a published model (``option`` names where it came from in errors): same shapes (--hidden/--layers/--heads
    as it was trained with) and world; a model of an earlier world version whose vocabulary is a prefix of this
    one's is grown into it (``_grown_embeddings``)."""
    from safetensors.torch import load_file

    recorded = json.loads((init / "world.json").read_text())
    weights = load_file(init / WEIGHTS_FILE)
    weights.setdefault("lm_head.weight", weights.get("model.embed_tokens.weight"))  # tied
    mine = model.state_dict()
    if recorded.get("world_version") != W.WORLD_VERSION:
        _check_vocabulary_prefix(init, recorded, option)
        grown = _grown_embeddings(weights["model.embed_tokens.weight"], mine["model.embed_tokens.weight"].shape[0])
        weights["model.embed_tokens.weight"] = weights["lm_head.weight"] = grown
    wrong = sorted(k for k in mine if k not in weights or weights[k].shape != mine[k].shape)
    if wrong:
        raise MtsaeError(f"{option} {init} does not fit this model ({len(wrong)} tensors differ, first {wrong[0]}); "
                         "give the --hidden/--layers/--heads it was trained with")
    model.load_state_dict({k: weights[k] for k in mine})


def _check_vocabulary_prefix(init: Path, recorded: dict, option: str) -> None:
    """A model of another world version is usable only if its tokens are this world's first tokens, same ids."""
    try:
        theirs = json.loads((init / "tokenizer.json").read_text())["model"]["vocab"]
        ours = W.vocabulary(W.build_world(int(recorded["world_seed"])))
    except (OSError, ValueError, KeyError, TypeError):
        theirs = None
    if not isinstance(theirs, dict) or theirs != {w: i for i, w in enumerate(ours[: len(theirs)])}:
        raise MtsaeError(f"{option} {init} was trained on world version {recorded.get('world_version')}, "
                         f"this is version {W.WORLD_VERSION}, and its vocabulary is not the start of this one's")


def _grown_embeddings(embeddings: torch.Tensor, rows: int) -> torch.Tensor:
    """The embedding matrix with rows appended up to ``rows``: each new row the mean of the old ones, so a new
    token's logit is the average logit (it takes little probability) and the old tokens' outputs are unchanged."""
    import torch

    extra = embeddings.mean(dim=0, keepdim=True).expand(rows - embeddings.shape[0], -1)
    return torch.cat([embeddings, extra]).contiguous()


def _check_published(out: Path, settings: dict) -> None:
    """A model already in OUT/model/ must be of these settings: it is replaced at the end, never another's."""
    final = out / MODEL_DIR
    if not final.exists():
        return
    try:
        recorded = json.loads((final / "world.json").read_text())
        saved = {k: recorded[k] for k in settings}
    except (OSError, ValueError, KeyError, TypeError):
        raise MtsaeError(f"{final} exists but is not a model this script wrote; "
                         "move it away or use another --out") from None
    if saved != settings:
        raise MtsaeError(f"{final} holds a model of other settings ({_differences(saved, settings)}); "
                         "use another --out or the same settings")


def _differences(saved: dict, wanted: dict) -> str:
    keys = sorted(set(saved) | set(wanted))
    return ", ".join(f"{k}: {saved.get(k)} there, {wanted.get(k)} now" for k in keys if saved.get(k) != wanted.get(k))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _train_loop(model, optimizer, batches, args, start: int, out: Path, settings: dict, loss_of, probe) -> list[float]:
    """Steps ``start``..``args.steps``: ``loss_of(batch)`` is minimised, ``probe()`` logged every --probe-every."""
    from tqdm import tqdm

    losses: list[float] = []
    tokens_per_step = args.batch * args.ctx
    began = time.perf_counter()
    with open(out / "train-log.jsonl", "a", encoding="utf-8") as log, \
            tqdm(total=args.steps, initial=start, unit="step", dynamic_ncols=True) as bar:
        for step in range(start, args.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args.steps, args.lr)
            batch = next(batches)
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _clip(model)
            optimizer.step()
            losses.append(loss.item())
            rate = (step + 1 - start) * tokens_per_step / (time.perf_counter() - began)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:.0f}")
            bar.update(1)
            log.write(json.dumps({"step": step + 1, "loss": losses[-1], "tokens": (step + 1) * tokens_per_step,
                                  "elapsed_s": round(time.perf_counter() - began, 2),
                                  "tokens_per_s": round(rate, 1)}) + "\n")
            if args.probe_every and ((step + 1) % args.probe_every == 0 or step + 1 == args.steps):
                known = probe()
                bar.write(json.dumps({"step": step + 1, **known}))
                log.write(json.dumps({"step": step + 1, "probe": known}) + "\n")
            if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
                log.flush()
                _save_state(out, model, optimizer, step + 1, settings)
    return losses


def _clip(model) -> None:
    import torch

    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)


def _publish_model(out: Path, model, tokenizer, settings: dict, steps_done: int) -> str:
    """Write OUT/model/ via a temp sibling and a rename (mtsae.durable); returns the weights' sha256.

    A model already there is only ever ours, of these settings (checked against state.pt), so it is replaced.
    """
    digest = ""

    def build(tmp: Path) -> None:
        nonlocal digest
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        digest = sha256_of(tmp / WEIGHTS_FILE)
        (tmp / f"{WEIGHTS_FILE}.sha256").write_text(f"{digest}  {WEIGHTS_FILE}\n")
        (tmp / "world.json").write_text(json.dumps({**settings, "steps_done": steps_done, "weights_sha256": digest},
                                                   indent=1) + "\n")
        _make_readable(tmp)

    publish_dir(out / MODEL_DIR, build)
    return digest


def _make_readable(directory: Path) -> None:
    """0755/0644 like everything else the project writes (mkdtemp makes 0700, safetensors 0600)."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def training_loss(model, tokenizer, args: argparse.Namespace):
    """``loss_of((ids, kept))``: ``lm_loss``, plus ``distill_loss`` against the --distill-from model when given."""
    import torch

    answer_ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in (":", "("))
    teacher = None
    if args.distill_from is not None:
        teacher = _same_shape_model(model)
        _load_init(teacher, args.distill_from, "--distill-from")
        teacher.eval().requires_grad_(False)

    def loss_of(batch):
        ids, kept = batch
        logits = model(input_ids=ids).logits
        loss = lm_loss(logits, ids, answer_ids, args.answer_weight)
        if teacher is None:
            return loss
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids).logits
        return loss + args.distill_weight * distill_loss(logits, teacher_logits, kept)

    return loss_of


def trainable_parameters(model, args: argparse.Namespace) -> list:
    """The parameters a run updates: all; only the token embeddings (``--embeddings-only``); or decoder layers N and
    up and the final norm (``--freeze-below N``: the embeddings are tied with the output, so they stay too, and the
    residual stream after layer N-1 is the start model's at every step)."""
    if args.embeddings_only:
        model.requires_grad_(False)
        model.model.embed_tokens.requires_grad_(True)
    elif args.freeze_below is not None:
        model.model.embed_tokens.requires_grad_(False)
        for layer in model.model.layers[:args.freeze_below]:
            layer.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def _same_shape_model(model):
    """A fresh model of ``model``'s class and config (the --distill-from teacher's shape)."""
    return type(model)(model.config).to(model.dtype)


def train(args: argparse.Namespace, measure: Probe | None = None) -> str:
    """Train (or resume, or only report) the run ``args`` describes; ``measure`` is what --probe-every logs."""
    if args.probe_every and measure is None:
        raise MtsaeError("--probe-every needs a measure to log: run scripts/train_world_lm.py, which passes "
                         "mtsae.evaluate.world_check.what_it_knows")
    import torch
    from transformers import Gemma2ForCausalLM

    out: Path = args.out
    with writing(f"the training output folder {out}", "rerun"):
        out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    world = W.build_world(args.world_seed)
    tokenizer = W.build_world_tokenizer(world)
    torch.manual_seed(args.seed)
    model = Gemma2ForCausalLM(model_config(len(tokenizer), args)).to(torch.float32).train()
    if args.init is not None:
        _load_init(model, args.init)
    optimizer = torch.optim.AdamW(trainable_parameters(model, args), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    _check_published(out, settings)
    start = _load_state(out, model, optimizer, settings)
    published = out / MODEL_DIR / WEIGHTS_FILE
    if start >= args.steps and published.is_file():
        return sha256_of(published)
    with writing(f"training state or log in {out}", "rerun the same command to resume"):
        if start < args.steps:
            batches = token_batches(stream_texts(world, args), tokenizer, args.ctx, args.batch, skip=start)
            _train_loop(model, optimizer, batches, args, start, out, settings,
                        loss_of=training_loss(model, tokenizer, args),
                        probe=lambda: measure(model, tokenizer, world))
        return _publish_model(out, model.eval(), tokenizer, settings, args.steps)


def main(argv: list[str] | None = None, probe: Probe | None = None) -> int:
    """The script: ``probe(model, tokenizer, world) -> dict`` is the --probe-every measure (scripts/train_world_lm.py
    passes ``mtsae.evaluate.world_check.what_it_knows``; harvest/ does not import evaluate/)."""
    args = parse_args(argv)
    try:
        digest = train(args, probe)
    except MtsaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"weights: {args.out / MODEL_DIR / WEIGHTS_FILE}\nsha256: {digest}")
    return 0
