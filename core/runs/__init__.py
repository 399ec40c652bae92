"""The run registry (SQLite: one transaction per record) and where a run's files are.

May import: core.base, core.data, core.backbones.
"""
