"""The models and texts the harvest benchmarks share (built locally: no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mtsae.harvest import embedded

CORPUS_TOKENS = 250_000  # the embedded corpus, a little under its 252,967

# google/gemma-2-2b's dimensions (its config.json); the weights are random.
GEMMA_2_2B = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=8192,
    pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
)


def model_dir(name: str, work: Path, device: torch.device) -> Path:
    """A local HF model directory: the embedded tiny Gemma-2, or Gemma-2-2b's shapes with random weights."""
    if name == "embedded":
        return embedded.ensure_embedded_model()
    if name == "gemma-2-2b-random":
        return _random_gemma_2_2b(work / "gemma-2-2b-random", device)
    raise ValueError(f"unknown benchmark model {name!r}")


def _random_gemma_2_2b(path: Path, device: torch.device) -> Path:
    if (path / "config.json").is_file():
        return path
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(**GEMMA_2_2B)
    config.architectures = ["Gemma2ForCausalLM"]
    torch.manual_seed(0)
    with torch.device(device):  # initialising 2.6 B parameters on a CPU takes minutes
        model = Gemma2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    embedded.build_tokenizer().save_pretrained(path)  # ids < its vocab, so any Gemma-2 embedding works
    del model
    return path


def long_document_corpus(path: Path, min_tokens: int) -> Path:
    """JSONL whose documents each join 40 embedded-corpus documents, so every harvest context is full.

    The corpus (252k tokens) is repeated until it holds ``min_tokens`` with room to spare.
    """
    if path.is_file():
        return path
    corpus = embedded.ensure_embedded_corpus()
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    repeats = 1 + min_tokens // CORPUS_TOKENS
    texts = texts * repeats
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for start in range(0, len(texts), 40):
            f.write(json.dumps({"text": " ".join(texts[start:start + 40])}) + "\n")
    return path
