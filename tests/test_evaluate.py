"""Stage 05's measurements on a tiny random GPT-NeoX: log-probs, Monte-Carlo KL, perplexity, refusals, answers."""

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

from fixtures import tiny_gpt_neox

from utils.model import chat_format
from utils.evaluate.answers import fitting_prompts, generate_answers, score_answers
from utils.evaluate.harmless import is_refusal, refusal_rate
from utils.evaluate.kl import Sample, reply_logprobs, sample_replies
from utils.evaluate.perplexity import perplexity
from utils.evaluate.tables import markdown_table, sample_table
from utils.model.generation import sampling_preset
from utils.evaluate.sampling_reports import prompt_key

TEXTS = ["How do I bake bread?", "Mix flour, water, salt and yeast, then bake it.", "What is the capital of France?",
         "Paris is the capital of France.", "Tell me a joke about cats.", "Why did the cat sit on the computer?"] * 5


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = [chat_format.END_OF_TURN_TOKEN, chat_format.PAD_TOKEN, *chat_format.OA_SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=chat_format.END_OF_TURN_TOKEN, pad_token=chat_format.PAD_TOKEN,
                                   extra_special_tokens=list(chat_format.OA_SPECIAL_TOKENS))
    chat_format.add_special_tokens(fast)
    return fast


def tiny_lm(tokenizer, seed: int, sharpen: float = 1.0):
    model = tiny_gpt_neox(len(tokenizer), seed, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(sharpen)  # sharper next-token distributions: models that differ measurably
    return model


def conv(*turns):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def test_reply_logprobs_match_a_token_by_token_loop(tokenizer):
    model = tiny_lm(tokenizer, 0, sharpen=20)
    samples = [Sample(chat_format.encode_prompt(conv("How do I bake bread?"), tokenizer), [7, 9, 11, tokenizer.eos_token_id]),
               Sample(chat_format.encode_prompt(conv("Hi", "Hello", "Tell me a joke about cats."), tokenizer), [12]),
               Sample(chat_format.encode_prompt(conv("Why?"), tokenizer), [5, 6])]
    batched = reply_logprobs(model, samples, tokenizer.pad_token_id, batch_size=3)
    for s, got in zip(samples, batched):
        want = 0.0
        for t, token in enumerate(s.reply_ids):  # one forward per reply token on the unpadded prefix
            prefix = torch.tensor([s.prompt_ids + s.reply_ids[:t]])
            want += torch.log_softmax(model(prefix).logits[0, -1].float(), -1)[token].item()
        assert got == pytest.approx(want, abs=1e-4)


def test_monte_carlo_kl_matches_the_exact_kl_of_one_token_replies(tokenizer):
    policy, reference = tiny_lm(tokenizer, 0, sharpen=30), tiny_lm(tokenizer, 1, sharpen=30)
    prompt = conv("What is the capital of France?")
    ids = torch.tensor([chat_format.encode_prompt(prompt, tokenizer)])
    with torch.no_grad():
        logp = torch.log_softmax(policy(ids).logits[0, -1], -1)
        logq = torch.log_softmax(reference(ids).logits[0, -1], -1)
    exact = float((logp.exp() * (logp - logq)).sum())
    samples = sample_replies(policy, tokenizer, [prompt] * 2000, max_new_tokens=1, batch_size=500)
    estimate = reply_logprobs(policy, samples, tokenizer.pad_token_id, 500) - reply_logprobs(reference, samples, tokenizer.pad_token_id, 500)
    assert exact > 0.05  # the two models really differ
    assert estimate.mean() == pytest.approx(exact, abs=4 * estimate.std() / math.sqrt(len(estimate)))
    same = reply_logprobs(policy, samples[:50], tokenizer.pad_token_id) - reply_logprobs(policy, samples[:50], tokenizer.pad_token_id)
    assert np.all(same == 0)  # KL of a model from itself


def test_sampled_replies_stop_at_the_first_stop_token(tokenizer):
    model = tiny_lm(tokenizer, 2)
    stops = set(chat_format.stop_token_ids(tokenizer))
    for s in sample_replies(model, tokenizer, [conv("Hi")] * 16, max_new_tokens=12, batch_size=8):
        inner = s.reply_ids[:-1]
        assert not stops & set(inner)
        assert s.reply_ids[-1] in stops or len(s.reply_ids) == 12


def test_perplexity_over_assistant_tokens_by_hand(tokenizer):
    model = tiny_lm(tokenizer, 3, sharpen=10)
    convs = [conv("How do I bake bread?", "Mix flour and bake."), conv("Hi", "Paris.", "Why?", "Cats.")]
    nll, count = 0.0, 0
    for c in convs:
        enc = chat_format.encode(c, tokenizer)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([enc.input_ids])).logits[0].float(), -1)
        for t in range(1, len(enc.input_ids)):
            if enc.assistant_mask[t]:
                nll -= logp[t - 1, enc.input_ids[t]].item()
                count += 1
    ppl, tokens = perplexity(model, tokenizer, convs, batch_size=2)
    assert tokens == count
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-4)
    # cut to a length: the same sum over the assistant tokens inside the first `cut` tokens alone
    cut = len(chat_format.encode(convs[1], tokenizer).input_ids) - 2
    cut_ppl, cut_tokens = perplexity(model, tokenizer, convs, batch_size=2, max_length=cut)
    kept = [chat_format.encode(c, tokenizer) for c in convs]
    assert cut_tokens == sum(sum(e.assistant_mask[1:cut]) for e in kept) < count
    assert cut_ppl != pytest.approx(ppl, rel=1e-6)


