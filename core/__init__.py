"""Flower Probe engine: how good are a frozen backbone's features for my image classes?

Nothing in this package imports Streamlit. Data flows one way:
images -> backbone -> cached features -> head -> run record.
"""

__version__ = "0.1.0"
