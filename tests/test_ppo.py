"""PPO (utils/ppo/: losses, trainer, model, rollout, checkpoint).

The math is checked against plain loops and hand-worked numbers; the loop on a tiny random GPT-NeoX with a
word-level tokenizer and a synthetic reward (the fraction of reply words that are "yes").
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from fixtures import PPO_WORDS as WORDS
from fixtures import chat_word_tokenizer
from fixtures import ppo_config as small_config
from fixtures import ppo_lm as tiny_lm
from fixtures import ppo_prompts as prompts

from utils.model.chat_format import encode_prompt, stop_token_ids
from utils.rl.fixed_set import FixedSetProgress
from utils.params import ParameterError
from utils.ppo.params import PPOParams
from utils.ppo.losses import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalty_rewards,
    masked_whiten,
    reward_mean_std,
    rloo_advantages,
)
from utils.ppo.model import GPT_NEOX_LORA, POLICY, REFERENCE, build_actor_critic
from utils.ppo.rollout import sample_rollout, token_logprobs
from utils.ppo.stage import snapshot_schedule, summary_metrics
from utils.ppo.trainer import PPOTrainer, TrainingDiverged
from utils.rl.reward_functions import scorer_reward

# ---- fixtures: a word-level tokenizer in the kit's chat format and a tiny random GPT-NeoX (tests/fixtures.py) -------


@pytest.fixture(scope="module")
def tokenizer():
    return chat_word_tokenizer(WORDS)


@pytest.fixture
def sft_adapter(tokenizer, tmp_path):
    """An 'SFT adapter' as stage 02 saves one (LoRA plus trainable chat-token embeddings), with non-zero
    weights, so the reference adapter differs from the bare base."""
    chat_tokens = sorted(tokenizer.convert_tokens_to_ids(t) for t in ("<|prompter|>", "<|assistant|>", "<|system|>"))
    config = LoraConfig(task_type="CAUSAL_LM", trainable_token_indices=chat_tokens, **GPT_NEOX_LORA)
    model = get_peft_model(tiny_lm(tokenizer), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "sft")
    return tmp_path / "sft"


def yes_fraction(prompts, replies):
    return [sum(w == "yes" for w in r.split()) / max(len(r.split()), 1) for r in replies]


# ---- the math ---------------------------------------------------------------------------------------------------


def test_gae_matches_a_plain_loop_over_time_steps():
    torch.manual_seed(0)
    B, T, gamma, lam = 4, 7, 0.9, 0.8
    lengths = [7, 3, 1, 5]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    rewards, values = torch.randn(B, T), torch.randn(B, T)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        r, v = rewards[b, :n].tolist(), values[b, :n].tolist() + [0.0]  # terminal state after the last token
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):  # A_t = Σ_l (γλ)^l δ_{t+l}, the definition rather than the recursion
            expected = sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t))
            assert advantages[b, t].item() == pytest.approx(expected, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(expected + v[t], abs=1e-5)
        assert advantages[b, n:].abs().sum() == 0  # nothing leaks into the padding


def test_kl_penalty_on_every_token_and_score_on_the_last():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalty_rewards(logprobs, ref, torch.tensor([2.0, -1.0]), mask, kl_coef=0.1)
    # row 0: kl = [0.5, -1, 0], score on token 2; row 1: kl = [1, 0, (pad)], score on token 1
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.1, -1.0, 0.0]]))


def test_clipped_policy_loss_has_zero_gradient_outside_the_clip_range():
    eps = 0.2
    old = torch.zeros(6)
    # ratio = e^{new}: 1.5 (above 1+ε), 0.5 (below 1−ε), 1.1 (inside), for positive and negative advantages
    new = torch.log(torch.tensor([1.5, 0.5, 1.1, 1.5, 0.5, 1.1])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    loss, clip_fraction, _ = clipped_policy_loss(new, old, adv, torch.ones(6), eps)
    loss.backward()
    ratio = torch.tensor([1.5, 0.5, 1.1, 1.5, 0.5, 1.1])
    # Clipped where the ratio left the range in the advantage's favour (tokens 0 and 1): gradient 0.
    # Elsewhere the unclipped term is the max, d(−A·ρ)/d log π = −A·ρ, averaged over the 6 tokens.
    expected = torch.tensor([0.0, 0.0, -1.1, 1.5, -0.5, 1.1]) / 6
    assert torch.allclose(new.grad, expected, atol=1e-6)
    assert clip_fraction.item() == pytest.approx(2 / 6)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1 + 1.5 - 0.5 + 1.1) / 6, abs=1e-6)


def test_clipped_value_loss_keeps_the_pessimistic_term():
    old = torch.tensor([0.0, 0.0, 0.0])
    new = torch.tensor([1.0, 1.0, 0.1], requires_grad=True)
    returns = torch.tensor([2.0, -1.0, 0.0])
    loss, clip_fraction = clipped_value_loss(new, old, returns, torch.ones(3), clip_range=0.2)
    # token 0: unclipped (1−2)²=1, clipped (0.2−2)²=3.24 -> 3.24, gradient 0 (clipped value is constant)
    # token 1: unclipped (1+1)²=4, clipped (0.2+1)²=1.44 -> 4; token 2: inside the range, 0.01
    assert loss.item() == pytest.approx(0.5 * (3.24 + 4 + 0.01) / 3)
    loss.backward()
    assert torch.allclose(new.grad, torch.tensor([0.0, 2.0, 0.1]) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)


def test_whitening_and_explained_variance():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 5.0]])
    w = masked_whiten(x, mask)
    kept = w[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert (kept**2).mean().item() == pytest.approx(1.0, abs=1e-4)
    assert w[0, 2] == 0
    returns = torch.tensor([[1.0, 3.0, 0.0], [5.0, 7.0, 9.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 5.0), returns, mask) == pytest.approx(0.0)


def test_adaptive_kl_controller_follows_ziegler():
    ctl = KLController(0.2, target=6.0, horizon=10_000)
    ctl.update(24.0, n_steps=1000)  # error clipped to +0.2: β·(1 + 0.2·0.1)
    assert ctl.value == pytest.approx(0.2 * 1.02)
    ctl.update(3.0, n_steps=1000)  # error −0.5 clipped to −0.2
    assert ctl.value == pytest.approx(0.2 * 1.02 * 0.98)
    ctl.update(6.6, n_steps=500)  # error +0.1, unclipped
    assert ctl.value == pytest.approx(0.2 * 1.02 * 0.98 * 1.005)
    fixed = KLController(0.2, target=None, horizon=10_000)
    fixed.update(100.0, n_steps=1000)
    assert fixed.value == 0.2


# ---- rollouts ---------------------------------------------------------------------------------------------------


def test_rollout_cuts_each_reply_at_its_first_stop_token(tokenizer):
    eos, pad = stop_token_ids(tokenizer)[0], tokenizer.pad_token_id
    yes, no, w1 = (tokenizer.convert_tokens_to_ids(t) for t in ("yes", "no", "w1"))
    ids = [encode_prompt(p, tokenizer) for p in prompts(3)]
    width = max(map(len, ids))
    generated = torch.tensor([[yes, eos, no, no], [w1, w1, w1, w1], [eos, eos, yes, yes]])

    def fake_generate(input_ids, **kwargs):
        assert input_ids.shape == (3, width) and kwargs["eos_token_id"] == stop_token_ids(tokenizer)
        return torch.cat([input_ids, generated], 1)

    fake_model = SimpleNamespace(lm=SimpleNamespace(generate=fake_generate), device=torch.device("cpu"))
    ro = sample_rollout(fake_model, tokenizer, prompts(3), ids, max_new_tokens=4)
    assert ro.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ro.ended.tolist() == [True, False, True]  # the second reply hit max_new_tokens
    assert ro.response_ids.tolist() == [[yes, eos, pad, pad], [w1] * 4, [eos, pad, pad, pad]]
    assert ro.replies == ["yes", "w1 w1 w1 w1", ""]
    assert ro.attention_mask[:, :width].sum(1).tolist() == [len(i) for i in ids]  # prompts left-padded


# ---- the model: one base, policy and reference adapters ------------------------------------------------------------


def reply_logprobs(ac, tokenizer, n: int = 4):
    torch.manual_seed(0)
    ps = prompts(n)
    ro = sample_rollout(ac, tokenizer, ps, [encode_prompt(p, tokenizer) for p in ps], max_new_tokens=5)
    with torch.no_grad():
        logits, _ = ac(ro.input_ids[:, :-1], ro.attention_mask[:, :-1], ro.response_mask.shape[1])
        policy = token_logprobs(logits, ro.response_ids) * ro.response_mask
        with ac.as_reference():
            logits, _ = ac(ro.input_ids[:, :-1], ro.attention_mask[:, :-1], ro.response_mask.shape[1])
            ref = token_logprobs(logits, ro.response_ids) * ro.response_mask
    return policy, ref


@pytest.mark.parametrize("with_sft_adapter", [False, True])
def test_kl_is_zero_while_policy_equals_reference(tokenizer, sft_adapter, with_sft_adapter):
    ac = build_actor_critic(tiny_lm(tokenizer), sft_adapter if with_sft_adapter else None)
    policy, ref = reply_logprobs(ac, tokenizer)
    assert torch.equal(policy, ref)
    assert policy.abs().sum() > 0  # the comparison was of real log-probs
    # After one update the policy has moved: the KL is no longer zero, so the check above could fail.
    PPOTrainer(ac, tokenizer, prompts(), yes_fraction, small_config(learning_rate=1e-2), log=None).step()
    policy, ref = reply_logprobs(ac, tokenizer)
    assert not torch.allclose(policy, ref)


def adapter_name(parameter: str) -> str | None:
    parts = parameter.split(".")
    return next((a for a in (POLICY, REFERENCE) if a in parts), None)


def test_reference_is_the_frozen_sft_adapter(tokenizer, sft_adapter):
    ac = build_actor_critic(tiny_lm(tokenizer), sft_adapter)
    adapters = {n: p.detach().clone() for n, p in ac.peft_model.named_parameters() if adapter_name(n)}
    assert {adapter_name(n) for n in adapters} == {POLICY, REFERENCE}
    assert any("trainable_tokens_delta" in n for n in adapters)  # the chat-token embeddings came along
    trainable = {n for n, p in ac.named_parameters() if p.requires_grad}
    assert trainable and all(adapter_name(n) == POLICY or n.startswith("value_head") for n in trainable)
    # The reference is the SFT adapter (not the bare base): its log-probs differ from the base model's.
    _, ref = reply_logprobs(ac, tokenizer)
    with ac.peft_model.disable_adapter():
        base, _ = reply_logprobs(ac, tokenizer)
    assert not torch.allclose(ref, base)

    PPOTrainer(ac, tokenizer, prompts(), yes_fraction, small_config(), log=None).step()
    after = dict(ac.peft_model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in adapters.items() if adapter_name(n) == REFERENCE)
    assert any(not torch.equal(after[n], p) for n, p in adapters.items() if adapter_name(n) == POLICY)
    assert {n for n, p in ac.named_parameters() if p.requires_grad} == trainable  # switching adapters kept them


def test_saved_policy_adapter_loads_as_a_plain_peft_adapter(tokenizer, sft_adapter, tmp_path):
    ac = build_actor_critic(tiny_lm(tokenizer), sft_adapter)
    PPOTrainer(ac, tokenizer, prompts(), yes_fraction, small_config(learning_rate=1e-2), log=None).step()
    ac.save_policy_adapter(tmp_path / "ppo")
    reloaded = PeftModel.from_pretrained(tiny_lm(tokenizer), str(tmp_path / "ppo")).eval()
    ids = torch.tensor([encode_prompt(prompts(1)[0], tokenizer)])
    with torch.no_grad():
        expected = ac.lm(ids).logits
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)


# ---- the loop ------------------------------------------------------------------------------------------------------


def learning_run(tokenizer, updates: int, **overrides) -> list[dict[str, float]]:
    config = PPOParams(**{**dict(batch_size=16, replies_per_prompt=1, mini_batch_size=8, ppo_epochs=4, max_new_tokens=8,
                                 learning_rate=5e-3, init_kl_coef=0.05, target_kl=None, missing_eos_penalty=0.0, seed=0), **overrides})
    return PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, config, log=None).train(updates)


def test_ppo_raises_a_synthetic_reward_within_a_few_updates_with_bounded_kl(tokenizer):
    history = learning_run(tokenizer, 10)
    first = sum(r["reward_mean"] for r in history[:2]) / 2
    last = sum(r["reward_mean"] for r in history[-2:]) / 2
    # By chance "yes" is about 1 word in 30 (reward ≈ 0.03); PPO makes it many times more frequent.
    assert last > first + 0.2, [round(r["reward_mean"], 3) for r in history]
    # Bounded: a policy that only ever said "yes" would be some 30 nats per 8-token reply from the reference.
    assert all(-1.0 < r["kl"] < 20.0 for r in history), [round(r["kl"], 2) for r in history]
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout comes from π = π_ref
    metrics = summary_metrics(history)
    assert metrics["updates"] == 10 and metrics["reward_mean_last"] == history[-1]["reward_mean"]


def test_a_larger_kl_coefficient_keeps_the_policy_closer_to_the_reference(tokenizer):
    weak, strong = (max(r["kl"] for r in learning_run(tokenizer, 6, init_kl_coef=beta)) for beta in (0.05, 1.0))
    assert strong < weak / 1.5, (strong, weak)


def test_the_adaptive_controller_moves_beta_in_training_by_each_updates_kl(tokenizer):
    """β in a real run: fed each update's measured KL, it falls while the policy is closer than the target (the first
    rollout is the reference's own, KL 0) and rises once it drifts past; horizon = batch size allows x1.2 an update."""
    target = 0.05
    history = learning_run(tokenizer, 6, target_kl=target, kl_horizon=16)
    betas = [r["kl_coef"] for r in history]
    for row, beta_next in zip(history, betas[1:]):
        error = min(max(row["kl"] / target - 1.0, -0.2), 0.2)
        assert beta_next == pytest.approx(row["kl_coef"] * (1.0 + error)), (betas, [r["kl"] for r in history])
    assert betas[1] == pytest.approx(0.05 * 0.8)  # KL 0 at the first update: the largest step down
    assert max(betas[2:]) > betas[1], (betas, [r["kl"] for r in history])  # the policy drifted past 0.05 nats: β rose