def test_refusal_detector():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("As an AI language model, I do not have opinions.")
    assert is_refusal("I\u2019m not able to do this.")  # curly apostrophe
    assert not is_refusal("Sure! Here is a bread recipe: mix flour and water.")
    assert not is_refusal("Bread is easy. " * 20 + "I can't promise it rises at altitude.")  # past the opening
    assert refusal_rate(["I cannot do that.", "Sure.", "Of course.", "I won't."]) == 0.5
    assert math.isnan(refusal_rate([]))


def test_generate_answers_keys_samples_and_greedy_once(tokenizer):
    model = tiny_lm(tokenizer, 4)
    prompts = ["How do I bake  bread?", "Why?"]
    k50 = sampling_preset("k50", max_new_tokens=6, min_new_tokens=1)
    answers = generate_answers(model, tokenizer, prompts, k50, samples=3, batch_size=2)
    assert list(answers) == [prompt_key(p) for p in prompts]
    assert all(len(v) == 3 for v in answers.values())
    assert generate_answers(model, tokenizer, prompts, k50, samples=3, batch_size=2) == answers  # seeded
    greedy = generate_answers(model, tokenizer, prompts, sampling_preset("greedy", max_new_tokens=6), samples=3)
    assert all(len(v) == 1 for v in greedy.values())


def test_score_answers_regroups_by_prompt():
    class LengthScorer:  # reward = characters in the reply, so the right grouping is easy to check
        def score(self, conversations, batch_size=16):
            assert all(c[-1]["role"] == "assistant" for c in conversations)
            return [float(len(c[-1]["content"])) for c in conversations]

    prompts = {"a": "first", "b": conv("second", "ok", "third")}
    scores = score_answers(LengthScorer(), prompts, {"a": ["x", "xyz"], "b": ["xx"]}, batch_size=2)
    assert scores == {"a": [1.0, 3.0], "b": [2.0]}


class LengthScorer:  # reward = characters in the reply: which reply a judge prefers is easy to check
    def score(self, conversations, batch_size=16):
        return [float(len(c[-1]["content"])) for c in conversations]


def test_best_of_one_is_plain_sampling_with_the_same_seed(tokenizer):
    from utils.evaluate.best_of_n import best_of_n

    model = tiny_lm(tokenizer, 4)
    prompts = ["How do I bake bread?", "Why?", "Tell me a joke about cats."]
    k50 = sampling_preset("k50", max_new_tokens=8, min_new_tokens=1)
    for seed, answers_per_prompt in ((0, 1), (7, 2)):
        plain = generate_answers(model, tokenizer, prompts, k50, samples=answers_per_prompt, batch_size=2, seed=seed)
        picked = best_of_n(model, tokenizer, prompts, k50, [1], LengthScorer(), answers_per_prompt=answers_per_prompt, batch_size=2, seed=seed)
        assert picked[1] == plain


