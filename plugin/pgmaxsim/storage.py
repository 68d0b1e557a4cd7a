"""Former name of :mod:`pgmaxsim.writes` (renamed so that the module says what it holds).

Code that imported ``pgmaxsim.storage`` keeps working: the name is an alias of
:mod:`pgmaxsim.writes`, with a DeprecationWarning. It goes in a later release.
"""

import sys
import warnings

from pgmaxsim import writes as _writes

warnings.warn("pgmaxsim.storage is now pgmaxsim.writes", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _writes