def test_missing_eos_penalty_lowers_the_trained_objective_not_the_logged_reward(tokenizer):
    runs = {}
    for penalty in (0.0, 5.0):
        ac = build_actor_critic(tiny_lm(tokenizer))
        trainer = PPOTrainer(ac, tokenizer, prompts(), yes_fraction, small_config(max_new_tokens=3, missing_eos_penalty=penalty), log=None)
        runs[penalty] = trainer.step()
    cut = 1 - runs[0.0]["ended_fraction"]
    assert cut > 0  # with 3 new tokens some replies are cut off
    assert runs[5.0]["reward_mean"] == runs[0.0]["reward_mean"]  # same seed, same rollout, same score
    assert runs[5.0]["objective"] == pytest.approx(runs[0.0]["objective"] - 5.0 * cut, abs=1e-5)


def shifted(prompts, replies):  # a reward model with an arbitrary offset and scale
    return [1000.0 + 50.0 * s for s in yes_fraction(prompts, replies)]


def test_scores_can_be_normalised_by_the_first_batch(tokenizer):
    rows = {}
    for normalize in (True, False):
        trainer = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), shifted,
                             small_config(missing_eos_penalty=0.0, normalize_reward=normalize, reward_norm_samples=0), log=None)
        rows[normalize] = trainer.step()
    # First update: π = π_ref, so the objective is the mean training score: 0 once normalised, ~1000 raw.
    assert rows[True]["objective"] == pytest.approx(0.0, abs=1e-4)
    assert rows[False]["objective"] == pytest.approx(rows[False]["reward_mean"], abs=1e-3)
    assert rows[True]["reward_mean"] == rows[False]["reward_mean"] > 999  # the log keeps the judge's own units
    assert trainer.reward_norm is None


