"""The base layer: what every other package may use and what uses nothing of Flower Probe.

errors (user-facing errors), fileio (atomic writes, contained paths, archives, downloads, digests),
progress (the one progress callback type), text (the one escaping path for names), workspace (where
state lives), csv_export (the one formula-safe CSV writer), vectors (the one row normaliser), bootstrap (the one
percentile-bootstrap interval). Imports: the standard library, numpy and scipy only.
"""
