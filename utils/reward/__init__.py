"""Stage 03, the reward models (``notebooks/03_reward.ipynb``, ``python -m recipes.train reward``).

* :mod:`~utils.reward.params`: the stage's parameters, each default written once;
* :mod:`~utils.reward.model`: the backbone, how it reads a conversation, and :class:`~utils.reward.model.RewardScorer`;
* :mod:`~utils.reward.training`: the pairwise ranking loss (with ODIN's length head as an option) and its trainer;
* :mod:`~utils.reward.evaluation`: accuracy on held-out pairs, split by which reply is longer;
* :mod:`~utils.reward.judges`: the proxy and the judges it never saw, as stage 05 (and the fixed sets) ask them;
* :mod:`~utils.reward.stage`: the stage's steps, which the notebook and the script call in the same order, and its
  ``stage_metrics``; :mod:`~utils.reward.display`: what the notebook shows; ``python -m utils.reward eval``: the command line.
"""
