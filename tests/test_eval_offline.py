"""Offline SAE-Bench: the mirror's schemas, the patch points, the TransformerLens model vs harvested activations."""

from __future__ import annotations

import importlib

import pytest
import torch

from mtsae.cache import open_cache
from mtsae.errors import MtsaeError
from mtsae.evaluate import embedded_mirror
from mtsae.evaluate.models import load_hooked_transformer
from mtsae.evaluate.offline import load_mirror
from mtsae.evaluate.patches import PATCH_POINTS, offline
from test_eval_support import D_MODEL


@pytest.fixture(scope="module")
def mirror():
    return load_mirror(embedded_mirror.ensure_embedded_mirror(embedded_mirror.rows_needed(40, 20)))


@pytest.fixture(scope="module")
def tl_model(mirror):
    local = mirror.model("embedded")
    return load_hooked_transformer(local.path, local.tl_name, "cpu", torch.float32)


def test_patch_points_exist_in_installed_sae_bench():
    """Each name mtsae patches is still there (a SAE-Bench upgrade that moves one fails here, not mid-run)."""
    for module, name, why in PATCH_POINTS:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name} ({why})"


def _resid(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    hook = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(tokens[None], names_filter=hook, stop_at_layer=layer + 1)
    return cache[hook][0]


def _compare(cache_path, model, atol_fraction: float) -> None:
    cache = open_cache(cache_path)
    offsets = cache.seq_offsets
    for layer in cache.layers:
        for i in range(0, cache.n_sequences, 5):
            tokens = torch.from_numpy(cache.sequence_tokens(i).astype("int64"))
            stored = cache.activations(layer, int(offsets[i]), int(offsets[i + 1])).float()
            got = _resid(model, tokens, layer).float()
            assert (got - stored).abs().max() <= atol_fraction * stored.abs().max(), (layer, i)


def test_hooked_transformer_reproduces_float32_harvest(tmp_path, mirror, tl_model):
    """float32 harvest (HF, eager attention) vs the offline HookedTransformer: within 1e-5 of max |x|.

    Measured: 1e-5 (layer 5) and 3e-5 (layer 19) absolute at max |x| 14 and 24.
    """
    from conftest import tiny_harvest

    tiny_harvest(tmp_path / "f32.zarr", dtype="float32")
    _compare(tmp_path / "f32.zarr", tl_model, atol_fraction=1e-5)


def test_hooked_transformer_reproduces_the_last_layer(tmp_path, mirror, tl_model):
    """The last layer too: TransformerLens's hook_resid_post there is the block output, before ln_final."""
    from conftest import tiny_harvest

    tiny_harvest(tmp_path / "last.zarr", dtype="float32", layers=[25], max_tokens=600)
    _compare(tmp_path / "last.zarr", tl_model, atol_fraction=1e-5)


def test_hooked_transformer_reproduces_bfloat16_harvest(tiny_cache_path, mirror):
    """bfloat16 harvest (the default) vs the model built in bfloat16: within 3% of max |x|.

    Both run every layer in bfloat16 with different operation orders; measured
    0.16 / 0.34 absolute at max |x| 14 / 24 (1.2% / 1.4%, a few bfloat16 ulps).
    """
    local = mirror.model("embedded")
    model = load_hooked_transformer(local.path, local.tl_name, "cpu", torch.bfloat16)
    _compare(tiny_cache_path, model, atol_fraction=0.03)


def test_eval_model_extends_the_embedded_model(mirror):
    """Original ids keep their weights (so activations are bit-identical); every first letter is covered."""
    from sae_bench.evals.absorption.vocab import LETTERS, get_alpha_tokens
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtsae.harvest.embedded import ensure_embedded_model, vocabulary

    base_dir, eval_dir = ensure_embedded_model(), mirror.model("embedded").path
    base, extended = AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(eval_dir)
    assert all(extended.convert_tokens_to_ids(w) == base.convert_tokens_to_ids(w) for w in vocabulary())
    alpha = get_alpha_tokens(extended)
    for letter in LETTERS:
        assert sum(w.strip()[0].lower() == letter for w in alpha) >= embedded_mirror.MIN_WORDS_PER_LETTER
    assert len(set(extended.convert_tokens_to_ids(list("abcd")))) == 4  # distinct answer letters
    ids = torch.randint(4, len(vocabulary()), (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(base_dir)(ids, output_hidden_states=True).hidden_states
        b = AutoModelForCausalLM.from_pretrained(eval_dir)(ids, output_hidden_states=True).hidden_states
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_mirror_content_does_not_depend_on_the_process(tmp_path):
    """Generated twice under different hash seeds (set/dict order), the mirror's files are identical."""
    import os
    import subprocess
    import sys

    code = ("from pathlib import Path; from mtsae.evaluate import embedded_mirror as m; from mtsae.evaluate.synthetic "
            "import TextMaker; import sys; root = Path(sys.argv[1]); root.mkdir(); mk = TextMaker(1); "
            "[build(root, mk, 3) for build in m.DATASETS.values()]")
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], check=True, env=env)
    files = sorted(p.relative_to(tmp_path / "1") for p in (tmp_path / "1").rglob("*.jsonl"))
    assert files and all((tmp_path / "1" / f).read_bytes() == (tmp_path / "2" / f).read_bytes() for f in files)


def test_mirror_models_and_aliases(mirror):
    assert mirror.model("embedded:tiny-gemma2-v1").name == "embedded"
    assert mirror.model("embedded-it").tl_name == "gemma-2-2b-it"
    assert mirror.model_dims("embedded").d_model == D_MODEL
    with pytest.raises(MtsaeError, match="not in the offline mirror"):
        mirror.model("google/gemma-2-9b")
    with pytest.raises(MtsaeError, match="not in the offline mirror"):
        mirror.load_dataset("Skylion007/fineweb")


def test_sparse_probing_datasets_through_sae_bench(mirror):
    """SAE-Bench's own loaders read every default sparse-probing dataset from the mirror, balanced as it expects."""
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
    from sae_bench.sae_bench_utils import dataset_info, dataset_utils

    with offline(mirror):
        for name in SparseProbingEvalConfig().dataset_names:
            train, test = dataset_utils.get_multi_label_train_test_data(name, 40, 20, 42)
            chosen = dataset_info.chosen_classes_per_dataset[name]
            train = dataset_utils.filter_dataset(train, chosen)
            assert all(len(train[c]) >= 10 for c in chosen), name


def test_unlearning_and_core_datasets_through_sae_bench(mirror, tl_model):
    from sae_bench.evals.unlearning.utils import feature_activation, metrics
    from sae_lens.training import activations_store

    with offline(mirror):
        for config in ("wmdp-bio",):
            rows = metrics.load_dataset_with_retries("cais/wmdp", config, split="test")
            assert set(rows.features) == {"question", "choices", "answer"} and len(rows[0]["choices"]) == 4
        for subject in ("high_school_us_history", "college_computer_science", "high_school_geography", "human_aging"):
            rows = metrics.load_dataset_from_name(subject)
            assert set(rows.features) == {"question", "subject", "choices", "answer"}
        retain = feature_activation.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        assert any(len(r["text"]) > 50 for r in retain)
        stream = activations_store.load_dataset("Skylion007/openwebtext", split="train", streaming=True,
                                                trust_remote_code=True)
        assert "text" in next(iter(stream))


def test_mirror_text_is_in_vocabulary(mirror):
    """Synthetic rows tokenize without <unk> under the embedded tokenizer."""
    from transformers import AutoTokenizer

    from mtsae.harvest.embedded import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    with offline(mirror):
        import sae_bench.sae_bench_utils.dataset_utils as dataset_utils

        texts = [dataset_utils.load_dataset("LabHC/bias_in_bios")["train"][0]["hard_text"],
                 dataset_utils.load_dataset("fancyzhx/ag_news")["test"][0]["text"]]
    texts += [mirror.load_dataset("cais/wmdp", "wmdp-bio", split="test")[0]["question"]]
    for text in texts:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
