"""RLOO (utils/rloo/): trl's RLOOTrainer on the SFT policy, with the kit's prompts, stop tokens and rewards.

The model is a tiny random GPT-NeoX with a word-level tokenizer whose words include "the", and an "SFT adapter" with
non-zero LoRA and chat-token weights, so the reference differs from the bare base. The learning test trains against
``utils.rl.example_rewards:count_the`` and measures it on a fixed set of prompts, several samples each, before and after.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import load_peft_weights

from fixtures import chat_word_tokenizer, tiny_gpt_neox

from utils.dpo.policy import POLICY, REFERENCE, as_reference, save_policy
from utils.rloo.params import RLOOParams
from utils.rloo.training import TrlReward, encode_prompts, make_trainer, run_training, trainer_args
from utils.params import ParameterError
from utils.model.chat_format import encode_prompt, stop_token_ids
from utils.rl.example_rewards import count_the
from utils.model.generation import SamplingConfig, generate_replies
from utils.ppo.model import GPT_NEOX_LORA
from utils.rl.reward_functions import RewardFunctionError, load_reward_function, stage_reward

WORDS = [f"w{i}" for i in range(24)] + ["the", "a"]


@pytest.fixture(scope="module")
def tokenizer():
    return chat_word_tokenizer(WORDS)


def tiny_lm(tokenizer):
    # A larger init than 0.02 gives peaked next-token distributions that LoRA moves within a few updates (as test_ppo).
    return tiny_gpt_neox(len(tokenizer), 0, num_attention_heads=4, initializer_range=0.2)


@pytest.fixture(scope="module")
def sft_adapter(tokenizer, tmp_path_factory):
    """An adapter as stage 02 saves one (LoRA and trainable chat-token rows), with non-zero weights."""
    chat_tokens = sorted(tokenizer.convert_tokens_to_ids(t) for t in ("<|prompter|>", "<|assistant|>", "<|system|>"))
    model = get_peft_model(tiny_lm(tokenizer), LoraConfig(task_type="CAUSAL_LM", trainable_token_indices=chat_tokens, **GPT_NEOX_LORA))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("sft") / "adapter"
    model.save_pretrained(path)
    return path


def sft_policy(tokenizer, sft_adapter) -> PeftModel:
    """The SFT model as stage 04_rloo loads it: the base with the SFT adapter as the trainable "default"."""
    return PeftModel.from_pretrained(tiny_lm(tokenizer), str(sft_adapter), adapter_name=POLICY, is_trainable=True)


def prompts(n: int = 16, offset: int = 0) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": " ".join(WORDS[(5 * i + j + offset) % 24] for j in range(3))}] for i in range(n)]


def settings(**overrides) -> RLOOParams:
    base = dict(updates=2, prompts_per_update=4, replies_per_prompt=4, max_new_tokens=8, learning_rate=2e-2, beta=0.05,
                steps_per_update=1)
    return RLOOParams(**{**base, **overrides})


def train(tokenizer, sft_adapter, tmp_path, reward=count_the, **overrides):
    model = sft_policy(tokenizer, sft_adapter)
    prompt_set = encode_prompts(prompts(), tokenizer, max_prompt_tokens=64)
    trainer, stats = run_training(model, tokenizer, prompt_set, reward, settings(**overrides), sft_adapter, tmp_path,
                                       snapshot_updates=[0, 1, overrides.get("updates", 2)], log=None)
    return model, trainer, stats


def adapter_tensors(model, adapter: str) -> dict[str, torch.Tensor]:
    """``{name without the adapter: tensor}`` of one adapter's weights."""
    out = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if adapter in parts:
            out[".".join(x for x in parts if x != adapter)] = p.detach().clone()
    return out


def saved_tensors(folder) -> dict[str, torch.Tensor]:
    """A saved adapter's weights, under the keys of :func:`adapter_tensors` (peft saves them without the adapter name)."""
    return load_peft_weights(str(folder))


# ---- the reference: the SFT adapter, frozen ---------------------------------------------------------------------


