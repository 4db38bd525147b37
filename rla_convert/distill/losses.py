"""Distillation losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE scaled by the teacher output's mean square, so every layer weighs the same whatever its scale."""
    teacher = teacher.float()
    return F.mse_loss(student.float(), teacher) / teacher.pow(2).mean().clamp_min(1e-8)


def kd_loss(student_logits, teacher_logits, labels, kl_weight: float, ce_weight: float, temperature: float = 1.0,
            chunk: int = 2048):
    """kl_weight * T^2 * KL(teacher || student) at temperature T, plus ce_weight * next-token CE.

    Computed over token chunks so the fp32 copies of [tokens, vocab] logits stay small.
    Returns (total, kl, ce) averaged over tokens.
    """
    s = student_logits.reshape(-1, student_logits.shape[-1])
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    y = labels.reshape(-1)
    n = s.shape[0]
    kl_sum = s.new_zeros((), dtype=torch.float32)
    ce_sum = s.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        si, ti = s[i : i + chunk].float(), t[i : i + chunk].float()
        if kl_weight:
            log_p_s = F.log_softmax(si / temperature, -1)
            log_p_t = F.log_softmax(ti / temperature, -1)
            kl_sum = kl_sum + (log_p_t.exp() * (log_p_t - log_p_s)).sum()
        if ce_weight:
            ce_sum = ce_sum + F.cross_entropy(si, y[i : i + chunk], reduction="sum")
    kl, ce = kl_sum / n * temperature**2, ce_sum / n
    return kl_weight * kl + ce_weight * ce, kl.detach(), ce.detach()
