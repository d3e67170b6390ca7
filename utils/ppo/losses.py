"""PPO's pieces: pure functions on (batch, reply tokens) tensors, each tested on its own, and the KL controller.

``mask`` is 1 on reply tokens and 0 on padding after a reply's end. Detail names follow Huang et al. (2022, 2024).
"""

from __future__ import annotations

import torch

from utils.model import distributed

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the tokens of the whole batch (padding stays 0).

    Detail (data parallel): the mean and variance count every process's tokens, so each process whitens with
    the statistics of the whole batch, exactly as one process holding it all would.
    """
    count = distributed.all_sum(mask.sum()).clamp(min=1)
    mean = distributed.all_sum((x * mask).sum()) / count
    var = distributed.all_sum((((x - mean) * mask) ** 2).sum()) / count
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_penalty_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``r_t = −β·(log π − log π_ref)_t``, plus the reward model's score on each reply's last token.

    Detail (Ziegler et al. 2019): the KL penalty is paid token by token, where the policy drifts, not once per
    reply; the score arrives only at the end, since the reward model judges the whole reply. Returns the rewards
    and the per-token KL estimate ``log π − log π_ref`` (whose sum over a reply estimates KL(π‖π_ref)).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).long() - 1  # the stop token, or the last token before max_new_tokens cut the reply
    rewards[torch.arange(len(rewards), device=rewards.device), last] += scores
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the reply tokens.

    ``δ_t = r_t + γ·V(s_{t+1}) − V(s_t)`` and ``A_t = δ_t + γλ·A_{t+1}``. The state after a reply's last token is
    terminal (its value is 0): the masked values past the end make sure of that. Returns ``(advantages, returns)``
    with ``returns = advantages + values``, the value head's regression target.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    advantages = advantages * mask
    return advantages, advantages + values


def rloo_advantages(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out advantages (Ahmadian et al. 2024; Kool et al. 2019): ``A_i = R_i − mean_{j≠i} R_j``.

    ``returns`` holds one number per reply, the replies to one prompt adjacent in groups of ``group_size``. The
    baseline is the mean of the *other* replies to the same prompt, so it is independent of reply i (the gradient
    stays unbiased) and it removes the prompt's share of the reward: an easy prompt's replies no longer all look
    good, only the better ones among them do. Within each prompt the advantages sum to zero.
    """
    grouped = returns.view(-1, group_size)
    others_mean = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, ``−min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)`` with ``ρ = π/π_old``, averaged over tokens.

    Where the ratio has left [1−ε, 1+ε] in the direction the advantage pushes, the clipped term is the larger
    loss and constant in ρ: that token stops contributing gradient. Returns ``(loss, clip fraction, approx KL)``,
    the approximate KL(π_old‖π) being the low-variance estimator ``(ρ − 1) − log ρ`` (Schulman's "k3").
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clip_fraction, approx_kl


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``½·max((V − R)², (V_clip − R)²)`` with ``V_clip = V_old + clip(V − V_old, ±ε)``: the value head, too, may move
    only so far from the values the advantages were computed with. Returns ``(loss, clip fraction)``."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clip_fraction


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V)/Var(R): 1 for a perfect value head, 0 for one no better than a constant (NaN if Var(R) = 0)."""
    var_returns = masked_var(returns, mask).item()
    return float("nan") if var_returns == 0 else 1.0 - masked_var(returns - values, mask).item() / var_returns


def reward_mean_std(scores: torch.Tensor, group_size: int = 1) -> tuple[float, float]:
    """Mean and spread over every process's scores (equal shares); a constant reward keeps scale 1.

    With several replies per prompt (adjacent groups of ``group_size``) the spread is the *within-prompt*
    standard deviation: the differences RL can act on, without the prompt-to-prompt spread it cannot change.
    """
    mean = distributed.all_mean(scores.mean())
    if group_size > 1:
        grouped = scores.view(-1, group_size)
        var = distributed.all_mean(((grouped - grouped.mean(1, keepdim=True)) ** 2).sum(1).mean() / (group_size - 1))
    else:
        var = distributed.all_mean(((scores - mean) ** 2).mean())
    std = var.sqrt().item()
    return mean.item(), std if std > 1e-8 else 1.0


class KLController:
    """The KL coefficient β. Detail (Ziegler et al. 2019): adaptive, a proportional controller in log-space,

    ``e = clip(KL/KL_target − 1, −0.2, 0.2)``, ``β ← β·(1 + e·n/horizon)`` after an update on ``n`` replies,
    so β rises while the policy drifts further from the reference than the target, and falls otherwise.
    With ``target=None`` β is fixed.
    """

    def __init__(self, init_kl_coef: float, target: float | None, horizon: int) -> None:
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