def test_reward_normalisation_comes_from_a_dedicated_sample_of_the_initial_policy(tokenizer):
    seen = []

    def counting(prompts_, replies):
        seen.append(len(replies))
        return shifted(prompts_, replies)

    first_batch = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), shifted,
                             small_config(reward_norm_samples=0, missing_eos_penalty=0.0), log=None)
    row_first_batch = first_batch.step()
    dedicated = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), counting,
                           small_config(reward_norm_samples=20, missing_eos_penalty=0.0), log=None)
    row = dedicated.step()
    # 20 replies scored (batches of batch_size=8) before the update's own batch of 8.
    assert seen == [8, 8, 4, 8]
    # The sample is drawn apart from the training stream: the update's rollout is the one it would have been.
    assert row["reward_mean"] == row_first_batch["reward_mean"]
    assert dedicated.reward_norm != first_batch.reward_norm
    mean, std = dedicated.reward_norm
    assert 1000.0 <= mean <= 1050.0 and std > 0
    # With π = π_ref and no missing-EOS penalty, the first objective is the batch's score in the sample's units.
    assert row["objective"] == pytest.approx((row["reward_mean"] - mean) / std, abs=1e-4)


def test_resume_from_a_checkpoint_continues_exactly(tokenizer, tmp_path):
    config = small_config()
    straight = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, config, log=None)
    straight.train(3)

    first = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, config,
                       checkpoint_dir=tmp_path, checkpoint_every=2, log=None)
    first.train(2)
    assert [p.name for p in tmp_path.iterdir()] == ["update-000002.pt"]

    resumed = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, config,
                         checkpoint_dir=tmp_path, checkpoint_every=2, log=None)
    assert resumed.resume() and resumed.update == 2
    resumed.train(3)
    assert [r["reward_mean"] for r in resumed.history] == [r["reward_mean"] for r in straight.history]
    assert resumed.history[2]["kl"] == pytest.approx(straight.history[2]["kl"], abs=1e-5)
    for a, b in zip(resumed.model.trainable_parameters(), straight.model.trainable_parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["update-000003.pt"]  # saved after the last update


def test_a_trainer_continues_from_another_trainers_state_dict_without_files(tokenizer):
    config = small_config()
    straight = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, config, log=None)
    straight.train(2)
    first = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, config, log=None)
    first.train(1)
    state = first.state_dict()
    assert state["fingerprint"] == first.fingerprint and state["update"] == 1
    second = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, config, log=None)
    second.load_state_dict(state)
    second.train(2)  # its second update, from the first trainer's weights, optimizer, β and generators
    assert [r["reward_mean"] for r in second.history] == [r["reward_mean"] for r in straight.history]
    for a, b in zip(second.model.trainable_parameters(), straight.model.trainable_parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_checkpoint_of_another_configuration_is_not_resumed(tokenizer, tmp_path):
    PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, small_config(),
               checkpoint_dir=tmp_path, checkpoint_every=1, log=None).train(1)
    messages = []
    other = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction,
                       small_config(learning_rate=1e-3), checkpoint_dir=tmp_path, checkpoint_every=1, log=messages.append)
    assert not other.resume() and other.update == 0
    assert "another configuration" in messages[0]


