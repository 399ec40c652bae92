"""Classify new photos with a recorded run: its backbone, features and head, exactly as the run used them.

May import: everything below it (base to probing and maps); not jobs or the CLI.
"""