def test_best_of_n_answers_with_the_proxys_favourite_among_nested_samples(tokenizer):
    from utils.evaluate.best_of_n import best_of_n

    model = tiny_lm(tokenizer, 4)
    prompts = ["How do I bake bread?", "Why?"]
    k50 = sampling_preset("k50", max_new_tokens=10, min_new_tokens=1)
    candidates = generate_answers(model, tokenizer, prompts, k50, samples=4, batch_size=2, seed=3)
    picked = best_of_n(model, tokenizer, prompts, k50, [4, 2], LengthScorer(), batch_size=2, seed=3)
    for key, replies in candidates.items():  # the longest (the scorer's favourite) of the first n samples; ties: the earlier
        assert picked[2][key] == [max(replies[:2], key=len)] and picked[4][key] == [max(replies, key=len)]
        assert len(picked[4][key][0]) >= len(picked[2][key][0])
    with pytest.raises(ValueError, match="needs a sampling preset"):
        best_of_n(model, tokenizer, prompts, sampling_preset("greedy"), [2], LengthScorer())


def test_pick_best_blocks_ties_and_the_kl_bound():
    from utils.evaluate.best_of_n import check_ns, kl_bound, pick_best

    candidates = {"p": ["a", "bbb", "cc", "dd", "e", "f"]}
    scores = {"p": [1.0, 3.0, 2.0, 2.0, 0.0, 0.0]}
    assert pick_best(candidates, scores, 2, answers_per_prompt=3) == {"p": ["bbb", "cc", "e"]}  # blocks of 2; ties: the earlier
    assert pick_best(candidates, scores, 3, answers_per_prompt=2) == {"p": ["bbb", "dd"]}
    with pytest.raises(ValueError, match="6 candidates for a prompt, 8 needed"):
        pick_best(candidates, scores, 4, answers_per_prompt=2)
    assert kl_bound(1) == 0.0 and kl_bound(4) == pytest.approx(math.log(4) - 0.75) and kl_bound(16) == pytest.approx(2.7726 - 0.9375, abs=1e-4)
    assert check_ns([16, 4, 4]) == [4, 16]
    with pytest.raises(ValueError, match="every n is an int >= 1, got 0"):
        check_ns([4, 0])


def test_fitting_prompts_pass_over_long_ones(tokenizer):
    convs = [conv("Hi"), conv("Tell me a joke about cats. " * 20), conv("Why?"), conv("Paris?")]
    kept, skipped = fitting_prompts(convs, tokenizer, max_tokens=20, n=2)
    assert kept == [convs[0], convs[2]] and skipped == 1


def test_sample_table_side_by_side():
    rows = sample_table({"p": "What?"}, {"sft": {"p": ["An | answer"]}, "ext": {}}, {"sft": {"p": [0.5]}}, ["p"])
    assert rows == [{"prompt": "What?", "sft": "[+0.50] An | answer"}]
    assert markdown_table(rows).splitlines()[2] == "| What? | [+0.50] An \\| answer |"
    assert markdown_table([{"a": "two\nlines"}]).splitlines()[2] == "| two lines |"


# ------------------------------------------------------------------------------------------ the notebook

NOTEBOOK = "notebooks/05_evaluate.ipynb"


