"""What the RL stages (``04_ppo``, ``04_rloo``) and stage 05's reward-against-KL picture share.

* :mod:`~utils.rl.fixed_set`: progress read where it can be seen, on fixed held-out prompts, paired by prompt;
* :mod:`~utils.rl.reward_functions`: a Python reward named ``module:function`` instead of the reward model;
* :mod:`~utils.rl.example_rewards`: scripted rewards for learning how RL behaves (``count_the``, ...).
"""
