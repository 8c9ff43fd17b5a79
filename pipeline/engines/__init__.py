"""Engines: plain PyTorch/numpy loops with hook methods (trainer, evaluator, inferer).

Import the module you need (``from pipeline.engines.evaluator import Evaluator``); this package
imports nothing so that ``medseg evaluate`` does not pay for torch.
"""
