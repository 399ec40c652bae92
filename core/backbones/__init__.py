"""Backbones: the registry of frozen feature extractors, where their weights come from (the hub caches
included), their preprocessing, the feature variants one forward pass gives, and the resolved record
(``resolved.ResolvedBackbone``) a name is looked up into once and passed down the engine.

May import: core.base, core.data.
"""
