"""Datasets and their images: Oxford 17, folder datasets, Synthetic Flowers, exclusions, the one image loader.

May import: core.base.
"""
