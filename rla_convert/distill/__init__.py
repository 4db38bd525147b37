"""Distillation: recipes, data, losses and the two-stage trainer (`rla-convert distill`)."""