def test_nan_reward_stops_the_run_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path):
    calls = []

    def reward(prompts, replies):
        calls.append(1)
        scores = yes_fraction(prompts, replies)
        return [math.nan] + scores[1:] if len(calls) == 3 else scores

    trainer = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), reward, small_config(),
                         checkpoint_dir=tmp_path, checkpoint_every=1, log=None)
    with pytest.raises(TrainingDiverged, match=r"update 3: the reward has 1 NaN/inf value\(s\) of 8; the last good checkpoint is .*update-000002\.pt"):
        trainer.train(5)
    assert [p.name for p in tmp_path.iterdir()] == ["update-000002.pt"]
    assert len(trainer.history) == 2
    again = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction, small_config(),
                       checkpoint_dir=tmp_path, checkpoint_every=1, log=None)
    assert again.resume() and again.update == 2


def test_nan_in_the_policy_stops_at_the_log_prob_check(tokenizer):
    ac = build_actor_critic(tiny_lm(tokenizer))
    trainer = PPOTrainer(ac, tokenizer, prompts(), yes_fraction, small_config(), log=None)
    trainer.step()
    with torch.no_grad():
        next(p for n, p in ac.named_parameters() if "lora_B" in n).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="update 2: the policy's log-probs has"):
        trainer.step()


