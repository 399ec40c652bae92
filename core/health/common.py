"""What the health checks share: the robust statistics behind the copy threshold (``copies``) and the outlier
cutoff (``outliers``)."""

from __future__ import annotations

import numpy as np

# log distances are clipped here: byte copies have distance 0, whose log would swamp the median.
MIN_DISTANCE = 1e-6
# The robust standard deviation of a normal distribution is 1.4826 median absolute deviations.
_MAD_TO_SD = 1.4826


def robust_centre_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation: a handful of duplicates or outliers cannot move them."""
    centre = float(np.median(values))
    return centre, _MAD_TO_SD * float(np.median(np.abs(values - centre)))
