"""Stage 05, evaluation: answers from base, SFT and the aligned models, their rewards, KL, perplexity and refusals.

One copy of the base weights serves every model: the SFT, PPO and DPO LoRA adapters sit on it side by
side and :func:`~utils.evaluate.models.use` switches between them (``"base"`` runs with no adapter at all).

* **Reward**: every answer is scored by the stage-03 reward model, as the prompt plus the answer.
* **KL from a reference**, by Monte Carlo (as PPO's penalty measures it, Ziegler et al. 2019): sample
  replies ``y ~ π(·|x)`` and average ``Σ_t log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)`` over samples.
  The estimate needs samples from π itself, so these replies are drawn at temperature 1 with no top-k,
  top-p or repetition penalty, and scored on the very token ids that were sampled.
* **Perplexity** on held-out SFT threads: ``exp`` of the mean negative log-likelihood of the assistant
  tokens (the tokens SFT trains on, each reply's end-of-turn token included).
* **Refusal rate**: the share of answers that decline, by a deliberately simple phrase detector
  (:data:`utils.evaluate.harmless.REFUSAL_PHRASES`), crude but transparent: read the sample tables before trusting it.

The package: :mod:`~utils.evaluate.params` (``EvaluateParams``, each default once), :mod:`~utils.evaluate.stage` (the
steps notebook 05 calls, and its metrics), :mod:`~utils.evaluate.models` (one base, the adapters by name),
:mod:`~utils.evaluate.answers` (sampling and scoring), :mod:`~utils.evaluate.kl`, :mod:`~utils.evaluate.perplexity`,
:mod:`~utils.evaluate.harmless`, :mod:`~utils.evaluate.tournament` (win rates and Elo with intervals),
:mod:`~utils.evaluate.best_of_n`, :mod:`~utils.evaluate.length_control`, :mod:`~utils.evaluate.reward_vs_kl`,
:mod:`~utils.evaluate.lm_harness` (lm-eval), :mod:`~utils.evaluate.sampling_reports` (OpenAssistant's own models'
answers), :mod:`~utils.evaluate.results` (the results table) and :mod:`~utils.evaluate.tables`. The judges are
:mod:`utils.reward.judges`: the RL stages' fixed set asks them too.
"""