def test_prompts_that_do_not_fit_are_counted_not_cut(tokenizer):
    long = [{"role": "user", "content": " ".join(WORDS * 3)}]
    trainer = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(5) + [long], yes_fraction,
                         small_config(max_prompt_tokens=16), log=None)
    assert len(trainer.prompts) == 5 and trainer.prompts_too_long == 1
    with pytest.raises(ValueError, match="none of the 1 prompts fits in max_prompt_tokens=16"):
        PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, [long], yes_fraction, small_config(max_prompt_tokens=16))


def test_scorer_reward_scores_each_reply_as_the_end_of_its_conversation():
    seen = []
    scorer = SimpleNamespace(score=lambda convs, batch_size: seen.extend(convs) or [float(len(c)) for c in convs])
    prompt = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert list(scorer_reward(scorer)([prompt], ["d"])) == [4.0]
    assert seen == [prompt + [{"role": "assistant", "content": "d"}]]


def test_config_rejects_nonsense():
    with pytest.raises(ParameterError, match="04_ppo: mini_batch_size must be >= 1"):
        PPOParams(mini_batch_size=0)
    with pytest.raises(ParameterError, match="temperature"):
        PPOParams(temperature=0.0)


# ---- what a checkpoint belongs to, snapshots, time by phase ------------------------------------------------------


