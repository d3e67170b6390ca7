"""Model helpers: tokenizer and model loading (NF4 QLoRA setup), parameter counts, memory, generation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

from fixtures import tiny_gpt_neox

from utils.model import chat_format, modeling
from utils.model.generation import PRESETS, generate_replies, sampling_preset
from utils.model.tiny_base import train_tokenizer

REPO = Path(__file__).resolve().parent.parent
CORPUS = ["Hello there! How are you today?", "Fine, thanks. And you?", "The cat sat on the mat."] * 20


def tiny_model(vocab_size: int, max_positions: int = 64) -> GPTNeoXForCausalLM:
    return tiny_gpt_neox(vocab_size, 0, max_position_embeddings=max_positions, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A saved model + tokenizer with the chat tokens (like the tiny base), 4-bit loadable."""
    path = tmp_path_factory.mktemp("base")
    tok = train_tokenizer(CORPUS, 200)
    tiny_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory) -> Path:
    """A template-less tokenizer without the chat tokens (like Pythia's), and a model with exactly its vocab."""
    path = tmp_path_factory.mktemp("plain")
    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1, "hi": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]").save_pretrained(path)
    tiny_model(3).save_pretrained(path)
    return path


def test_load_tokenizer_adds_the_chat_tokens(plain_dir):
    tok = modeling.load_tokenizer(plain_dir)
    ids = [tok.convert_tokens_to_ids(t) for t in (*chat_format.OA_SPECIAL_TOKENS, chat_format.PAD_TOKEN)]
    assert sorted(ids) == [3, 4, 5, 6]  # four new ids after the three the vocabulary had
    assert tok.pad_token == chat_format.PAD_TOKEN
    assert tok("<|prompter|>hi", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("<|prompter|>"), 2]


def test_model_embeddings_grow_to_the_tokenizer(plain_dir):
    tok = modeling.load_tokenizer(plain_dir)
    model = modeling.load_causal_lm(plain_dir, "none", "cpu", tokenizer=tok)
    assert model.get_input_embeddings().num_embeddings == 7
    assert model.get_output_embeddings().out_features == 7
    assert model.config.pad_token_id == tok.pad_token_id


def test_nf4_is_qlora_quantization(base_dir):
    tok = modeling.load_tokenizer(base_dir)
    model = modeling.load_causal_lm(base_dir, "nf4", "cpu", tokenizer=tok)
    linears = [m for n, m in model.named_modules() if n.startswith("gpt_neox.layers") and isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    state = linears[0].weight.quant_state
    assert state.quant_type == "nf4"
    assert state.nested  # double quantization: the absmax constants are quantized too
    assert linears[0].compute_dtype == torch.float32  # no bf16/fp16 matmuls on a CPU
    assert not isinstance(model.get_output_embeddings(), bnb.nn.Linear4bit)  # the LM head stays full precision
    reference = GPTNeoXForCausalLM.from_pretrained(base_dir)
    assert modeling.count_parameters(model)[1] == sum(p.numel() for p in reference.parameters())


def test_4bit_training_after_an_eval_pass_still_backpropagates_through_the_base(base_dir):
    """On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights for inference at the first no-grad eval pass and
    then trains on the inference kernel (no gradient through the frozen base, an error on biased layers)."""
    from peft import LoraConfig, get_peft_model

    tok = modeling.load_tokenizer(base_dir)
    model = modeling.load_causal_lm(base_dir, "nf4", "cpu", tokenizer=tok)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["query_key_value", "dense_4h_to_h"], lora_dropout=0.0))
    ids = torch.tensor([tok("Hello there! How are you today?")["input_ids"]])
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    # The first layer's adapter gets its gradient only through the 4-bit layers above it (B: A's is 0 while B = 0).
    first_b = next(p for n, p in model.named_parameters() if "layers.0." in n and "query_key_value.lora_B" in n)
    assert first_b.grad is not None and first_b.grad.abs().sum() > 0
    # And eval and training forward passes compute the same function (one kernel).
    assert torch.allclose(before, out.logits.detach(), atol=1e-5)


def test_unquantized_model_has_no_4bit_layers(base_dir):
    model = modeling.load_causal_lm(base_dir, "none", "cpu")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert next(model.parameters()).dtype == torch.float32


