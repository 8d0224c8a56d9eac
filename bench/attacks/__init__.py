"""Attacks shared by training methods and evaluation metrics."""

from bench.attacks.pgd import input_grad, pgd_linf, project_linf

__all__ = ["input_grad", "pgd_linf", "project_linf"]
