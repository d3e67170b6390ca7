"""The reward model: loss and accuracy by hand, encoding, a scorer that batching cannot change, training, CLI."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from fixtures import MINILM, TOPICS_HELDOUT, TOPICS_TRAIN, synthetic_pairs
from utils.oasst import Pair, load_trees, preference_pairs, read_hh_pairs, rm_groups
from utils.pipeline.profile import REPO_ROOT
from utils.reward.__main__ import main as cli_main
from utils.reward.evaluation import (
    correlation,
    evaluate_pairs,
    length_baseline_accuracy,
    pairwise_accuracy,
    pairwise_loss,
    read_pairs_file,
)
from utils.reward.model import RewardScorer, encode_conversation, load_backbone
from utils.reward.params import RewardParams
from utils.reward.training import (
    backbone_linear_layers,
    head_modules,
    lora_config,
    make_trainer,
    pair_weights,
    pairs_dataset,
    train_reward_model,
    weighted_pair_loss,
)

DATA = REPO_ROOT / "data"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------------------------------------------
# Metrics, by hand


def test_pairwise_loss_matches_hand_computed_values():
    # Differences 1, 0, -0.5, 3: -log σ(d) = log(1 + e^-d) = 0.313262, 0.693147, 0.974077, 0.048587.
    loss = pairwise_loss([2.0, 1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 0.0])
    assert loss == pytest.approx((0.313262 + 0.693147 + 0.974077 + 0.048587) / 4, abs=1e-6)


def test_pairwise_loss_is_log2_for_equal_scores_and_falls_as_chosen_pulls_ahead():
    assert pairwise_loss([0.3], [0.3]) == pytest.approx(math.log(2))
    assert pairwise_loss([5.0], [0.0]) < pairwise_loss([1.0], [0.0]) < pairwise_loss([0.0], [1.0])


def test_pairwise_accuracy_counts_ties_half():
    # wins, tie, loss, win -> (1 + 0.5 + 0 + 1) / 4
    assert pairwise_accuracy([2.0, 1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 0.0]) == 0.625
    assert math.isnan(pairwise_accuracy([], []))
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0], [])


def test_length_baseline_says_the_longer_reply_wins():
    pairs = [Pair([user("q")], "long reply", "short"), Pair([user("q")], "no", "a longer one"), Pair([user("q")], "abc", "xyz")]
    assert length_baseline_accuracy(pairs) == pytest.approx((1 + 0 + 0.5) / 3)


def test_correlation_matches_hand_computed_pearson():
    # x = 1, 2, 3 (mean 2), y = 2, 4, 7 (mean 13/3): sum dx*dy = 5, |dx| = sqrt 2, |dy| = sqrt(38/3)
    assert correlation([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert math.isnan(correlation([1, 1, 1], [1, 2, 3]))


def test_length_baselines_match_the_published_figures():
    """0.70 on the 100-tree file's pairs, 0.66 on the flat file's, 0.44 on HH-RLHF harmless (issue 4)."""
    heldout, _ = load_trees([DATA / "oasst_en_100_trees.jsonl"])
    flat, _ = load_trees([DATA / "oasst1_en_validation_messages.jsonl"])
    hh = read_hh_pairs(DATA / "hh_rlhf_harmless_base_test_part1.jsonl.gz")
    assert round(length_baseline_accuracy(preference_pairs(rm_groups(heldout))), 2) == 0.70
    assert round(length_baseline_accuracy(preference_pairs(rm_groups(flat))), 2) == 0.66
    assert round(length_baseline_accuracy(hh), 2) == 0.44


# ---------------------------------------------------------------------------------------------------
# Backbone and encoding


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model, tokenizer, new_ids = load_backbone(MINILM)
    return model, tokenizer, new_ids


def test_backbone_gets_chat_tokens_a_one_output_head_and_lora_targets_outside_it(backbone):
    model, tokenizer, new_ids = backbone
    assert tokenizer.convert_ids_to_tokens(new_ids) == ["<|prompter|>", "<|assistant|>", "<|system|>"]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.num_labels == 1
    assert head_modules(model) == ["classifier"]
    targets = backbone_linear_layers(model)
    assert "bert.encoder.layer.5.attention.self.query" in targets
    assert not any("classifier" in t for t in targets)


def test_lora_sits_on_the_chosen_layers_and_the_head_and_new_tokens_train_in_full():
    from peft import get_peft_model

    model, tokenizer, new_ids = load_backbone(MINILM)
    config = RewardParams(base_model=MINILM, lora_layers=[5], train_new_tokens=True)
    peft_model = get_peft_model(model, lora_config(model, config, new_ids))
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    lora_layers = {name.split(".layer.")[1].split(".")[0] for name in trainable if "lora_" in name}
    assert lora_layers == {"5"}
    assert any("classifier" in name for name in trainable)
    assert any("trainable_tokens" in name for name in trainable)
    frozen = RewardParams(base_model=MINILM, lora_layers=None, train_new_tokens=False)
    model, tokenizer, new_ids = load_backbone(MINILM)
    names = [n for n, p in get_peft_model(model, lora_config(model, frozen, new_ids)).named_parameters() if p.requires_grad]
    assert not any("trainable_tokens" in n for n in names) and sum("lora_A" in n for n in names) == 37  # 6 layers x 6 + pooler
    with pytest.raises(ValueError, match=r"lora_layers \[6\]: the backbone's layers are 0..5"):
        lora_config(model, RewardParams(base_model=MINILM, lora_layers=[6]), new_ids)


def test_short_conversation_is_encoded_whole(backbone):
    _, tok, _ = backbone
    ids = encode_conversation([user("hello there"), assistant("hi !")], tok, max_length=64)
    assert tok.convert_ids_to_tokens(ids) == [
        "[CLS]", "<|prompter|>", "hello", "there", "[SEP]", "<|assistant|>", "hi", "!", "[SEP]"
    ]


def test_long_context_is_cut_from_the_left_and_the_reply_kept(backbone):
    _, tok, _ = backbone
    conv = [user("one two three"), assistant("four"), user("five six"), assistant("seven eight")]
    ids = encode_conversation(conv, tok, max_length=9)
    # whole: [CLS] P one two three S A four S P five six S A seven eight S (17 tokens), the reply the last 4;
    # 9 tokens: CLS, then the last 4 context tokens, then the reply
    assert tok.convert_ids_to_tokens(ids) == [
        "[CLS]", "<|prompter|>", "five", "six", "[SEP]", "<|assistant|>", "seven", "eight", "[SEP]"
    ]


def test_a_reply_longer_than_the_window_keeps_its_beginning(backbone):
    _, tok, _ = backbone
    ids = encode_conversation([user("why"), assistant("a b c d e f g h")], tok, max_length=5)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "<|assistant|>", "a", "b", "c"]


# ---------------------------------------------------------------------------------------------------
# The scorer


CONVS = [
    [user("What is the capital of France?"), assistant("Paris.")],
    [user("Tell me a story."), assistant("Once upon a time there was a small robot who wanted to see the sea, " * 3)],
    [user("hi"), assistant("hello"), user("how are you?"), assistant("Fine, thanks for asking!")],
    [user("2+2?"), assistant("4")],
]


@pytest.fixture(scope="module")
def scorer(backbone):
    model, tokenizer, _ = backbone
    torch.manual_seed(1)
    with torch.no_grad():  # a head that is not near zero, so differences would show
        model.classifier.weight.normal_(0, 1.0)
    return RewardScorer(model, tokenizer, max_length=48, device="cpu")


def test_score_does_not_depend_on_batch_position_padding_or_batch_size(scorer):
    alone = [scorer.score([c], batch_size=1)[0] for c in CONVS]
    together = scorer.score(CONVS, batch_size=4)
    reversed_ = scorer.score(CONVS[::-1], batch_size=3)[::-1]
    # The short conversation padded next to the longest one, at each position of the batch.
    for i, conv in enumerate(CONVS):
        padded = scorer.score([CONVS[1]] * i + [conv] + [CONVS[1]], batch_size=8)[i]
        assert padded == pytest.approx(alone[i], abs=1e-5)
    assert together == pytest.approx(alone, abs=1e-5)
    assert reversed_ == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 4) for s in alone)) == len(alone)  # distinct texts, distinct scores


def test_score_is_deterministic_and_gradient_free(scorer):
    grad_enabled = []
    hook = scorer.model.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    try:
        first = scorer.score(CONVS)
        again = scorer.score(CONVS)
        twice = scorer.score([CONVS[0], CONVS[0]])
    finally:
        hook.remove()
    assert again == first  # same batches, bit for bit
    assert twice[0] == twice[1]
    assert grad_enabled and not any(grad_enabled)
    assert not scorer.model.training  # dropout off


def test_score_names_the_conversation_that_does_not_end_with_a_reply(scorer):
    with pytest.raises(ValueError, match="conversation 1: .*does not end with an assistant reply"):
        scorer.score([CONVS[0], [user("no reply yet")]])


def test_load_explains_a_directory_that_is_no_reward_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a reward model directory"):
        RewardScorer.load(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Training


# ---------------------------------------------------------------------------------------------------
# The group-weighted loss (InstructGPT §3.5: the pairs of one ranking are one batch element)


def test_pair_weights_make_every_ranking_group_weigh_the_same():
    q = [user("q")]
    pairs = [Pair(q, "a", "b", "g1"), Pair(q, "a", "b", "g2"), Pair(q, "a", "c", "g2"), Pair(q, "b", "c", "g2"),
             Pair(q, "x", "y"), Pair(q, "x", "y")]  # two pairs without a group: a group each
    # 4 groups, 6 pairs: mean weight 1 means a group's pairs add up to 6 / 4 = 1.5, split evenly among them.
    assert pair_weights(pairs, "group") == pytest.approx([1.5, 0.5, 0.5, 0.5, 1.5, 1.5])
    assert pair_weights(pairs, "flat") == [1.0] * 6
    with pytest.raises(ValueError, match="pair_weighting must be one of 'group', 'flat', got 'pairs'"):
        pair_weights(pairs, "pairs")


def test_group_weighting_is_instructgpts_per_group_mean_on_real_rankings():
    trees, _ = load_trees([DATA / "oasst_en_100_trees.jsonl"])
    pairs = preference_pairs(rm_groups(trees))
    weights = pair_weights(pairs)
    losses = [0.1 * (i % 7) for i in range(len(pairs))]  # any per-pair losses
    by_group: dict[str, list[float]] = {}
    for p, loss in zip(pairs, losses):
        by_group.setdefault(p.group, []).append(loss)
    per_group_mean = sum(sum(v) / len(v) for v in by_group.values()) / len(by_group)
    # The weighted mean over pairs is the mean over groups of each group's mean pair loss (1/C(k,2) each).
    assert sum(w * loss for w, loss in zip(weights, losses)) / len(pairs) == pytest.approx(per_group_mean)
    assert sum(weights) == pytest.approx(len(pairs))
    assert max(weights) / min(weights) == pytest.approx(36 / 1)  # a 9-reply group's pairs against a 2-reply group's


def test_weighted_pair_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.0, 1.0, 1.0])
    weights = torch.tensor([0.5, 2.0, 0.5])
    # -log σ(d) for d = 1, 0, -0.5: 0.313262, 0.693147, 0.974077; centring terms 0.1 * (3², 2², 1.5²).
    expected = (0.5 * (0.313262 + 0.9) + 2.0 * (0.693147 + 0.4) + 0.5 * (0.974077 + 0.225)) / 3
    assert float(weighted_pair_loss(chosen, rejected, weights, 0.1)) == pytest.approx(expected, abs=1e-5)
    plain = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    assert float(weighted_pair_loss(chosen, rejected, torch.ones(3), None)) == pytest.approx(float(plain))


def test_trainer_loss_on_a_batch_is_the_weighted_formula(tmp_path):
    """The trainer's loss on a collated batch equals the hand formula with the pairs' group weights, and
    differs from the flat mean: the weights reach the loss (today's trainer ignored them)."""
    torch.manual_seed(0)
    model, tokenizer, new_ids = load_backbone(MINILM)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)  # rewards far from zero, so weighting changes the loss
    q = [user("Can you help me?")]
    pairs = [Pair(q, "Sure, here is how.", "No.", "big"), Pair(q, "Sure, here is how.", "Go away.", "big"),
             Pair(q, "No.", "Go away.", "big"), Pair([user("Hi")], "Hello! How can I help?", "What.", "small")]
    weights = pair_weights(pairs)
    assert weights == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    config = RewardParams(base_model=MINILM, max_length=32, lora_r=4, lora_alpha=8, lora_layers=None, train_new_tokens=True,
                          center_rewards_coefficient=0.01)
    trainer = make_trainer(model, tokenizer, pairs_dataset(pairs, tokenizer, 32, weights), config, new_ids, str(tmp_path))
    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(len(pairs))])
    assert batch["weight"].tolist() == pytest.approx(weights)
    trainer.model.eval()
    with torch.no_grad():
        rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        loss = float(trainer.compute_loss(trainer.model, dict(batch)))
    c, r = rewards[:4], rewards[4:]
    per_pair = -torch.nn.functional.logsigmoid(c - r) + 0.01 * (c + r) ** 2
    assert loss == pytest.approx(float((torch.tensor(weights) * per_pair).mean()), rel=1e-5)
    assert abs(loss - float(per_pair.mean())) > 1e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    config = RewardParams(
        base_model=MINILM, max_length=48, lora_r=4, lora_alpha=8, lora_layers=None, train_new_tokens=True, learning_rate=2e-3,
        epochs=3, batch_size=8, warmup=0.0, logging_steps=2, seed=0,
    )
    return train_reward_model(synthetic_pairs(TOPICS_TRAIN), config, out)