def test_remote_code_only_when_asked(base_dir, monkeypatch):
    seen = []

    def fake(path, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise OSError("stop here")

    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", fake)
    for flag in (False, True):
        with pytest.raises(OSError, match="cannot load a causal LM"):
            modeling.load_causal_lm(base_dir, "none", "cpu", trust_remote_code=flag)
    with pytest.raises(OSError):
        modeling.load_causal_lm(base_dir, "none", "cpu")
    assert seen == [False, True, False]


def test_bad_quantization_is_named(base_dir):
    with pytest.raises(ValueError, match="quantization must be one of"):
        modeling.load_causal_lm(base_dir, "int3", "cpu")


def test_peak_memory_sees_a_large_allocation():
    restarted = modeling.reset_peak_memory()
    before = modeling.peak_memory_mb()
    # 256 MiB of float32 above the current peak, where peak memory is counted (GPU tensors, or this process's
    # resident pages). Where the CPU window could not restart, the peak counts from process start, and the
    # block must also cover the gap between that old peak and what is resident now.
    extra_mb = 256
    if not restarted:
        resident = modeling._proc_status_mb("VmRSS")
        if resident is None:
            pytest.skip("no /proc here: the peak counts from process start and what is resident is unknown")
        extra_mb += before - resident
    if modeling.default_device().type == "cuda":
        block = torch.ones(int(extra_mb * 2**18), device="cuda")
    else:  # fresh pages: freed heap memory that is still resident (earlier tests' tensors) would not raise the peak
        import mmap

        block = torch.frombuffer(mmap.mmap(-1, int(extra_mb * 2**20)), dtype=torch.uint8)
        block.fill_(1)
    after = modeling.peak_memory_mb()
    del block
    assert after - before > 200


def test_presets_are_openassistants(tmp_path):
    """The presets match the sampling parameters recorded in OpenAssistant's own sampling reports."""
    report = json.loads((REPO / "data/oa_sampling_reports/2023-03-01_pythia-12b-deduped-sft_sampling.json").read_text())
    recorded = {r["sampling_config"]: r["sampling_params"] for r in report["prompts"][0]["results"]}
    assert set(recorded) == set(PRESETS)
    for name, params in recorded.items():
        kwargs = PRESETS[name].generate_kwargs()
        for key, value in params.items():
            if params.get("do_sample") is False and key == "temperature":
                continue  # ignored by greedy decoding
            assert kwargs[key] == value, (name, key)
    assert sampling_preset("k50", max_new_tokens=16).max_new_tokens == 16
    with pytest.raises(ValueError, match="unknown sampling preset 'k5'"):
        sampling_preset("k5")


PROMPTS = [
    [{"role": "user", "content": "Hello there!"}],
    [{"role": "user", "content": "The cat sat on the mat. How are you today?"}],
    [{"role": "user", "content": "Fine"}, {"role": "assistant", "content": "And you?"}, {"role": "user", "content": "Hello"}],
]


@pytest.fixture(scope="module")
def lm(base_dir):
    tok = modeling.load_tokenizer(base_dir)
    return modeling.load_causal_lm(base_dir, "nf4", "cpu", tokenizer=tok), tok


def test_generation_is_seeded_and_leaves_the_global_rng_alone(lm):
    model, tok = lm
    k50 = sampling_preset("k50", max_new_tokens=12)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate_replies(model, tok, PROMPTS, k50, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate_replies(model, tok, PROMPTS, k50, seed=1) == a
    assert generate_replies(model, tok, PROMPTS, k50, seed=2) != a


def test_left_padding_does_not_change_greedy_replies(lm):
    model, tok = lm
    greedy = sampling_preset("greedy", max_new_tokens=10)
    one_by_one = [generate_replies(model, tok, [p], greedy)[0] for p in PROMPTS]
    assert generate_replies(model, tok, PROMPTS, greedy, batch_size=3) == one_by_one


def test_long_prompts_keep_their_end_with_a_warning(lm):
    model, tok = lm
    long_prompt = [{"role": "user", "content": "Hello there! " * 200}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replies = generate_replies(model, tok, [long_prompt], sampling_preset("greedy", max_new_tokens=8))
    assert len(replies) == 1
    assert any("1 of 1 prompts were longer than 56 tokens" in str(w.message) for w in caught)
