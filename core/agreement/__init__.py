"""How much two feature spaces of the same images agree, and where they part.

``measures``: linear CKA (debiased), mutual k-NN alignment, per-image neighbour agreement, and error
consistency (Cohen's kappa) of two runs on the same test images, with bootstrap intervals where cheap.
``pairs``: two cached feature sets of one dataset, matched image by image (and what the Compare page and the
CLI need to get them from runs or from the cache).
"""