def test_a_checkpoint_made_against_another_reward_model_or_starting_policy_is_not_resumed(tokenizer, tmp_path):
    def reward_with(fingerprint):
        def reward(prompts_, replies):
            return yes_fraction(prompts_, replies)
        reward.fingerprint = fingerprint
        return reward

    PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), reward_with("rm-a"), small_config(),
               checkpoint_dir=tmp_path, checkpoint_every=1, log=None).train(1)
    same = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), reward_with("rm-a"), small_config(),
                      checkpoint_dir=tmp_path, checkpoint_every=1, log=None)
    assert same.resume() and same.update == 1
    messages = []
    other_reward = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), reward_with("rm-b"), small_config(),
                              checkpoint_dir=tmp_path, checkpoint_every=1, log=messages.append)
    assert not other_reward.resume() and other_reward.update == 0
    assert "reward model" in messages[0]
    # Another starting policy (here: another base; in the kit, a retrained SFT adapter) is another run too.
    moved = build_actor_critic(tiny_lm(tokenizer))
    with torch.no_grad():
        next(p for n, p in moved.named_parameters() if "lora_B" in n).add_(0.01)
    other_start = PPOTrainer(moved, tokenizer, prompts(), reward_with("rm-a"), small_config(),
                             checkpoint_dir=tmp_path, checkpoint_every=1, log=None)
    assert not other_start.resume()


def test_scorer_reward_fingerprint_follows_the_reward_model_weights():
    lin = torch.nn.Linear(3, 1)
    scorer = SimpleNamespace(model=lin, max_length=8, score=lambda convs, batch_size: [0.0] * len(convs))
    before = scorer_reward(scorer).fingerprint
    assert scorer_reward(scorer).fingerprint == before
    with torch.no_grad():
        lin.weight.add_(1.0)
    assert scorer_reward(scorer).fingerprint != before


