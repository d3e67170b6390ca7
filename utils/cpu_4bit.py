"""4-bit layers that stay trainable on CPUs with AVX512-BF16.

bitsandbytes 0.50 repacks a 4-bit layer's weight into a faster inference layout the first time the layer
runs in eval mode without gradients on such a CPU (an x86 server since Cooper Lake / Zen 4). A model used
for generation or evaluation and then trained (SFT measures held-out loss first, PPO samples between its
updates) then fails in the training step: ``a view of a leaf Variable that requires grad is being used in
an in-place operation``; a layer narrower than one 4-bit block (64) fails even at inference (``shape
'[96, 0]' is invalid``). On other CPUs and on GPUs nothing changes. The SFT and PPO models call this
(utils.sft); its natural home is the loader, utils.modeling.load_causal_lm, for every 4-bit model.
"""

from __future__ import annotations

from torch import nn


def keep_trainable_layout(model: nn.Module) -> nn.Module:
    """Turn off the inference repacking of every bitsandbytes 4-bit layer of ``model`` (and undo any done)."""
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
    return model
