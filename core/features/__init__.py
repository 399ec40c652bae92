"""Feature extraction into the sharded, resumable disk cache: devices, the local engine, the Ray engine.

May import: core.base, core.data, core.backbones.
"""
