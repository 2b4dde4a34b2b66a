"""Workflows that run several training and evaluation steps: the key-pair finder (``pair``) and the demo."""
