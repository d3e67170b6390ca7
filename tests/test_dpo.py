"""Stage 04_dpo: the reward stage's training pairs and no others, tokenized by the kit's chat format, the SFT
policy as an exact reference, and held-out figures that are trl's own."""

from __future__ import annotations

import math

import pytest

from fixtures import CONVERSATION, word_tokenizer
from utils import chat_format, dpo
from utils.reward import stage as reward_stage
from utils.oasst import Pair, load_split, preference_pairs, rm_groups
from utils.oasst.trees import iter_messages

TRAIN, HELDOUT = ["data/oasst1_en_validation_messages.jsonl"], ["data/oasst_en_100_trees.jsonl"]


def key(pair: Pair) -> tuple:
    return pair.group, pair.chosen, pair.rejected


@pytest.fixture(scope="module")
def split():
    return load_split(TRAIN, HELDOUT, lang=["en"], eval_fraction=0.1, seed=0)


def test_dpo_trains_on_the_proxys_pairs_and_on_no_tree_of_the_judge_or_of_evaluation(split):
    ours = dpo.training_pairs(split, judge_fraction=0.5, seed=0)
    # Stage 03's own sets, built as its notebook and script build them: the proxy's trees and the judge's.
    proxy_trees, judge_trees = reward_stage.split_for_judge(split.train, 0.5, 0)
    assert sorted(map(key, ours)) == sorted(map(key, preference_pairs(rm_groups(proxy_trees)))) and len(ours) > 250
    judge_messages = {m["message_id"] for t in judge_trees for m in iter_messages(t)}
    evaluation_messages = {m["message_id"] for t in split.eval + split.heldout for m in iter_messages(t)}
    proxy_messages = {m["message_id"] for t in proxy_trees for m in iter_messages(t)}
    assert judge_messages and all(p.group in proxy_messages and p.group not in judge_messages | evaluation_messages for p in ours)
    held = dpo.heldout_pairs(split)
    assert {p.group for ps in held.values() for p in ps} <= evaluation_messages
    assert not {key(p) for p in ours} & {key(p) for ps in held.values() for p in ps}
    assert [len(v) for v in dpo.heldout_pairs(split, 5).values()] == [5, 5]
    # Without a judge the proxy has every training tree, and so has DPO.
    everything = preference_pairs(rm_groups(split.train))
    assert sorted(map(key, dpo.training_pairs(split, judge_fraction=0, seed=0))) == sorted(map(key, everything))
    assert len(everything) > len(ours)


def test_a_split_other_than_the_reward_stages_stops_in_one_line():
    params = {"train_paths": TRAIN, "heldout_paths": HELDOUT, "lang": ["en"], "eval_fraction": 0.1, "judge_fraction": 0.5, "seed": 0}
    dpo.check_same_split(params, dict(params), "04_dpo")
    dpo.check_same_split(params, {}, "04_dpo")  # a stage 03 without a record: nothing to compare
    with pytest.raises(ValueError, match=r"^04_dpo splits the data with eval_fraction=0.2 but 03_reward ran with eval_fraction=0.1: "
                                         r"give both stages the same eval_fraction"):
        dpo.check_same_split({**params, "eval_fraction": 0.2}, params, "04_dpo")
    with pytest.raises(ValueError, match=r"^04_dpo splits the data with judge_fraction=0 but 03_reward ran with judge_fraction=0.5"):
        dpo.check_same_split({**params, "judge_fraction": 0}, params, "04_dpo")  # DPO would train on the judge's trees


def test_trl_conversational_record_and_oa_tokens_by_hand():
    tok = word_tokenizer()
    pair = Pair(prompt=[{"role": "prompter", "content": "hi there"}], chosen="hello", rejected="fine thanks")
    record = dpo.conversational_record(pair)
    assert record == {"prompt": [{"role": "user", "content": "hi there"}], "chosen": [{"role": "assistant", "content": "hello"}],
                      "rejected": [{"role": "assistant", "content": "fine thanks"}]}
    enc = dpo.encode_pairs([pair], tok, 64)
    # <|prompter|>=2 hi=6 there=7 eot=0 <|assistant|>=3 | hello=8 eot | fine=12 thanks=13 eot: the replies end with their end-of-turn
    assert (enc.prompt_ids, enc.chosen_ids, enc.rejected_ids) == ([[2, 6, 7, 0, 3]], [[8, 0]], [[12, 13, 0]])
    assert (enc.context_cut, enc.reply_cut) == (0, 0)


