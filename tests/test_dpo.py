"""Stage 04_dpo: the reward stage's training pairs and no others, tokenized by the kit's chat format, the SFT
policy as an exact reference, and held-out figures that are trl's own."""

from __future__ import annotations

import math
import shutil

import pytest

from fixtures import CONVERSATION, MICRO_PROFILE, word_tokenizer
from utils.model import chat_format
from utils.dpo import stage as dpo_stage
from utils.dpo.data import conversational_record, encode_pairs
from utils.dpo.evaluation import ImplicitRewards, implicit_rewards, reply_logprob_sums
from utils.dpo.params import DPOParams
from utils.dpo.policy import POLICY, REFERENCE, load_policy
from utils.dpo.training import make_trainer
from utils.oasst import Pair, preference_pairs, rm_groups
from utils.params import ParameterError
from utils.pipeline.profile import load_profile
from utils.reward import stage as reward_stage
from utils.reward.params import RewardParams
from utils.pipeline.stages import REWARD
from utils.oasst.trees import iter_messages


def key(pair: Pair) -> tuple:
    return pair.group, pair.chosen, pair.rejected


def test_dpo_trains_on_the_proxys_pairs_as_stage_03_split_them_and_on_no_tree_of_the_judge_or_of_evaluation(micro_run):
    """DPO has no data parameters: it rebuilds stage 03's pairs from the parameters stage 03 recorded."""
    data = dpo_stage.load_data(DPOParams(max_train_pairs=None, max_eval_pairs=None), micro_run)
    # Stage 03's sets built here from the micro profile's values, as its steps build them: the proxy's trees and the judge's.
    reward = RewardParams(**load_profile(MICRO_PROFILE).stage_params(REWARD))
    split = reward.load_split()
    proxy_trees, judge_trees = reward_stage.split_for_judge(split.train, reward.judge_fraction, reward.seed)
    assert sorted(map(key, data.train_pairs)) == sorted(map(key, preference_pairs(rm_groups(proxy_trees))))
    messages = {name: {m["message_id"] for t in trees for m in iter_messages(t)}
                for name, trees in {"proxy": proxy_trees, "judge": judge_trees, "evaluation": split.eval + split.heldout}.items()}
    assert messages["judge"] and len(data.train_pairs) > 100
    assert all(p.group in messages["proxy"] and p.group not in messages["judge"] | messages["evaluation"] for p in data.train_pairs)
    assert {p.group for p in data.heldout_pairs} <= messages["evaluation"]
    assert not {key(p) for p in data.train_pairs} & {key(p) for p in data.heldout_pairs}
    assert [len(v) for v in dpo_stage.load_data(DPOParams(max_train_pairs=7, max_eval_pairs=5), micro_run).heldout_sets.values()] == [5, 5]


def test_a_reward_stage_without_a_record_of_its_parameters_stops_in_one_line(micro_run, tmp_path):
    (tmp_path / REWARD).mkdir()
    shutil.copy(micro_run / REWARD / "metrics.json", tmp_path / REWARD / "metrics.json")
    with pytest.raises(ParameterError, match=r"^04_dpo: stage 03_reward in .* has no record of the parameters it ran with; run it again$"):
        dpo_stage.load_data(DPOParams(), tmp_path)


def test_trl_conversational_record_and_oa_tokens_by_hand():
    tok = word_tokenizer()
    pair = Pair(prompt=[{"role": "prompter", "content": "hi there"}], chosen="hello", rejected="fine thanks")
    record = conversational_record(pair)
    assert record == {"prompt": [{"role": "user", "content": "hi there"}], "chosen": [{"role": "assistant", "content": "hello"}],
                      "rejected": [{"role": "assistant", "content": "fine thanks"}]}
    enc = encode_pairs([pair], tok, 64)
    # <|prompter|>=2 hi=6 there=7 eot=0 <|assistant|>=3 | hello=8 eot | fine=12 thanks=13 eot: the replies end with their end-of-turn
    assert (enc.prompt_ids, enc.chosen_ids, enc.rejected_ids) == ([[2, 6, 7, 0, 3]], [[8, 0]], [[12, 13, 0]])
    assert (enc.context_cut, enc.reply_cut) == (0, 0)


def test_too_long_pairs_lose_the_oldest_context_then_the_reply_end():
    tok = word_tokenizer()
    prompt = CONVERSATION[:4]  # 17 tokens with the assistant tag (see tests/test_chat_format.py)
    long = encode_pairs([Pair(prompt, "fine thanks", "hello")], tok, 10)
    assert long.prompt_ids == [chat_format.encode_prompt(prompt, tok)[-7:]]  # the latest turns: ... you eot <|assistant|>
    assert (long.chosen_ids, long.rejected_ids, long.context_cut, long.reply_cut) == ([[12, 13, 0]], [[8, 0]], 1, 0)
    reply = " ".join(["fine"] * 12)
    cut = encode_pairs([Pair(prompt, reply, "hello")], tok, 10)
    assert len(cut.prompt_ids[0]) == 5 and cut.chosen_ids == [[12] * 5] and (cut.context_cut, cut.reply_cut) == (1, 1)


