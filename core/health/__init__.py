"""Data health from cached features: likely label errors, near-duplicates and copies, leakage, outliers.

checks (``HealthConfig``, ``analyse``, ``dataset_health``: what callers import), one module per check (labels;
copies, for copies, near neighbours and leakage; outliers), the helpers they share (common) and the report (report).

May import: core.base, core.data, core.backbones, core.features, core.runs.
"""
