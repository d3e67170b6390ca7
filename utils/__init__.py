"""The logic behind the notebooks: data, chat format, models, SFT, reward model, PPO, evaluation."""