def test_snapshots_keep_the_policy_at_the_chosen_updates(tokenizer, tmp_path):
    snaps = tmp_path / "snapshots"
    (snaps / "update-000099").mkdir(parents=True)  # left over from another run: a fresh run removes it
    ac = build_actor_critic(tiny_lm(tokenizer))
    start = {k: v.clone() for k, v in ac.adapter_state().items() if k.startswith("adapter.")}
    trainer = PPOTrainer(ac, tokenizer, prompts(), yes_fraction, small_config(), log=None,
                         snapshot_updates=snapshot_schedule(3, 3), snapshot_dir=snaps)
    trainer.train(3)
    assert sorted(p.name for p in snaps.iterdir()) == ["update-000000", "update-000002", "update-000003"]
    assert sorted(trainer.snapshots()) == [0, 2, 3]
    # Snapshot 0 is the starting policy, the last one the trained policy: load each back onto the model.
    from peft.utils import load_peft_weights
    first = load_peft_weights(str(snaps / "update-000000"))
    last = load_peft_weights(str(snaps / "update-000003"))
    end = {k: v for k, v in ac.adapter_state().items() if k.startswith("adapter.")}
    assert all(torch.equal(first[k.removeprefix("adapter.")], v) for k, v in start.items())
    assert all(torch.equal(last[k.removeprefix("adapter.")], v) for k, v in end.items())
    assert not all(torch.equal(first[k.removeprefix("adapter.")], v) for k, v in end.items())


def test_snapshot_schedule_spreads_points_and_keeps_both_ends():
    assert snapshot_schedule(12, 4) == [0, 4, 8, 12]
    assert snapshot_schedule(2, 5) == [0, 1, 2]  # fewer updates than points: each update once
    with pytest.raises(ValueError, match="at least 2 points"):
        snapshot_schedule(10, 1)


def test_each_update_logs_its_seconds_by_phase(tokenizer):
    trainer = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(), yes_fraction,
                         small_config(reward_norm_samples=8), log=None)
    history = trainer.train(2)
    phases = ("generate", "score", "logprobs", "optimise")
    for row in history:
        assert all(row[f"seconds_{p}"] > 0 for p in phases)
        assert sum(row[k] for k in row if k.startswith("seconds_")) <= row["seconds"] + 1e-6
    assert "seconds_reward_norm" in history[0] and "seconds_reward_norm" not in history[1]
    assert set(summary_metrics(history)["seconds_by_phase"]) == {*phases, "reward_norm"}


# ---- the per-prompt baseline (RLOO) and progress on a fixed set ---------------------------------------------------


def test_rloo_advantages_are_each_reply_minus_the_mean_of_the_others_to_its_prompt():
    returns = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])  # two prompts, three replies each
    adv = rloo_advantages(returns, 3)
    assert adv.tolist() == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5, 0.0, 0.0, 0.0])
    assert adv.view(2, 3).sum(1).tolist() == pytest.approx([0.0, 0.0])  # the prompt's own level cancels


def test_reward_scale_is_the_within_prompt_spread_when_each_prompt_has_several_replies():
    # Two prompts far apart (means 0 and 100), the same small spread within each: the scale is that spread.
    scores = torch.tensor([-1.0, 1.0, 99.0, 101.0])
    mean, std = reward_mean_std(scores, group_size=2)
    assert mean == pytest.approx(50.0) and std == pytest.approx(math.sqrt(2.0))
    assert reward_mean_std(scores)[1] > 40  # one reply per prompt: the spread between prompts too


def test_rloo_config_needs_several_replies_per_prompt():
    with pytest.raises(ParameterError, match="rloo' needs replies_per_prompt >= 2"):
        PPOParams(baseline="rloo", replies_per_prompt=1)
    with pytest.raises(ParameterError, match="baseline must be 'value' or 'rloo'"):
        PPOParams(baseline="critic")


def fixed_set_run(tokenizer, reward, updates: int, snapshot_dir, **overrides) -> FixedSetProgress:
    """PPO with the RLOO baseline on the training prompts, read on 8 other prompts x 4 replies at each update."""
    config = PPOParams(**{**dict(batch_size=4, replies_per_prompt=4, baseline="rloo", mini_batch_size=8, ppo_epochs=2,
                                 max_new_tokens=8, learning_rate=5e-3, init_kl_coef=0.02, target_kl=None, seed=0,
                                 reward_norm_samples=16), **overrides})
    progress = FixedSetProgress(prompts(28)[20:], {"proxy": yes_fraction}, tokenizer, 4, 8, batch_size=16, seed=1, log=None)
    trainer = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(20), reward, config, log=None,
                         snapshot_updates=list(range(updates + 1)), snapshot_dir=snapshot_dir, progress=progress)
    trainer.train(updates)
    return progress


