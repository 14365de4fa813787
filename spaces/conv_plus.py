"""The former name of the conv space, kept so studies and exports made under it still load.

`spaces.conv` now searches what this space added (two convs per block, label smoothing)
with the same param names, so its trials replay there unchanged.
"""

from __future__ import annotations

from spaces.conv import BASELINES, PRIOR, build, suggest

__all__ = ["BASELINES", "PRIOR", "build", "suggest"]
