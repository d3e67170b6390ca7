"""The model side every stage shares: how a conversation is written, where a model comes from, how it is loaded and
sampled.

* :mod:`~utils.model.chat_format`: the one conversation format (SFT, reward models, DPO, PPO, RLOO and evaluation
  all encode through it) and the assistant-only loss mask;
* :mod:`~utils.model.source`: a hub name, a local folder or a GGUF file (a path, or inside an installed package);
* :mod:`~utils.model.modeling`: tokenizers and causal LMs loaded the same way everywhere (4-bit NF4 or not), devices,
  the trainers' progress lines, peak memory;
* :mod:`~utils.model.tiny_base`: the small GPT-NeoX base the offline ``tiny`` profile builds from the training text;
* :mod:`~utils.model.generation`: batched, seeded reply generation and the sampling presets;
* :mod:`~utils.model.batching`: the one rule every inference loop batches by (length);
* :mod:`~utils.model.distributed`: the few collective operations a hand-written training loop needs.
"""
