"""Stage 04, the other road: Direct Preference Optimization (DPO) on the reward stage's own pairs.

PPO (``04_ppo``) learns from the rankings in two steps: fit a reward model r(x, y) to them (stage 03), then
let the policy sample and climb r under a KL leash. DPO (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290)
skips both the reward model and the sampling. The optimum of PPO's KL-regularised objective satisfies
``r(x, y) = β log π(y|x)/π_ref(y|x) + β log Z(x)``, so a Bradley-Terry loss on that *implicit reward* trains
the policy directly on the preference pairs:

    L = -log σ(β [log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)])

trl's ``DPOTrainer`` computes the loss; the kit writes none of it. This package supplies the data
(:mod:`~utils.dpo.data`), the model and the reference (:mod:`~utils.dpo.policy`), trains
(:mod:`~utils.dpo.training`) and measures the result (:mod:`~utils.dpo.evaluation`); :mod:`~utils.dpo.params` holds
the stage's parameters and :mod:`~utils.dpo.stage` the steps the notebook and the script both call. Implementation
details worth naming:

1. **The proxy's pairs**: every ranked pair of the proxy's trees, the part of the training split stage 03's
   proxy reward model (the one PPO optimises) learned from. Never a tree of the judge's part: the judge is stage
   05's independent opinion, and a policy trained on its rankings would be judged by a model that shares its
   training data. Never a tree of the eval split or of the held-out file either: the stage has no data
   parameters of its own, it rebuilds stage 03's pairs from the parameters stage 03 ran with
   (:func:`utils.dpo.stage.load_data`). HH-RLHF pairs that stage 03 mixed into the proxy (``hh_weight > 0``) are
   not given to DPO: trl's loss has no per-pair weight to honour.
2. **trl's conversational preference format** (:func:`~utils.dpo.data.conversational_record`: ``prompt`` a conversation,
   ``chosen`` and ``rejected`` one assistant turn each), tokenized by the kit's chat format
   (:func:`~utils.dpo.data.encode_pairs`): trl 1.16 tokenizes conversations only through a chat template, and the tiny base
   (OpenAssistant tags) has none. So the trainer gets ``prompt_ids``/``chosen_ids``/``rejected_ids``, as
   stage 03 gives trl's reward trainer its ids, and a subclass passes them to trl's collator unchanged. A reply
   ends with its end-of-turn token: DPO also learns where to stop, as SFT did.
3. **Too long?** The context is cut from the left (oldest turns first), keeping at least half the window;
   the replies fill the rest and keep their beginnings. Counted, never silent.
4. **One base in memory**: the SFT adapter is loaded as the trainable policy (peft's ``"default"``, trained
   further, as PPO does) and trl adds a frozen copy named ``"ref"`` as π_ref: a forward pass with ``"ref"``
   active is the SFT model. trl's copy leaves out the SFT adapter's trainable chat-token rows, and trl casts a
   4-bit model's trainable adapter to bf16 (QLoRA's choice on bf16 GPUs), which rounds the SFT weights; so
   :func:`~utils.dpo.training.make_trainer` loads the saved SFT weights into both adapters afterwards, the policy in float32. At
   step 0 the policy *is* the reference, exactly.
5. **Pairs weigh alike**: trl's loss has no per-pair weight, so a ranking of 4 replies (6 pairs) counts six
   times a ranking of 2 (1 pair). Stage 03's reward model weighs rankings alike (``pair_weighting="group"``).
6. **The held-out yardstick** (:func:`~utils.dpo.evaluation.implicit_rewards`): DPO's implicit reward ``β log π(y|x)/π_ref(y|x)`` on
   pairs it never saw (the eval split and the 100-tree file, the pairs stage 03 scores its reward model on):
   accuracy (a tie counts half, as in stage 03), mean margin and loss, before and after training. Before
   training π = π_ref, so every implicit reward is 0: accuracy 0.5, margin 0, loss ln 2.
"""
