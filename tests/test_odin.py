"""ODIN's length-disentangled reward model (utils.reward, ``length_head``): its loss by hand, and a real training run
in which the quality head learns the preference while the length head takes the length."""

from __future__ import annotations

import json

import pytest
import torch

from utils.oasst import Pair
from utils.reward.evaluation import correlation, evaluate_pairs
from utils.reward.model import RewardScorer
from utils.reward.params import RewardParams
from utils.reward.training import odin_loss, pearson, train_reward_model

pytestmark = pytest.mark.slow  # real training or a model conversion: make test-fast leaves it out

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def user(text):
    return {"role": "user", "content": text}


def test_pearson_matches_the_textbook_value_and_is_zero_for_a_constant():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(pearson(x, torch.tensor([2.0, 4.0, 5.0, 9.0]))) == pytest.approx(11 / (5 * 26) ** 0.5, abs=1e-6)  # Σdxdy / (‖dx‖‖dy‖)
    assert float(pearson(x, torch.full((4,), 3.0))) == 0.0


def test_odin_loss_by_hand():
    heads = torch.tensor([[1.0, 0.5], [0.2, 1.5], [0.0, -0.5], [0.4, 0.3]])  # 2 pairs: rows 0-1 chosen, 2-3 rejected
    chars = torch.tensor([10.0, 40.0, 20.0, 30.0])
    weights = torch.tensor([1.0, 1.0])
    w = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # cosine 0.5
    loss, parts = odin_loss(heads, chars, weights, w, None, length_loss_weight=2.0)
    total = heads.sum(1)
    ranking = -torch.nn.functional.logsigmoid(total[:2] - total[2:]).mean()
    r_len = correlation(heads[:, 1].tolist(), chars.tolist())
    r_q = correlation(heads[:, 0].tolist(), chars.tolist())
    assert parts["ranking_loss"] == pytest.approx(float(ranking), abs=1e-6)
    assert parts["head_cosine"] == pytest.approx(0.5, abs=1e-6)
    assert float(loss) == pytest.approx(float(ranking) + 2.0 * (-r_len + abs(r_q) + 0.5), abs=1e-5)


def test_odin_loss_gradient_moves_length_into_the_length_head():
    """One gradient step on the heads: the quality head's |r| with length falls, the length head's r rises."""
    torch.manual_seed(0)
    chars = torch.tensor([50.0, 80.0, 120.0, 30.0, 60.0, 90.0, 20.0, 40.0])
    heads = torch.stack([chars / 100 + 0.1 * torch.randn(8), torch.randn(8)], dim=1).requires_grad_()
    w = torch.randn(2, 16)
    before = (float(pearson(heads[:, 0].detach(), chars)), float(pearson(heads[:, 1].detach(), chars)))
    loss, _ = odin_loss(heads, chars, torch.ones(4), w, None, length_loss_weight=1.0)
    loss.backward()
    stepped = heads.detach() - 0.5 * heads.grad
    assert abs(float(pearson(stepped[:, 0], chars))) < abs(before[0])
    assert float(pearson(stepped[:, 1], chars)) > before[1]


TOPICS = ["the weather", "cooking rice", "learning French", "fixing a bike", "a cat", "saving money", "sleeping well",
          "running", "painting a room", "planting tomatoes", "chess", "the moon", "writing a poem", "baking bread"]
GOOD = "Sure, happy to help with {t}!"
BAD = "No. Figure {t} out yourself."
FILLER = " It is what it is, and that is all there is to say about it."


def pairs_for(topics, good_pads, bad_pads):
    """Helpful against dismissive replies, each padded with filler: length varies apart from the preference."""
    return [Pair([user(f"Can you tell me about {t}?")], GOOD.format(t=t) + FILLER * g, BAD.format(t=t) + FILLER * b)
            for t in topics for g, b in zip(good_pads, bad_pads)]


@pytest.fixture(scope="module")
def odin_model(tmp_path_factory):
    # In training the helpful reply is usually the longer one (as OASST's labellers' favourites are).
    train = pairs_for(TOPICS[:10], [2, 3, 1, 3], [0, 1, 2, 0])
    config = RewardParams(base_model=MINILM, max_length=96, lora_r=4, lora_alpha=8, lora_layers=None, train_new_tokens=True,
                          learning_rate=2e-3, epochs=4, batch_size=8, warmup=0.0, logging_steps=2, seed=0, length_head=True)
    return train_reward_model(train, config, tmp_path_factory.mktemp("odin"))


def test_odin_model_saves_two_heads_and_scores_with_the_quality_head(odin_model):
    meta = json.loads((odin_model.model_dir / "reward.json").read_text())
    assert meta["heads"] == ["quality", "length"] and meta["training"]["length_head"] is True
    scorer = RewardScorer.load(odin_model.model_dir, device="cpu")
    convs = [[user("Hi"), {"role": "assistant", "content": "Hello!" + FILLER * k}] for k in range(3)]
    quality, length, total = (scorer.score(convs, head=h) for h in ("quality", "length", "total"))
    assert scorer.score(convs) == quality
    assert total == pytest.approx([q + l for q, l in zip(quality, length)], abs=1e-5)
    with pytest.raises(ValueError, match="head 'reward': this reward model has quality, length"):
        scorer.score(convs, head="reward")
    logged = [h for h in odin_model.log_history if "quality_head_corr" in h]
    assert logged and all("ranking_loss" in h and "head_cosine" in h for h in logged)


def test_odin_quality_head_prefers_the_helpful_reply_when_it_is_the_shorter_one(odin_model):
    scorer = RewardScorer.load(odin_model.model_dir, device="cpu")
    held_out = pairs_for(TOPICS[10:], [0, 0, 1], [2, 3, 3])  # the helpful reply is shorter in every pair
    result = evaluate_pairs(scorer, held_out)
    assert result.length_baseline == 0.0
    assert result.accuracy >= 0.9
    # The same reply padded with more and more filler: length alone changes, and the length head should follow it.
    padded = [[user(f"Can you tell me about {t}?"), {"role": "assistant", "content": reply.format(t=t) + FILLER * k}]
              for t in TOPICS[10:] for reply in (GOOD, BAD) for k in range(4)]
    pads = [k for _ in TOPICS[10:] for _ in (GOOD, BAD) for k in range(4)]
    length_corr = correlation(scorer.score(padded, head="length"), pads)
    quality_corr = correlation(scorer.score(padded, head="quality"), pads)
    assert length_corr > 0.3  # the length head took the length (0.48 measured; a fresh head: about 0)
    assert abs(quality_corr) < length_corr
