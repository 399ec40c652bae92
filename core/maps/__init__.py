"""Maps of cached features: 2-D projections and neighbours, thumbnail sprite sheets, patch-PCA views.

May import: core.base, core.data, core.backbones, core.features, core.runs.
"""