def test_too_long_pairs_lose_the_oldest_context_then_the_reply_end():
    tok = word_tokenizer()
    prompt = CONVERSATION[:4]  # 17 tokens with the assistant tag (see tests/test_chat_format.py)
    long = dpo.encode_pairs([Pair(prompt, "fine thanks", "hello")], tok, 10)
    assert long.prompt_ids == [chat_format.encode_prompt(prompt, tok)[-7:]]  # the latest turns: ... you eot <|assistant|>
    assert (long.chosen_ids, long.rejected_ids, long.context_cut, long.reply_cut) == ([[12, 13, 0]], [[8, 0]], 1, 0)
    reply = " ".join(["fine"] * 12)
    cut = dpo.encode_pairs([Pair(prompt, reply, "hello")], tok, 10)
    assert len(cut.prompt_ids[0]) == 5 and cut.chosen_ids == [[12] * 5] and (cut.context_cut, cut.reply_cut) == (1, 1)


def test_a_chat_template_reply_stops_at_its_end_of_turn_token(chatml):  # noqa: F811
    pair = Pair([{"role": "user", "content": "hi there"}], "hello", "fine thanks")
    enc = dpo.encode_pairs([pair], chatml, 64)
    assert chatml.decode(enc.prompt_ids[0]) == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert [chatml.decode(x[0]) for x in (enc.chosen_ids, enc.rejected_ids)] == ["hello<|im_end|>", "fine thanks<|im_end|>"]


def test_implicit_reward_figures():
    r = dpo.ImplicitRewards([0.2, 0.0, -0.1], [0.1, 0.0, 0.3])
    assert r.accuracy == pytest.approx(0.5)  # right, tie (half), wrong
    assert r.margin == pytest.approx((0.1 + 0.0 - 0.4) / 3)
    assert dpo.ImplicitRewards([0.0] * 4, [0.0] * 4).as_dict() == {"pairs": 4, "accuracy": 0.5, "margin": 0.0, "loss": pytest.approx(math.log(2))}
    assert r.window(1, 3).chosen == [0.0, -0.1]


def test_the_reference_is_the_sft_policy_and_the_held_out_figures_are_trls(micro_run, tmp_path):
    """trl's reference copy of a PEFT adapter leaves out the SFT adapter's chat-token rows and its QLoRA cast rounds
    the policy to bf16: without restore_sft_weights the policy would differ from its reference before any step.
    After a step, the kit's held-out implicit rewards are the ones trl's own evaluation computes."""
    import torch
    from peft.utils import load_peft_weights

    split = load_split(TRAIN, HELDOUT, lang=["en"], eval_fraction=0.1, seed=0)
    model, tokenizer, sft_dir = dpo.load_policy(micro_run)
    train_set = dpo.encode_pairs(dpo.training_pairs(split, 0.5)[:8], tokenizer, 48)
    heldout = dpo.encode_pairs(dpo.heldout_pairs(split, 4)["eval split"], tokenizer, 48)
    settings = dpo.DPOSettings(max_length=48, batch_size=8, learning_rate=0.01, max_steps=1, warmup=0.0)
    trainer = dpo.make_trainer(model, tokenizer, train_set, settings, sft_dir, str(tmp_path))
    saved = load_peft_weights(str(sft_dir))
    state = {k: v for k, v in trainer.model.state_dict().items()}
    for name, value in saved.items():  # both adapters hold the saved SFT weights exactly, the policy in float32
        for adapter in (dpo.POLICY, dpo.REFERENCE):
            here = [v for k, v in state.items() if k.endswith(name.replace("weight", f"{adapter}.weight")) or k.endswith(f"{name}.{adapter}")]
            assert here and all(torch.equal(h.float(), value.float()) for h in here), (name, adapter)
    assert not [n for n, p in trainer.model.named_parameters() if p.requires_grad and f".{dpo.REFERENCE}" in n]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    pad = tokenizer.pad_token_id
    reference = dpo.reply_logprob_sums(trainer.model, heldout, pad, reference=True)
    before = dpo.implicit_rewards(trainer.model, heldout, settings.beta, pad)
    assert before.chosen == [0.0] * 4 and before.rejected == [0.0] * 4
    trainer.train()
    after = dpo.implicit_rewards(trainer.model, heldout, settings.beta, pad)
    assert after.margin != 0.0
    # π_ref did not move in training, so stage 04_dpo computes its log-probs once and reuses them after training
    assert dpo.reply_logprob_sums(trainer.model, heldout, pad, reference=True).tolist() == reference.tolist()
    assert dpo.implicit_rewards(trainer.model, heldout, settings.beta, pad, reference=reference) == after
    trl = trainer.evaluate(heldout.dataset())  # one batch of 4 pairs: trl's means are over the same pairs
    assert trl["eval_rewards/margins"] == pytest.approx(after.margin, abs=1e-4)
    assert trl["eval_loss"] == pytest.approx(after.loss, abs=1e-4)
    strictly = sum(c > r for c, r in zip(after.chosen, after.rejected)) / after.n  # trl counts a tie as wrong
    assert trl["eval_rewards/accuracies"] == pytest.approx(strictly)