def test_rloo_ppo_raises_a_learnable_reward_on_held_out_prompts_where_a_broken_loop_cannot(tokenizer, tmp_path):
    learned = fixed_set_run(tokenizer, yes_fraction, 6, tmp_path / "a").points
    frozen = fixed_set_run(tokenizer, yes_fraction, 6, tmp_path / "b", learning_rate=0.0).points
    flipped = fixed_set_run(tokenizer, lambda p, r: [-x for x in yes_fraction(p, r)], 6, tmp_path / "c").points
    assert [p["update"] for p in learned] == list(range(7)) and learned[0]["proxy_gain"] == 0.0
    gain, se = learned[-1]["proxy_gain"], learned[-1]["proxy_gain_se"]
    # "yes" is about 1 word in 30 by chance; the trained policy says it several times as often, on prompts it never saw.
    assert gain > 0.1 and gain > 4 * se, [(round(p["proxy_gain"], 3), round(p["proxy_gain_se"], 3)) for p in learned]
    assert frozen[-1]["proxy_gain"] == 0.0 and frozen[-1]["kl"] == pytest.approx(0.0, abs=1e-4)  # same seeds, same policy
    assert flipped[-1]["proxy_gain"] < 0.0 < gain  # the sign of the reward decides the direction
    assert learned[-1]["kl"] > 0.1 and learned[0]["kl"] == pytest.approx(0.0, abs=1e-4)


def test_rloo_ppo_does_not_learn_to_stop_early_under_the_default_missing_eos_penalty(tokenizer, tmp_path):
    """The default penalty is off: a reward that grows with the reply's length is learned as length, not as stopping."""
    def length(p, r):
        return [float(len(x.split())) for x in r]
    points = fixed_set_run(tokenizer, length, 4, tmp_path, missing_eos_penalty=PPOParams().missing_eos_penalty, max_new_tokens=8).points
    assert points[-1]["ended_fraction"] <= points[0]["ended_fraction"] + 0.05, [p["ended_fraction"] for p in points]
    assert points[-1]["words"] >= points[0]["words"], [p["words"] for p in points]


def test_fixed_set_progress_survives_a_resume(tokenizer, tmp_path):
    def run(updates: int, resume: bool) -> FixedSetProgress:
        config = PPOParams(batch_size=2, replies_per_prompt=2, baseline="rloo", mini_batch_size=4, ppo_epochs=1, max_new_tokens=4,
                           learning_rate=5e-3, seed=0, reward_norm_samples=0, target_kl=6.0, kl_horizon=10_000)
        progress = FixedSetProgress(prompts(24)[20:], {"proxy": yes_fraction}, tokenizer, 2, 4, seed=1, log=None)
        trainer = PPOTrainer(build_actor_critic(tiny_lm(tokenizer)), tokenizer, prompts(20), yes_fraction, config, log=None,
                             checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1, snapshot_updates=[0, 1, 2],
                             snapshot_dir=tmp_path / "snaps", progress=progress)
        if resume:
            assert trainer.resume()
        trainer.train(updates)
        return progress
    whole = [p["proxy_gain"] for p in run(2, False).points]
    import shutil
    shutil.rmtree(tmp_path / "ckpt")
    run(1, False)
    resumed = run(2, True).points
    assert [p["update"] for p in resumed] == [0, 1, 2] and [p["proxy_gain"] for p in resumed] == pytest.approx(whole)


def test_the_update_line_shows_the_value_head_only_where_there_is_one():
    from utils.ppo.stage import format_row

    row = {"update": 3, "reward_mean": -0.4, "reward_std": 0.2, "kl": 0.9, "kl_coef": 0.04, "entropy": 2.8, "clip_fraction": 0.0,
           "value_loss": float("nan"), "explained_variance": float("nan"), "response_length": 50.4, "ended_fraction": 0.38,
           "seconds": 37.5}
    assert "nan" not in format_row(row) and "value loss" not in format_row(row)
    assert "value loss 0.120  expl var +0.30" in format_row({**row, "value_loss": 0.12, "explained_variance": 0.3})
