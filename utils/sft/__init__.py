"""Supervised fine-tuning with QLoRA: a frozen 4-bit base, small trainable LoRA matrices, loss on replies.

The recipe, and where each piece comes from:

* **Data**: OASST conversation threads ending in an assistant reply, encoded by
  :func:`utils.model.chat_format.encode`, which also returns which tokens are the assistant's. trl's
  ``SFTTrainer`` turns that ``assistant_masks`` column into labels (-100 elsewhere), so the loss covers the
  replies and the end-of-turn tokens that close them, never the user's words (InstructGPT's SFT, Ouyang et
  al. 2022; OpenAssistant's SFT, Köpf et al. 2023, https://arxiv.org/abs/2304.07327).
* **QLoRA** (Dettmers et al. 2023): the base's linear layers in 4-bit NF4 with double quantization, LoRA
  adapters (Hu et al. 2021) on every linear layer of the transformer blocks, gradient checkpointing on the
  GPU; memory goes to the adapters and activations, not to a full copy of the weights and Adam state.
* **New tokens**: a base without a chat template has never seen the role tokens, so their input-embedding
  rows are trained too (peft's ``trainable_token_indices``): three rows, not the whole matrix.

The package: :mod:`~utils.sft.params` (``SFTParams``, each default once), :mod:`~utils.sft.stage` (the steps the
notebook and ``recipes.train sft`` both call, and the stage's metrics), :mod:`~utils.sft.data` (threads to tokens,
the loss mask), :mod:`~utils.sft.training` (LoRA and trl's trainer), :mod:`~utils.sft.model` (the adapter saved,
merged, and loaded by the stages after), :mod:`~utils.sft.display` (the loss curve, replies side by side).
"""
