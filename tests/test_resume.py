"""SFT and reward-model training keep checkpoints and resume after a kill: a run stopped after its second
checkpoint, then started again, ends where a run never stopped ends (same losses, same weights); a changed
configuration never resumes another's checkpoints; finished runs leave none behind."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from fixtures import CONVERSATION, FAST, MINILM, TOPICS_TRAIN, KillAfterSave, Killed, synthetic_pairs, word_tokenizer
from utils.sft.data import encode_conversations
from utils.sft.model import save_adapter
from utils.sft.training import add_lora, make_trainer, train_sft
from utils.model.modeling import load_causal_lm, load_tokenizer
from utils.reward.params import RewardParams
from utils.reward.training import train_reward_model

pytestmark = pytest.mark.slow  # real training or a model conversion: make test-fast leaves it out


# ------------------------------------------------------------------------------------------------ SFT


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A GPT-NeoX with the word tokenizer, wide enough (64) for bitsandbytes' 4-bit blocks."""
    path = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=16, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=64, tie_word_embeddings=False)
    GPTNeoXForCausalLM(cfg).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


# Dropout: the random state must resume too. A high rate: every step moves the loss.
SETTINGS = replace(FAST, max_steps=4, save_steps=1, logging_steps=1, lora_dropout=0.1, learning_rate=5e-3, warmup_steps=0)


def sft_attempt(base: Path, out: Path, checkpoints: Path, settings=SETTINGS, kill_after: int | None = None):
    tok = load_tokenizer(base)
    data = encode_conversations([CONVERSATION] * 8, tok, 64)
    model = add_lora(load_causal_lm(base, "nf4", "cpu", tokenizer=tok), tok, settings)
    trainer = make_trainer(model, tok, data.dataset, data.dataset, settings, out, checkpoint_dir=checkpoints)
    if kill_after:
        trainer.add_callback(KillAfterSave(kill_after))
    stats = train_sft(trainer)
    save_adapter(trainer.model, tok, out / "adapter")
    return stats, load_file(out / "adapter" / "adapter_model.safetensors")


def test_sft_killed_then_resumed_ends_as_an_uninterrupted_run(base, tmp_path):
    whole, whole_weights = sft_attempt(base, tmp_path / "whole", tmp_path / "ck-whole")
    with pytest.raises(Killed):
        sft_attempt(base, tmp_path / "killed", tmp_path / "ck", kill_after=2)
    (saved,) = (tmp_path / "ck").glob("*/checkpoint-*")
    assert saved.name == "checkpoint-2"
    resumed, resumed_weights = sft_attempt(base, tmp_path / "killed", tmp_path / "ck")
    assert [step for step, _ in resumed.curves["train"]] == [1, 2, 3, 4]  # the log of steps 1-2 came back with the checkpoint
    assert [loss for _, loss in resumed.curves["train"]] == pytest.approx([loss for _, loss in whole.curves["train"]], abs=1e-6)
    assert len({loss for _, loss in whole.curves["train"]}) == 4  # it learned at every step: equal curves say something
    assert resumed.eval_loss_after == pytest.approx(whole.eval_loss_after, abs=1e-6)
    assert set(resumed_weights) == set(whole_weights)
    for name, w in whole_weights.items():
        assert torch.allclose(resumed_weights[name], w, atol=1e-6), name
    assert not list((tmp_path / "ck").glob("*/checkpoint-*")), "a finished run leaves no checkpoints"


def test_sft_does_not_resume_another_configurations_checkpoint(base, tmp_path):
    with pytest.raises(Killed):
        sft_attempt(base, tmp_path / "a", tmp_path / "ck", kill_after=2)
    (old,) = (tmp_path / "ck").iterdir()
    other = replace(SETTINGS, learning_rate=SETTINGS.learning_rate * 2)
    stats, _ = sft_attempt(base, tmp_path / "b", tmp_path / "ck", settings=other)
    assert [step for step, _ in stats.curves["train"]] == [1, 2, 3, 4]
    assert (old / "checkpoint-2").is_dir(), "the other configuration's checkpoint is neither used nor deleted"
    assert [p.name for p in (tmp_path / "ck").iterdir()] == [old.name], "the new run's own checkpoints are gone"


# --------------------------------------------------------------------------------------------- reward


REWARD = RewardParams(base_model=MINILM, max_length=48, lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_layers=None,
                      train_new_tokens=True, learning_rate=2e-3, epochs=1, batch_size=8, warmup=0.0, logging_steps=1, seed=0)
PAIRS = synthetic_pairs(TOPICS_TRAIN)[:32]  # 4 steps of 8


def test_reward_training_killed_then_resumed_ends_as_an_uninterrupted_run(tmp_path, monkeypatch):
    from trl import RewardTrainer

    whole = train_reward_model(PAIRS, REWARD, tmp_path / "whole", checkpoint_dir=tmp_path / "ck-whole", save_steps=1)
    original = RewardTrainer._save_checkpoint

    def save_then_die(self, *args, **kw):
        original(self, *args, **kw)
        if self.state.global_step == 2:
            raise Killed("killed after step 2")

    monkeypatch.setattr(RewardTrainer, "_save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_reward_model(PAIRS, REWARD, tmp_path / "resumed", checkpoint_dir=tmp_path / "ck", save_steps=1)
    monkeypatch.setattr(RewardTrainer, "_save_checkpoint", original)
    assert [p.name for p in (tmp_path / "ck").glob("*/checkpoint-*")] == ["checkpoint-2"]
    resumed = train_reward_model(PAIRS, REWARD, tmp_path / "resumed", checkpoint_dir=tmp_path / "ck", save_steps=1)

    def losses(result):
        return [h["loss"] for h in result.log_history if "loss" in h]

    assert [h["step"] for h in resumed.log_history if "loss" in h] == [1, 2, 3, 4]
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-6)
    a, b = load_file(whole.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not list((tmp_path / "ck").glob("*/checkpoint-*")), "a finished run leaves no checkpoints"