def test_training_raises_held_out_accuracy_above_chance(trained):
    result = evaluate_pairs(RewardScorer.load(trained.model_dir, device="cpu"), synthetic_pairs(TOPICS_HELDOUT))
    assert result.n == 24
    assert result.accuracy >= 0.9
    losses = [h["loss"] for h in trained.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    assert 0 < trained.trainable_params < trained.total_params / 10  # LoRA, head and 3 token rows only


def test_saved_model_holds_everything_the_scorer_needs(trained):
    files = {p.name for p in trained.model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "reward.json"} <= files
    assert json.loads((trained.model_dir / "reward.json").read_text())["max_length"] == 48
    scorer = RewardScorer.load(trained.model_dir, device="cpu")
    assert "<|assistant|>" in scorer.tokenizer.get_vocab()


# ---------------------------------------------------------------------------------------------------
# Command line


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """``python -m utils.reward ARGS``, in this process (test_cli_runs_as_a_module checks the real entry point)."""

    def run(*args):
        capsys.readouterr()
        code = cli_main([str(a) for a in args])
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


def test_cli_runs_as_a_module(trained, tmp_path):
    path = tmp_path / "hh.jsonl"
    with gzip.open(DATA / "hh_rlhf_harmless_base_test_part1.jsonl.gz", "rt") as src:
        path.write_text("".join(line for _, line in zip(range(3), src)))
    proc = subprocess.run(
        [sys.executable, "-m", "utils.reward", "eval", "--model", str(trained.model_dir), "--pairs", str(path), "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 3


def test_cli_reports_accuracy_on_hh_rlhf_pairs(trained, tmp_path, run_cli):
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(DATA / "hh_rlhf_harmless_base_test_part1.jsonl.gz", "rt") as src, gzip.open(path, "wt") as dst:
        dst.writelines(line for _, line in zip(range(12), src))
    proc = run_cli("eval", "--model", trained.model_dir, "--pairs", path, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"accuracy", "n", "read", "skipped", "notes"} and out["n"] == out["read"] == 12
    assert out["skipped"] == {} and out["notes"] == {}
    scorer = RewardScorer.load(trained.model_dir, device="cpu")
    pairs = read_hh_pairs(path)
    chosen = scorer.score([p.prompt + [assistant(p.chosen)] for p in pairs])
    rejected = scorer.score([p.prompt + [assistant(p.rejected)] for p in pairs])
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected))
    assert out["accuracy"] == pytest.approx(wins / 12)


def test_cli_scores_published_hh_quirks_and_says_what_it_skipped(trained, run_cli):
    """Transcripts that part before the final reply are scored (read as trl reads them); the one pair with
    no shared prompt stops a strict run in one line, and ``--on-error skip`` skips it and says so. The pair
    of identical replies is a tie: no pair, counted."""
    quirks = REPO_ROOT / "tests" / "data" / "hh_rlhf_quirks.jsonl"
    strict = run_cli("eval", "--model", trained.model_dir, "--pairs", quirks)
    assert strict.returncode == 2 and strict.stdout == ""
    assert strict.stderr == f"error: {quirks}:5: 'chosen' and 'rejected' differ before any shared 'Human:' turn: no prompt to share\n"
    proc = run_cli("eval", "--model", trained.model_dir, "--pairs", quirks, "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    assert "on 5 pairs" in proc.stdout
    assert "skipped 2 of 7 records read (1 identical_replies, 1 no_shared_prompt)" in proc.stdout
    assert "3 pairs part before their final reply" in proc.stdout
    out = json.loads(run_cli("eval", "--model", trained.model_dir, "--pairs", quirks, "--on-error", "skip", "--json").stdout)
    assert (out["n"], out["read"], out["skipped"], out["notes"]) == (5, 7, {"identical_replies": 1, "no_shared_prompt": 1}, {"hh_parted_early": 3})


def test_cli_derives_pairs_from_an_oasst_export(trained, tmp_path, run_cli):
    def msg(text, role, rank=None, replies=()):
        return {"message_id": text, "text": text, "role": role, "lang": "en", "rank": rank, "review_result": True,
                "replies": list(replies)}

    # One prompt with three ranked replies (3 pairs) and a follow-up with two (1 pair).
    follow_up = msg("and then?", "prompter", replies=[msg("then b", "assistant", 0), msg("then a", "assistant", 1)])
    replies = [msg("second", "assistant", 1), msg("first", "assistant", 0, [follow_up]), msg("third", "assistant", 2)]
    tree = {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": msg("question", "prompter", replies=replies)}
    path = tmp_path / "export.jsonl"
    path.write_text(json.dumps(tree) + "\n")
    assert [(p.chosen, p.rejected) for p in read_pairs_file(path)] == [
        ("first", "second"), ("first", "third"), ("second", "third"), ("then b", "then a")
    ]
    proc = run_cli("eval", "--model", trained.model_dir, "--pairs", path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 4
    human = run_cli("eval", "--model", trained.model_dir, "--pairs", path)
    assert "on 4 pairs" in human.stdout and "length baseline" in human.stdout


def test_cli_bad_input_is_one_line_naming_the_problem(trained, tmp_path, run_cli):
    proc = run_cli("eval", "--model", tmp_path, "--pairs", DATA / "hh_rlhf_harmless_base_test_part1.jsonl.gz")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a reward model directory" in proc.stderr
    proc = run_cli("eval", "--model", trained.model_dir, "--pairs", tmp_path / "missing.jsonl")
    assert proc.returncode == 2 and "missing.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    unranked = tmp_path / "unranked.jsonl"
    unranked.write_text(json.dumps({"message_tree_id": "t", "tree_state": "ready_for_export", "prompt": {
        "message_id": "p", "text": "hi", "role": "prompter", "lang": "en", "review_result": True, "replies": []}}) + "\n")
    proc = run_cli("eval", "--model", trained.model_dir, "--pairs", unranked)
    assert proc.returncode == 2 and "unranked.jsonl: no preference pairs" in proc.stderr
