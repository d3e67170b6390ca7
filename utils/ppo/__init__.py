"""Stage 04_ppo, RLHF with PPO (``notebooks/04_ppo.ipynb``, ``python -m recipes.train ppo``).

* :mod:`~utils.ppo.trainer`: the training loop, one update at a time, every implementation detail named where it
  happens; :mod:`~utils.ppo.losses`: its pure pieces (GAE, whitening, clipped losses, the KL controller);
* :mod:`~utils.ppo.model`: policy, frozen reference and value head on one base; :mod:`~utils.ppo.rollout`: sampling
  and log-probs; the trainer's ``state_dict()`` is the checkpoint, :mod:`utils.pipeline.checkpoints` its file;
* :mod:`~utils.ppo.params`: ``PPOParams``, the stage's parameters (each default written once); :mod:`~utils.ppo.stage`:
  the stage's steps, which the notebook and ``recipes.train`` both call, and its metrics; :mod:`~utils.ppo.plots`.

Each implementation detail is named where it happens ("Detail: ..."). Sources: Schulman et al. 2017 (PPO),
Schulman et al. 2016 (GAE), Ziegler et al. 2019 "Fine-Tuning Language Models from Human Preferences" (the
KL-penalised reward and its adaptive controller), Ouyang et al. 2022 (InstructGPT), Huang et al. 2022
"The 37 Implementation Details of PPO" and Huang et al. 2024 "The N+ Implementation Details of RLHF with PPO".

Data parallel: under ``accelerate launch`` each process samples and trains on its share of every batch;
gradients, whitening statistics, reward normalisation and the KL fed to the controller are averaged over the
processes (:mod:`utils.model.distributed`), so N processes make the updates one process would with the whole batch.
"""
