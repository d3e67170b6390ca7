"""Judges (utils/reward/judges.py): the judge's own trees, released (question, answer) reward models, agreement, the
reward-against-KL fit (utils/evaluate/) and the results table (utils/evaluate/results.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from utils.reward import judges
from utils.reward import stage as reward_stage
from utils.reward.evaluation import PairResult

# DeBERTa-v3's options (as benchmarks/bench_gpu_profile.py keeps them for OpenAssistant's reward-model-deberta-v3
# -large-v2 and DeBERTa-v3-base), at a test's size: the same classes and code paths, random weights.
DEBERTA_V3_OPTIONS = dict(max_position_embeddings=512, type_vocab_size=0, relative_attention=True, max_relative_positions=-1,
                          position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                          position_biased_input=False, layer_norm_eps=1e-7, pooler_dropout=0.0)


@pytest.fixture(scope="module")
def released_rm(tmp_path_factory) -> Path:
    """A folder like a hub reward model's: a one-output DeBERTa-v2 sequence classifier and a tokenizer."""
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    from utils.reward.model import resolve_backbone

    path = tmp_path_factory.mktemp("released_rm")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, pooler_hidden_size=64, num_labels=1, pad_token_id=tokenizer.pad_token_id,
                             **DEBERTA_V3_OPTIONS)
    DebertaV2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def conv(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_a_released_reward_model_scores_question_answer_pairs(released_rm):
    scorer = judges.TextPairScorer.load(str(released_rm), device="cpu")
    convs = [conv("What is the capital of France?", "Paris."), conv("Name a colour.", "Blue, like the sky on a clear day."),
             conv("What is the capital of France?", "I do not know.")]
    alone = [scorer.score([c])[0] for c in convs]
    together = scorer.score(convs, batch_size=3)
    assert together == pytest.approx(alone, abs=1e-5)  # padding within a batch changes nothing
    assert len(set(round(s, 6) for s in together)) == 3
    # What the model reads is tokenizer(question, answer): the pair encoding, with its separator.
    enc = scorer.tokenizer(judges.TextPairScorer.question(convs[0][:1]), "Paris.")
    assert scorer.tokenizer.decode(enc["input_ids"]) == "[CLS] what is the capital of france? [SEP] paris. [SEP]"


def test_a_long_question_loses_its_start_and_the_answer_is_kept(released_rm):
    scorer = judges.TextPairScorer.load(str(released_rm), device="cpu", max_length=32)
    long_question = "filler " * 100 + "What is the capital of France?"
    [score] = scorer.score([conv(long_question, "Paris.")])
    assert score == pytest.approx(scorer.score([conv("filler " * 20 + "What is the capital of France?", "Paris.")])[0], abs=1e-5)


def test_multi_turn_questions_are_written_out_with_roles():
    context = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert judges.TextPairScorer.question(context) == "User: Hi\n\nAssistant: Hello!\n\nUser: Bye"
    assert judges.TextPairScorer.question(context[:1]) == "Hi"


def test_a_classifier_with_several_outputs_is_not_a_judge(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from utils.reward.model import resolve_backbone

    BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32, num_labels=3)).save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has 3 outputs; a reward model has 1"):
        judges.TextPairScorer.load(str(tmp_path))
    with pytest.raises(OSError, match=r"cannot load the judge '.*nowhere'"):
        judges.TextPairScorer.load(str(tmp_path / "nowhere"))


