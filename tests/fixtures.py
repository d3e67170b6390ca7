"""What several test modules share, one recipe each: small models and tokenizers, data, and a killed run.

A test module imports what it needs (``from fixtures import tiny_gpt_neox``), never from another test module;
pytest fixtures that several modules use are in ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast, TrainerCallback

from utils.sft.params import SFTParams
from utils.oasst import Pair

MICRO_PROFILE = Path(__file__).parent / "profiles" / "micro.yaml"  # the seconds-long pipeline of the micro_run fixture

# ---- the chat format on a word-level vocabulary: test_chat_format writes the ids out by hand ---------------------

WORDS = ["<|endoftext|>", "<|padding|>", "<|prompter|>", "<|assistant|>", "<|system|>", "[UNK]",
         "hi", "there", "hello", "how", "are", "you", "fine", "thanks", "be", "brief"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One id per whitespace-separated word, ids in the order of WORDS: 0 = <|endoftext|>, 6 = hi, ..."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|padding|>", unk_token="[UNK]",
        extra_special_tokens=["<|prompter|>", "<|assistant|>", "<|system|>"],
    )


CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello"},
    {"role": "prompter", "content": "how are you"},  # OASST's role name for the user
    {"role": "assistant", "content": "fine thanks"},
]
# By hand: <|system|>=4 be=14 brief=15 eot=0 <|prompter|>=2 hi=6 there=7 0 <|assistant|>=3 hello=8 0
#          2 how=9 are=10 you=11 0 3 fine=12 thanks=13 0
EXPECTED_IDS = [4, 14, 15, 0, 2, 6, 7, 0, 3, 8, 0, 2, 9, 10, 11, 0, 3, 12, 13, 0]
EXPECTED_MASK = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---- SFT -----------------------------------------------------------------------------------------------------------

FAST = SFTParams(max_steps=2, per_device_train_batch_size=2, per_device_eval_batch_size=4, logging_steps=1, max_length=64,
                 lora_r=4, lora_alpha=8, learning_rate=2e-4, group_by_length=False, eval_steps=0)


def word_model_dir(tmp_path: Path) -> Path:
    """A 16-token GPT-NeoX with the word-level tokenizer of fixtures.word_tokenizer, saved as a base."""
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=False)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    return tmp_path


# ---- reward models: MiniLM on pairs it can learn in a few dozen -----------------------------------------------------

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TOPICS_TRAIN = ["the weather", "cooking rice", "learning French", "fixing a bike", "a cat", "saving money",
                "sleeping well", "running", "painting a room", "planting tomatoes", "chess", "the moon"]
TOPICS_HELDOUT = ["writing a poem", "baking bread", "the ocean", "a job interview", "guitar", "hiking"]
GOOD = ["Sure, happy to help! Here is a clear answer about {t}, step by step.",
        "Great question. Here are a few practical tips about {t} that should help you."]
BAD = ["No. I won't talk about {t}. Figure it out yourself.",
       "Stupid question about {t}, go away and stop bothering me."]


def synthetic_pairs(topics):
    """Helpful vs dismissive replies: a preference an encoder can learn from a few dozen pairs."""
    return [
        Pair([{"role": "user", "content": f"Can you tell me about {t}?"}], g.format(t=t), b.format(t=t))
        for t in topics for g in GOOD for b in BAD
    ]


# ---- a run killed right after a checkpoint ---------------------------------------------------------------------------

class Killed(Exception):
    """Stands for the process dying: raised right after a checkpoint was written."""


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise Killed(f"killed after step {state.global_step}")


# ---- small models --------------------------------------------------------------------------------------------------


def tiny_gpt_neox(vocab_size: int, seed: int = 0, **config) -> GPTNeoXForCausalLM:
    """A random 2-layer GPT-NeoX of width 32 (Pythia's architecture, as the tiny base): milliseconds a step.

    ``config`` overrides any :class:`GPTNeoXConfig` field (heads, init range, positions, EOS and padding ids).
    The seed is set before the weights are drawn: the same arguments give the same model.
    """
    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=128) | config
    return GPTNeoXForCausalLM(GPTNeoXConfig(**settings))


def chat_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """One id per word of ``words`` (id 0 unknown), with the kit's chat tokens added as a template-less base gets them
    (:func:`utils.model.chat_format.add_special_tokens`): replies of a tiny model are then words a test can count."""
    from utils.model.chat_format import add_special_tokens

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    add_special_tokens(hf)
    return hf


# ---- PPO on a tiny random GPT-NeoX with a word-level chat tokenizer ----------------------------------------------------

PPO_WORDS = [f"w{i}" for i in range(24)] + ["yes", "no"]


def ppo_lm(tokenizer, seed: int = 0) -> GPTNeoXForCausalLM:
    # A larger init than the default 0.02 gives a random model with peaked next-token distributions, which a
    # LoRA adapter can move within a few updates (a 0.02 init is nearly uniform and learns slowly).
    return tiny_gpt_neox(len(tokenizer), seed, num_attention_heads=4, initializer_range=0.2)


def ppo_prompts(n: int = 20) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": " ".join(PPO_WORDS[(3 * i + j) % 24] for j in range(3))}] for i in range(n)]


def ppo_config(**overrides):
    """PPO settings for a test: one reply per prompt, a slow KL controller with a loose target, few tokens."""
    from utils.ppo.params import PPOParams

    base = dict(batch_size=8, replies_per_prompt=1, mini_batch_size=4, ppo_epochs=2, max_new_tokens=6, learning_rate=3e-3,
                init_kl_coef=0.05, target_kl=6.0, kl_horizon=10_000, reward_norm_samples=0)
    return PPOParams(**{**base, **overrides})