def test_the_reference_is_the_frozen_sft_adapter_and_only_the_policy_moves(tokenizer, sft_adapter, tmp_path):
    model, trainer, stats = train(tokenizer, sft_adapter, tmp_path)
    assert set(model.peft_config) == {POLICY, REFERENCE}  # trl added "ref" (no peft_config was passed)
    sft = saved_tensors(sft_adapter)
    ref = adapter_tensors(model, REFERENCE)
    policy = adapter_tensors(model, POLICY)
    # The reference holds exactly the SFT weights after training, the chat-token rows included (trl's own copy misses
    # them: utils.dpo.policy.sft_as_reference puts them back), and none of it is trainable.
    assert any("trainable_tokens_delta" in k for k in ref)
    assert set(ref) == set(sft)
    assert all(torch.equal(ref[k], sft[k]) for k in sft)
    assert not any(p.requires_grad for n, p in model.named_parameters() if f".{REFERENCE}." in n or n.endswith(f".{REFERENCE}"))
    # The policy started there too (trl's first KL is exactly 0: π = π_ref at the first sample) and then moved.
    assert stats.train_log[0]["kl"] == 0.0 and stats.train_log[0]["kl_per_token"] == 0.0
    assert any(not torch.equal(policy[k], ref[k]) for k in policy if "lora" in k)
    # The reference is the SFT model, not the bare base: its log-probs differ from the base's.
    ids = torch.tensor([encode_prompt(prompts(1)[0], tokenizer)])
    with torch.no_grad(), as_reference(model):
        ref_logits = model(input_ids=ids).logits
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(input_ids=ids).logits
    assert not torch.allclose(ref_logits, base_logits)
    # Snapshot 0 is the SFT adapter; the last snapshot is the trained policy; each is a plain peft folder (no "ref").
    assert sorted(stats.snapshots) == [0, 1, 2]
    first, last = saved_tensors(stats.snapshots[0]), saved_tensors(stats.snapshots[2])
    assert all(torch.equal(first[k], sft[k]) for k in sft)
    assert any(not torch.equal(last[k], sft[k]) for k in sft)
    assert not (stats.snapshots[2] / REFERENCE).exists()
    saved = save_policy(model, tokenizer, tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_lm(tokenizer), str(saved)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_replies_stop_at_the_kits_stop_token_and_the_reward_sees_decoded_replies(tokenizer, sft_adapter, tmp_path):
    seen = []

    def spy(conversations, replies):
        seen.extend(zip(conversations, replies))
        return [0.0] * len(replies)

    model, trainer, stats = train(tokenizer, sft_adapter, tmp_path, reward=spy, updates=1)
    assert set(stop_token_ids(tokenizer)) <= set(trainer.eos_token_ids)
    assert len(seen) == 16 and all(c in prompts() for c, _ in seen)
    assert all("<|" not in r and r == r.strip() for _, r in seen)  # decode_reply: no special tokens, no padding
    row = stats.train_log[0]
    assert 0.0 <= row["ended_fraction"] <= 1.0 and 0 < row["response_length"] <= 8
    assert row["frac_reward_zero_std"] == 1.0  # a constant reward: every prompt's k replies tie, no learning signal


def test_several_steps_per_update_share_one_generation_batch_and_are_counted_as_one_update(tokenizer, sft_adapter, tmp_path):
    calls = []

    def spy(conversations, replies):
        calls.append(len(replies))
        return count_the(conversations, replies)

    model, trainer, stats = train(tokenizer, sft_adapter, tmp_path, reward=spy, mini_batch_size=4, steps_per_update=2)
    assert calls == [16, 16]  # one sampling per update, not per optimizer step
    assert trainer.state.global_step == 4 and stats.updates == 2
    assert [r["update"] for r in stats.train_log] == [1, 2] and sorted(stats.snapshots) == [0, 1, 2]
    assert {s["update"] for s in stats.samples} == {1, 2}
    assert stats.train_log[0]["kl"] == 0.0 and stats.train_log[1]["kl"] != 0.0
    assert all(math.isfinite(r["clip_ratio"]) and 0.0 <= r["clip_ratio"] <= 1.0 for r in stats.train_log)


# ---- learning -------------------------------------------------------------------------------------------------------


def the_count(model, tokenizer, samples: int = 8) -> float:
    """Mean count_the over a fixed set of 8 prompts (not the training prompts), ``samples`` replies each, seeded."""
    fixed = [p for p in prompts(8, offset=2) for _ in range(samples)]
    sampling = SamplingConfig(max_new_tokens=8, min_new_tokens=0, temperature=1.0, top_k=0, top_p=1.0)
    replies = generate_replies(model, tokenizer, fixed, sampling, batch_size=64, seed=123)
    return sum(count_the(fixed, replies)) / len(replies)


def test_rloo_raises_a_scripted_reward_far_beyond_what_an_untrained_run_reaches(tokenizer, sft_adapter, tmp_path):
    before = the_count(sft_policy(tokenizer, sft_adapter), tokenizer)
    results = {}
    for name, lr in (("trained", 2e-2), ("learning rate 0", 0.0)):
        model, _, stats = train(tokenizer, sft_adapter, tmp_path / name, updates=5, learning_rate=lr)
        results[name] = (the_count(model, tokenizer), stats.train_log)
    (trained, log), (frozen, _) = results["trained"], results["learning rate 0"]
    assert frozen == pytest.approx(before)  # the measurement itself is deterministic: no change without training
    # "the" is one word in 27 by chance (~0.4 per 8-token reply); RLOO makes it many times more frequent (~7).
    assert trained > before + 2.0, (before, trained, [round(r["reward_mean"], 2) for r in log])
    # The KL to the SFT model starts at 0 and grows as the policy moves towards "the".
    assert log[0]["kl"] == 0.0 and all(math.isfinite(r["kl"]) for r in log) and log[-1]["kl"] > log[1]["kl"] > 0.0


def test_grpo_is_one_parameter_away_and_raises_the_same_scripted_reward(tokenizer, sft_adapter, tmp_path):
    from trl import GRPOTrainer, RLOOTrainer

    before = the_count(sft_policy(tokenizer, sft_adapter), tokenizer)
    model, trainer, stats = train(tokenizer, sft_adapter, tmp_path, updates=5, algorithm="grpo")
    assert isinstance(trainer, GRPOTrainer) and not isinstance(trainer, RLOOTrainer)
    assert trainer.scale_rewards == "group" and trainer.beta == 0.05  # GRPO's own: the group's spread as the scale
    after, log = the_count(model, tokenizer), stats.train_log
    assert after > before + 2.0, (before, after, [round(r["reward_mean"], 2) for r in log])
    # The same bookkeeping as RLOO's: one row per update, the KL (here trl's per-token estimate in the loss) from 0.
    assert [r["update"] for r in log] == [1, 2, 3, 4, 5] and sorted(stats.snapshots) == [0, 1, 5]
    assert log[0]["kl"] == 0.0 and log[-1]["kl"] > 0.0 and all(math.isfinite(r["clip_ratio"]) for r in log)


# ---- a reward function that cannot be used stops before training ---------------------------------------------------


def wrong_count(conversations, replies):
    return [1.0]


def test_a_reward_function_that_does_not_import_or_miscounts_stops_before_training_in_one_line(tmp_path):
    for spec, message in [("utils.no_such_module:f", "does not import"), ("utils.rl.example_rewards:nope", "has no 'nope'"),
                          ("test_rloo:wrong_count", "returned 1 scores for 4 replies")]:
        with pytest.raises(RewardFunctionError, match=message) as info:
            stage_reward(tmp_path, spec, prompts(2))
        assert "\n" not in str(info.value)


def test_a_reward_that_miscounts_during_training_stops_in_one_line(tokenizer):
    prompt_set = encode_prompts(prompts(2), tokenizer, max_prompt_tokens=64)
    reward = TrlReward(load_reward_function("test_rloo:wrong_count"), prompt_set, tokenizer)
    ids = [encode_prompt(prompts(1)[0], tokenizer)] * 2
    with pytest.raises(RewardFunctionError, match="reward_function 'test_rloo:wrong_count': returned 1 scores for 2 replies") as info:
        reward(prompts=prompt_set.texts, completions=["", ""], completion_ids=ids, prompt_index=[0, 1])
    assert "\n" not in str(info.value)


# ---- settings and prompts -----------------------------------------------------------------------------------------------


def test_settings_reject_nonsense_and_long_prompts_are_counted_not_cut(tokenizer, monkeypatch):
    with pytest.raises(ParameterError, match="algorithm must be 'rloo' or 'grpo'"):
        RLOOParams(algorithm="ppo")
    with pytest.raises(ParameterError, match="replies_per_prompt must be >= 2"):
        RLOOParams(replies_per_prompt=1)
    with pytest.raises(ValueError, match="mini_batch_size must divide the 16 replies"):
        RLOOParams(mini_batch_size=5)
    args = trainer_args(RLOOParams(prompts_per_update=4, replies_per_prompt=4, mini_batch_size=8, steps_per_update=1),
                        "/tmp/unused")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.generation_batch_size) == (8, 2, 16)
    # No mini_batch_size: each optimizer step's replies in one pass (16 replies, 4 steps: 4 passes of 4, one each).
    args = trainer_args(RLOOParams(prompts_per_update=4, replies_per_prompt=4, steps_per_update=4), "/tmp/unused")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (4, 1, 4)
    with pytest.raises(ParameterError, match="steps_per_update must divide the 16 replies of an update, got 3"):
        RLOOParams(steps_per_update=3)
    monkeypatch.setattr("utils.model.distributed.world_size", lambda: 2)  # under accelerate launch: half a step each
    args = trainer_args(RLOOParams(prompts_per_update=4, replies_per_prompt=4, steps_per_update=4), "/tmp/unused")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (2, 1, 4)
    monkeypatch.undo()
    assert (args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.num_iterations) == (1.0, 0, 1.0, 1.0, 1)
    args = trainer_args(RLOOParams(updates=3, mini_batch_size=4, steps_per_update=2), "/tmp/unused")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (4, 2, 4)
    assert (args.generation_batch_size, args.max_steps, args.logging_steps) == (16, 6, 2)
    with pytest.raises(ValueError, match="steps_per_update must divide the 4 micro-batches"):
        RLOOParams(mini_batch_size=4, steps_per_update=3)
    with pytest.raises(ValueError, match="2 prompts fit, fewer than prompts_per_update=4"):
        make_trainer(None, tokenizer, encode_prompts(prompts(2), tokenizer, 64), None, RLOOParams(), None, "/tmp/unused")
    long = [[{"role": "user", "content": " ".join(WORDS * 3)}]]
    prompt_set = encode_prompts(prompts(3) + long, tokenizer, max_prompt_tokens=20)
    assert (len(prompt_set), prompt_set.too_long) == (3, 1)
    assert prompt_set.ids[0] == encode_prompt(prompts(1)[0], tokenizer)