def test_a_chat_template_reply_stops_at_its_end_of_turn_token(chatml):  # noqa: F811
    pair = Pair([{"role": "user", "content": "hi there"}], "hello", "fine thanks")
    enc = encode_pairs([pair], chatml, 64)
    assert chatml.decode(enc.prompt_ids[0]) == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert [chatml.decode(x[0]) for x in (enc.chosen_ids, enc.rejected_ids)] == ["hello<|im_end|>", "fine thanks<|im_end|>"]


def test_implicit_reward_figures():
    r = ImplicitRewards([0.2, 0.0, -0.1], [0.1, 0.0, 0.3])
    assert r.accuracy == pytest.approx(0.5)  # right, tie (half), wrong
    assert r.margin == pytest.approx((0.1 + 0.0 - 0.4) / 3)
    assert ImplicitRewards([0.0] * 4, [0.0] * 4).as_dict() == {"pairs": 4, "accuracy": 0.5, "margin": 0.0, "loss": pytest.approx(math.log(2))}
    assert r.window(1, 3).chosen == [0.0, -0.1]


def test_the_reference_is_the_sft_policy_and_the_held_out_figures_are_trls(micro_run, tmp_path):
    """trl's reference copy of a PEFT adapter leaves out the SFT adapter's chat-token rows and its QLoRA cast rounds
    the policy to bf16: without restore_sft_weights the policy would differ from its reference before any step.
    After a step, the kit's held-out implicit rewards are the ones trl's own evaluation computes."""
    import torch
    from peft.utils import load_peft_weights

    data = dpo_stage.load_data(DPOParams(max_train_pairs=8, max_eval_pairs=4), micro_run)
    model, tokenizer, sft_dir = load_policy(micro_run)
    train_set = encode_pairs(data.train_pairs, tokenizer, 48)
    heldout = encode_pairs(data.heldout_sets["eval split"], tokenizer, 48)
    settings = DPOParams(max_length=48, batch_size=8, learning_rate=0.01, max_steps=1, warmup=0.0)
    trainer = make_trainer(model, tokenizer, train_set, settings, sft_dir, str(tmp_path))
    saved = load_peft_weights(str(sft_dir))
    state = {k: v for k, v in trainer.model.state_dict().items()}
    for name, value in saved.items():  # both adapters hold the saved SFT weights exactly, the policy in float32
        for adapter in (POLICY, REFERENCE):
            here = [v for k, v in state.items() if k.endswith(name.replace("weight", f"{adapter}.weight")) or k.endswith(f"{name}.{adapter}")]
            assert here and all(torch.equal(h.float(), value.float()) for h in here), (name, adapter)
    assert not [n for n, p in trainer.model.named_parameters() if p.requires_grad and f".{REFERENCE}" in n]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    pad = tokenizer.pad_token_id
    reference = reply_logprob_sums(trainer.model, heldout, pad, reference=True)
    before = implicit_rewards(trainer.model, heldout, settings.beta, pad)
    assert before.chosen == [0.0] * 4 and before.rejected == [0.0] * 4
    trainer.train()
    after = implicit_rewards(trainer.model, heldout, settings.beta, pad)
    assert after.margin != 0.0
    # π_ref did not move in training, so stage 04_dpo computes its log-probs once and reuses them after training
    assert reply_logprob_sums(trainer.model, heldout, pad, reference=True).tolist() == reference.tolist()
    assert implicit_rewards(trainer.model, heldout, settings.beta, pad, reference=reference) == after
    trl = trainer.evaluate(heldout.dataset())  # one batch of 4 pairs: trl's means are over the same pairs
    assert trl["eval_rewards/margins"] == pytest.approx(after.margin, abs=1e-4)
    assert trl["eval_loss"] == pytest.approx(after.loss, abs=1e-4)
    strictly = sum(c > r for c, r in zip(after.chosen, after.rejected)) / after.n  # trl counts a tie as wrong
    assert trl["eval_rewards/accuracies"] == pytest.approx(strictly)


def test_a_record_reads_as_turns_with_their_line_breaks():
    from utils.dpo.data import record_markdown

    record = {"prompt": [{"role": "user", "content": "Two lines:\nhere"}], "chosen": [{"role": "assistant", "content": "Yes\n\nno"}],
              "rejected": [{"role": "assistant", "content": ""}]}
    assert record_markdown(record) == ("**prompt**\n\n*user*:\n\n> Two lines:\n> here\n\n**chosen**\n\n*assistant*:\n\n> Yes\n> \n> no"
                                       "\n\n**rejected**\n\n*assistant*:\n\n> ")