def test_notebook_defaults_are_the_tiny_profile():
    import ast

    import papermill

    from utils.pipeline.profile import load_profile

    declared = {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(NOTEBOOK).items()}
    profile = load_profile("tiny").stage_params("05_evaluate")
    assert {k: declared[k] for k in profile} == profile
    assert set(declared) - set(profile) == {"run_dir", "out_dir"}
    assert (declared["run_dir"], declared["out_dir"]) == ("runs/tiny", "runs/tiny/05_evaluate")


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[1].metadata.get("tags", [])
    assert nb.cells[0].cell_type == "markdown"


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, tokenizer):
    """A run dir as stages 02-04 leave it: a random tiny base, SFT and PPO LoRA adapters that really change it,
    and a reward model (the packaged MiniLM with an untrained head): enough for stage 05 to run end to end."""
    import json

    from peft import LoraConfig, get_peft_model

    from utils.pipeline.artifacts import write_metrics
    from utils.reward.model import load_backbone

    run = tmp_path_factory.mktemp("run")
    config = tiny_lm(tokenizer, 5).config
    config.max_position_embeddings = 512  # room for the HH prompts
    torch.manual_seed(5)
    base = GPTNeoXForCausalLM(config)
    base.save_pretrained(run / "02_sft" / "base")
    tokenizer.save_pretrained(run / "02_sft" / "base")
    for stage, seed in (("02_sft", 6), ("04_ppo", 7)):
        torch.manual_seed(seed)
        lora = get_peft_model(GPTNeoXForCausalLM(base.config), LoraConfig(r=4, target_modules=["query_key_value"]))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)  # LoRA's B starts at zero; a trained adapter's is not
        lora.save_pretrained(run / stage / "adapter")
        tokenizer.save_pretrained(run / stage / "adapter")  # as stages 02 and 04 save it, beside the adapter
    write_metrics(run / "02_sft", {"base_model_dir": "base", "adapter_dir": "adapter", "quantization": "none"})
    write_metrics(run / "04_ppo", {"adapter_dir": "adapter"})
    rm, rm_tokenizer, _ = load_backbone("sentence-transformers/all-MiniLM-L6-v2")
    rm.save_pretrained(run / "03_reward" / "rm")
    rm_tokenizer.save_pretrained(run / "03_reward" / "rm")
    (run / "03_reward" / "rm" / "reward.json").write_text(json.dumps({"max_length": 128}))
    write_metrics(run / "03_reward", {"model_dir": "rm"})
    return run


def test_models_share_one_base_and_switch_adapters(fake_run, tokenizer, tmp_path):
    import shutil

    from utils.evaluate.models import load_models, use

    models = load_models(fake_run)
    assert models.names == ["base", "sft", "ppo"]
    ids = torch.tensor([chat_format.encode_prompt(conv("How do I bake bread?"), tokenizer)])
    logits = {}
    for name in ("base", "sft", "ppo", "base"):
        with use(models, name) as m, torch.no_grad():
            logits.setdefault(name, []).append(m(input_ids=ids).logits)
    assert torch.equal(logits["base"][0], logits["base"][1])  # switching back restores the base exactly
    assert not torch.allclose(logits["base"][0], logits["sft"][0])
    assert not torch.allclose(logits["sft"][0], logits["ppo"][0])

    no_ppo = tmp_path / "run"
    shutil.copytree(fake_run, no_ppo)
    shutil.rmtree(no_ppo / "04_ppo")
    assert load_models(no_ppo).names == ["base", "sft"]  # evaluating after SFT alone works


