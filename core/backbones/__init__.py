"""Backbones: the registry of frozen feature extractors, where their weights come from (the hub caches
included), their preprocessing, and the feature variants one forward pass gives.

May import: core.base, core.data.
"""
