"""Data health from cached features: likely label errors, near-duplicates and copies, leakage, outliers.

May import: core.base, core.data, core.backbones, core.features, core.runs.
"""
