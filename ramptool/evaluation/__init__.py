"""Robustness evaluation: per-sample flags, union accuracy, AutoAttack, corruptions, reports."""