def test_load_judges_marks_the_reward_model_ppo_trained_against(released_rm, tmp_path, monkeypatch):
    import json

    from utils.reward import model as reward

    run = tmp_path / "run"
    (run / "03_reward").mkdir(parents=True)
    (run / "03_reward" / "metrics.json").write_text(json.dumps({"model_dir": "reward_model", "judge_model_dir": "judge/reward_model"}))
    monkeypatch.setattr(reward.RewardScorer, "load", classmethod(lambda cls, path, device=None: SimpleNamespace(path=path)))
    before_ppo = judges.load_judges(["proxy", "judge", str(released_rm)], run)
    assert {n: j.trained_against for n, j in before_ppo.items()} == {"proxy": True, "judge": False, str(released_rm): False}
    # Once stage 04 ran, its record decides: here it was trained against the judge's model.
    (run / "04_ppo").mkdir()
    (run / "04_ppo" / "metrics.json").write_text(json.dumps({"reward_model_dir": str((run / "03_reward" / "judge" / "reward_model").resolve())}))
    after = judges.load_judges(["proxy", "judge"], run)
    assert {n: j.trained_against for n, j in after.items()} == {"proxy": False, "judge": True}
    (run / "03_reward" / "metrics.json").write_text(json.dumps({"model_dir": "reward_model"}))
    with pytest.raises(ValueError, match="stage 03_reward trained no such model"):
        judges.load_judges(["judge"], run)
    with pytest.raises(ValueError, match="name at least one"):
        judges.load_judges([], run)


def test_the_judges_trees_are_disjoint_from_the_proxys_and_fixed_by_the_seed():
    trees = [SimpleNamespace(id=f"tree-{i}") for i in range(40)]
    proxy, judge = reward_stage.split_for_judge(trees, 0.5, seed=0)
    assert len(proxy) == len(judge) == 20
    assert not {t.id for t in proxy} & {t.id for t in judge} and len(proxy) + len(judge) == len(trees)
    again_proxy, _ = reward_stage.split_for_judge(list(reversed(trees)), 0.5, seed=0)
    assert {t.id for t in again_proxy} == {t.id for t in proxy}  # input order does not matter
    assert {t.id for t in reward_stage.split_for_judge(trees, 0.5, seed=1)[0]} != {t.id for t in proxy}
    assert reward_stage.split_for_judge(trees, 0.0) == (trees, [])
    with pytest.raises(ValueError, match="judge_fraction"):
        reward_stage.split_for_judge(trees, 1.0)


def test_agreement_counts_pairs_both_models_order_the_same_way():
    def result(chosen, rejected):
        return PairResult(n=len(chosen), accuracy=0, length_baseline=0, loss=0, reward_length_corr=0,
                          chosen_scores=chosen, rejected_scores=rejected)

    a = result([1.0, 1.0, 0.0, 2.0], [0.0, 2.0, 1.0, 2.0])  # prefers chosen, rejected, rejected, tie
    b = result([5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 9.0, 1.0])  # prefers chosen, chosen, rejected, chosen
    assert reward_stage.agreement(a, b) == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    with pytest.raises(ValueError, match="same pairs"):
        reward_stage.agreement(a, result([1.0], [0.0]))


def test_results_rows_rank_players_by_the_independent_judge_and_star_the_proxy():
    from utils.evaluate.results import results_rows
    from utils.evaluate.tournament import Rating

    js = {"proxy": judges.Judge("proxy", None, "p", True), "judge": judges.Judge("judge", None, "j", False)}
    elo = {"proxy": {"a": Rating(1100, 1090, 1110, 10), "b": Rating(900, 890, 910, 10)},
           "judge": {"a": Rating(950, 940, 960, 10), "b": Rating(1050, 1040, 1060, 10)}}
    tournaments = {j: SimpleNamespace(elo=e) for j, e in elo.items()}
    summary = {"reward_mean": 0.1, "reward_ci": [0.0, 0.2], "length_mean": 12.0}
    rows = results_rows(js, tournaments, {j: {"a": summary, "b": summary} for j in js}, {"a": {"KL to SFT": "1.00"}})
    assert [r["player"] for r in rows] == ["b", "a"]  # the judge's ranking, not the proxy's
    assert rows[0]["Elo (proxy*)"] == "900 [890, 910]" and rows[0]["Elo (judge)"] == "1050 [1040, 1060]"
    assert rows[1]["KL to SFT"] == "1.00" and "KL to SFT" not in rows[0]
