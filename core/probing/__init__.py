"""Probing cached features: heads, the five protocols, the probe suite (few-shot levels and seeds),
experiments end to end, presets, uncertainty (intervals, paired tests) and summaries.

May import: core.base, core.data, core.backbones, core.features, core.runs.
"""