def test_notebook_on_the_micro_run(micro_run):
    """Stage 05 as the runner executed it in the session's micro pipeline (tests/conftest.py)."""
    import json

    from utils.pipeline.profile import load_profile

    params = load_profile("tests/profiles/micro.yaml").stage_params("05_evaluate")
    out = micro_run / "05_evaluate"
    m = json.loads((out / "metrics.json").read_text())
    ours = [f"{name} (k50)" for name in ["base", "sft", "ppo", "dpo", "rloo"] + [f"best_of_{n}" for n in params["best_of_n"]]]
    theirs = ["pythia-1b-deduped-sft (k50)", "pythia-12b-deduped-sft (k50)"]
    assert sorted(m["models"]) == sorted(ours + theirs)
    # Every judge rates every player; exactly one is the reward model PPO was trained against.
    assert {name: j["trained_against"] for name, j in m["judges"].items()} == {"proxy": True, "judge": False}
    ppo_rm = json.loads((micro_run / "04_ppo" / "metrics.json").read_text())["reward_model_dir"]
    assert m["judges"]["proxy"]["source"].endswith("03_reward/reward_model") and ppo_rm.endswith("03_reward/reward_model")
    assert m["judges"]["judge"]["source"].endswith("03_reward/judge/reward_model")
    n = params["n_heldout_prompts"]
    prompts, s = n + params["n_lottery_prompts"], params["samples_per_prompt"]  # every sample meets every sample
    for judge in m["judges"].values():
        assert sorted(judge["elo"]) == sorted(judge["win_rates"]) == sorted(judge["rewards"]) == sorted(ours + theirs)
        for player, rating in judge["elo"].items():
            assert rating["ci"][0] <= rating["rating"] <= rating["ci"][1]
            reward = judge["rewards"][player]
            assert reward["ci"][0] <= reward["mean"] <= reward["ci"][1]
            for other, rate in judge["win_rates"][player].items():
                assert rate + judge["win_rates"][other][player] == pytest.approx(1.0)
        # Every pair of our players meets on every prompt, OpenAssistant's players on the held-out ones only.
        k = len(ours)
        assert judge["games"] == (k * (k - 1) // 2 * prompts + 2 * k * n + 1 * n) * s * s
    # The two judges disagree somewhere: they are different models, not one model twice.
    assert m["judges"]["proxy"]["rewards"] != m["judges"]["judge"]["rewards"]
    # Reward against KL: SFT (KL 0), best-of-n (its analytic bound), a point per PPO and RLOO snapshot (sampled in their
    # stage on the same fixed prompts), DPO; every gain paired by prompt against SFT, with a standard error.
    curve = {p["player"]: p for p in m["reward_vs_kl"]}
    ppo = json.loads((micro_run / "04_ppo" / "metrics.json").read_text())
    snapshots = sorted(int(u) for u in ppo["snapshots"])
    assert [f"ppo@{u}" for u in snapshots] == [p for p in curve if p.startswith("ppo@")] and len(snapshots) >= 4
    assert curve["sft"]["kl"] == 0.0 and curve["sft"]["proxy_gain"] == 0.0
    assert curve["best_of_2"]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert curve["best_of_2"]["proxy_gain"] >= 0  # the proxy prefers its own pick, prompt by prompt
    assert "dpo" in curve and curve["dpo"]["kl_se"] > 0
    for point in curve.values():
        assert {"player", "kl", "proxy_gain", "proxy_gain_se", "judge_gain", "judge_gain_se"} <= set(point)
        assert point["prompts"] == m["fixed_set"]["prompts"]
    # The PPO stage's own reading of its snapshots, rescored here by the same proxy: the same gains.
    assert ppo["progress"][-1]["proxy_gain"] == pytest.approx(curve[f"ppo@{snapshots[-1]}"]["proxy_gain"] - curve["ppo@0"]["proxy_gain"], abs=1e-6)
    rloo = json.loads((micro_run / "04_rloo" / "metrics.json").read_text())
    rloo_snapshots = sorted(int(u) for u in rloo["snapshots"])
    assert [f"rloo@{u}" for u in rloo_snapshots] == [p for p in curve if p.startswith("rloo@")]
    assert [p["update"] for p in rloo["progress"]] == rloo_snapshots and rloo["progress"][0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert {row["player"] for row in m["rl_check"]} == {f"ppo@{snapshots[-1]}", f"rloo@{rloo_snapshots[-1]}"}
    assert all(m["models"][f"{p} (k50)"]["ppl"] > 1 for p in ["base", "sft", "ppo", "dpo"])
    assert m["models"]["base (k50)"]["kl"] is None and m["models"]["sft (k50)"]["kl"] and m["models"]["ppo (k50)"]["kl_sft"]
    assert 0 <= m["models"]["sft (k50)"]["hh_refusal_rate"] <= 1
    assert m["external_players"] == {p: n for p in theirs}  # they join on the held-out prompts used
    assert m["prompts"]["heldout"] == n and m["prompts"]["lottery"] == params["n_lottery_prompts"]
    assert m["sampling"]["k50"]["top_k"] == 50 and m["sampling"]["k50"]["max_new_tokens"] == params["max_new_tokens"]
    assert {p.name for p in out.glob("*.png")} == {"elo_by_judge.png", "win_rates.png", "lengths_and_rewards.png", "reward_vs_kl.png",
                                                   "reward_against_length.png"}
    # Length-controlled win rates against SFT, per judge and player. Best-of-1 is SFT's own sampling: every game a
    # draw at equal length, so both its raw and its LC win rate are exactly one half.
    for judge, by_player in m["length_controlled"].items():
        assert set(by_player) == set(ours + theirs) - {"sft (k50)"}, judge
        for player, r in by_player.items():
            assert {"lc_win_rate", "ci", "win_rate"} <= set(r) and r["ci"][0] <= r["lc_win_rate"] <= r["ci"][1], player
        assert by_player["best_of_1 (k50)"]["win_rate"] == 0.5 and by_player["best_of_1 (k50)"]["lc_win_rate"] == pytest.approx(0.5)
    assert {"win vs SFT", "LC win vs SFT"} <= set(next(r for r in m["table"] if r["player"] == "ppo (k50)"))
    # lm-eval on every model, the kit's HH-pairs task offline; the base's difference to itself is 0.
    assert set(m["lm_eval"]) == {"base", "sft", "ppo", "dpo", "rloo"}
    for model, tasks in m["lm_eval"].items():
        task = tasks["kit_hh_harmless_pairs"]
        assert task["n"] == params["lm_eval_limit"] and 0 <= task["acc"]["value"] <= 1
        assert task["acc"]["diff_to_base"] == pytest.approx(task["acc"]["value"] - m["lm_eval"]["base"]["kit_hh_harmless_pairs"]["acc"]["value"])
    assert [row["player"] for row in m["table"]][0] in ours + theirs and len(m["table"]) == len(ours + theirs)
    assert (out / m["samples_file"]).exists()
    assert "![reward vs kl](05_evaluate/reward_vs_kl.png)" in (micro_run / "report.md").read_text()


def test_sampling_refuses_prompts_that_overflow_the_context(tokenizer):
    model = tiny_lm(tokenizer, 2)  # 128 positions
    long_prompt = conv("Tell me a joke about cats. " * 30)
    with pytest.raises(ValueError, match="prompt 1 has .* tokens: with max_new_tokens=16 it overflows the model's 128-token context"):
        sample_replies(model, tokenizer, [conv("Hi"), long_prompt], max_new_tokens=16)


def test_samples_read_whole_with_a_few_players():
    from utils.evaluate.tables import featured_players, sample_blocks

    players = ["base (k50)", "sft (k50)", "ppo (k50)", "dpo (k50)", "best_of_4 (k50)", "best_of_8 (k50)", "pythia-1b (k50)"]
    shown = featured_players(players, {"best_of_4 (k50)": 4, "best_of_8 (k50)": 8})
    assert shown == ["sft (k50)", "dpo (k50)", "ppo (k50)", "best_of_8 (k50)"]  # no RLOO in this run: not shown
    text = sample_blocks({"p": "Why <b>?\nTwo lines"}, {"sft (k50)": {"p": ["A\n\nB " + "word " * 100]}}, {"sft (k50)": {"p": [0.25]}},
                         ["p"], ["sft (k50)", "ppo (k50)"])
    assert text.startswith("**Prompt 1**\n\n> Why &lt;b&gt;?  \n> Two lines  \n\n*sft (k50)* [+0.25]\n\n> A  \n>   \n> B word")
    assert "word " * 100 in text and "…" not in text  # whole, never cut
    assert "ppo (k50)" not in text  # a player without an answer to the prompt is left out


def test_the_readings_under_the_tables_come_from_the_run():
    from types import SimpleNamespace

    from utils.evaluate.results import baseline_reading, perplexity_reading

    judges = {"proxy": SimpleNamespace(trained_against=True), "judge": SimpleNamespace(trained_against=False)}
    rows = [{"player": "ppo (k50)", "proxy*": "0.70 [0.60, 0.80]: better", "judge": "0.55 [0.45, 0.65]: cannot tell apart"},
            {"player": "base (k50)", "proxy*": "0.30 [0.20, 0.40]: worse", "judge": "0.40 [0.30, 0.49]: worse"}]
    assert baseline_reading(rows, judges) == ("Under proxy*, of 2 players: 1 better than SFT, 1 worse, 0 cannot be told apart from it. "
                                              "Under judge, of 2 players: 0 better than SFT, 1 worse, 1 cannot be told apart from it.")
    assert perplexity_reading({"base": 8.9, "sft": 8.35, "ppo": 8.51}) == (
        "SFT 8.35 against the base's 8.90: lower, as SFT should. After SFT, each model's change: ppo +0.16.")
    assert perplexity_reading({"base": 8.0, "sft": 8.35}).endswith("not lower: SFT did not help here.")
    assert perplexity_reading({"sft": 8.0}) == ""
