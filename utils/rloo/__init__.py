"""Stage 04, the REINFORCE road: RLOO (REINFORCE Leave-One-Out) with trl's ``RLOOTrainer`` (or GRPO, note 8).

PPO (``04_ppo``) learns a value head to tell a good reply from a lucky one. Ahmadian et al. (2024), "Back to Basics:
Revisiting REINFORCE-Style Optimization for Learning from Human Feedback in LLMs" (https://arxiv.org/abs/2402.14740),
argue that an LLM fine-tuned from a strong SFT model does not need one: sample ``k`` replies to each prompt, and let the
other ``k - 1`` replies be each reply's baseline:

    A_i = R_i − 1/(k−1) · Σ_{j≠i} R_j          R_i = r(x, y_i) − β · Σ_t (log π(y_i,t) − log π_ref(y_i,t))

    loss = − mean_i  A_i · log π(y_i | x)       (log π of the whole reply: one action, REINFORCE)

The baseline depends on the prompt but never on the reply it scores, so the gradient stays unbiased, and it is the
prompt's own average reward: a hard prompt whose replies all score low does not push every one of them down, the way
a single batch-wide baseline would. A value head has to *learn* that per-prompt average from the same few hundred
replies the policy learns from, and a weak baseline leaves the gradient noisy; the leave-one-out
mean is there from the first update, at the price of ``k`` samples per prompt.

trl computes the loss; the kit writes none of it. This package supplies the policy, the prompts, the reward and the
bookkeeping (:mod:`~utils.rloo.training`); :mod:`~utils.rloo.params` holds the stage's parameters, :mod:`~utils.rloo.stage`
the steps the notebook and the script both call. Details worth naming:

1. **The policy is the SFT model**: stage 02's base (with its quantization) and its LoRA adapter as peft's trainable
   ``"default"`` adapter (:func:`utils.dpo.policy.load_policy`). Passed to trl as a ``PeftModel`` and *without*
   ``peft_config``, trl 1.16 copies that adapter as a frozen adapter named ``"ref"`` and computes π_ref by switching
   to it: one base in memory, and the KL is to the SFT model, not to the bare base. trl's copy leaves out the SFT
   adapter's chat-token embedding rows and casts a 4-bit model's trainable adapter to bf16, so the saved SFT weights
   are loaded into both adapters afterwards, the policy in float32 (:func:`utils.dpo.policy.sft_as_reference`): at the
   first update π = π_ref exactly, and trl's first logged KL is 0.
2. **The kit's chat format, not trl's**: trl 1.16 tokenizes prompts through a chat template (the tiny base has none)
   or re-tokenizes text. Each prompt is encoded once by :func:`utils.model.chat_format.encode_prompt` (turns tokenized one by
   one, as SFT trained), and the kit's subclass of trl's trainer hands trl those ids. Prompts longer than ``max_prompt_tokens``
   are skipped and counted, never cut.
3. **Replies end at the kit's stop tokens** (:func:`utils.model.chat_format.stop_token_ids`, set as the model's generation
   ``eos_token_id``, which trl reads): trl keeps the stop token in the reply, so the policy also learns where to stop.
   The reward sees the reply as :func:`utils.model.chat_format.decode_reply` decodes it, the text stage 05 scores.
4. **Sampling from π itself**: temperature 1, no top-k, no top-p, no repetition penalty. The samples are then exactly
   on-policy, which REINFORCE assumes; dropout is off, so the log-probs that are trained are those that sampled.
5. **One update = one generation batch**: ``prompts_per_update × replies_per_prompt`` replies, sampled once and
   never reused (trl's ``num_iterations`` = 1), optionally in micro-batches of ``mini_batch_size`` (gradient
   accumulation, for memory). With ``steps_per_update`` = 1 the update is one optimizer step, trl's PPO-style clipping
   never acts (the ratio π/π_old is 1) and the update is the paper's plain REINFORCE with the leave-one-out baseline.
   With ``steps_per_update`` = s > 1 the shuffled replies are split into s mini-batches, one optimizer step each, as
   PPO's mini-batches: the same samples buy s smaller Adam steps, and from the second on π has moved, so trl's clipped
   ratio of the whole reply (ε = 0.2) holds each step near the policy that sampled. The learning rate is constant.
6. **KL in the reward**: trl subtracts β times the reply's summed log-ratio (the paper's sequence-level penalty) from
   the reward before the baseline. trl logs the KL per *token*; the per-update log here also gives it per *reply*,
   the unit of PPO's ``kl`` and stage 05's KL (trl's token mean times the mean reply length, which is exactly the
   reply mean: one generation per logged update).
7. **Snapshots** of the policy adapter at the updates of :func:`utils.ppo.stage.snapshot_schedule` (update 0 is the SFT
   policy), peft folders ``snapshots/update-NNNNNN`` for stage 05's reward-against-KL curve, as PPO keeps them.
8. **GRPO, one parameter away** (``algorithm: grpo``; Shao et al. 2024, "DeepSeekMath",
   https://arxiv.org/abs/2402.03300): trl's ``GRPOTrainer`` on the same policy, prompts, reward, stop tokens and
   snapshots. Three things differ, all trl 1.16's defaults: each reply's advantage is its reward minus the mean of
   its *whole* group (itself included), divided by the group's standard deviation, so every prompt's advantages
   have unit spread whatever the reward's scale (the same learning rate moves GRPO further than RLOO); the loss is
   per token, clipped at ε = 0.2, averaged over the tokens of the batch (trl's "dapo" normalisation, which drops the
   original's per-reply length average and its bias towards short good replies); and the KL is not in the reward
   but a loss term, β times the per-token estimate k3 = π_ref/π − log(π_ref/π) − 1 (trl logs its token mean as
   ``kl``). Stage 05 still calls the player ``rloo``; the stage's metrics record which algorithm trained it.
"""