# ---- checkpoints ----------------------------------------------------------------------------------------------------------


class Killed(RuntimeError):
    pass


class CountTheUntil:
    """count_the, until the reward of update ``kill_at`` is asked for: then the run dies (a killed process)."""

    fingerprint = "count_the"  # the same reward for the checkpoint's key, killed or not

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at, self.__name__ = kill_at, "count_the"

    def __call__(self, conversations, replies):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.kill_at:
            raise Killed(f"killed at update {self.calls}")
        return count_the(conversations, replies)


def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_as_the_uninterrupted_one(tokenizer, sft_adapter, tmp_path):
    def run(reward, root):
        model = sft_policy(tokenizer, sft_adapter)
        prompt_set = encode_prompts(prompts(), tokenizer, max_prompt_tokens=64)
        _, stats = run_training(model, tokenizer, prompt_set, reward, settings(updates=3, save_steps=1), sft_adapter, root / "out",
                                snapshot_updates=[0, 1, 2, 3], checkpoint_root=root / "checkpoints", log=None)
        return adapter_tensors(model, POLICY), stats

    straight, straight_stats = run(CountTheUntil(), tmp_path / "straight")
    with pytest.raises(RewardFunctionError, match="killed at update 3"):
        run(CountTheUntil(kill_at=3), tmp_path / "killed")  # dies in update 3, after update 2's checkpoint
    resumed, resumed_stats = run(CountTheUntil(), tmp_path / "killed")
    assert [r["update"] for r in resumed_stats.train_log] == [3]  # updates 1 and 2 were not redone
    assert resumed_stats.train_log[0]["reward_mean"] == straight_stats.train_log[-1]["reward_mean"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert sorted(resumed_stats.snapshots) == [0, 1, 2, 3]  # the ones taken before the kill were kept
    assert not (tmp_path / "killed" / "checkpoints").exists() or not any((tmp_path / "killed" / "checkpoints").iterdir())
