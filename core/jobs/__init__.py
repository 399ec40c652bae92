"""Background jobs: the job runner (one worker thread, a FIFO queue, progress and cancel) and the job targets.

May import: every engine package; nothing imports it but the CLI and ui/.
"""
