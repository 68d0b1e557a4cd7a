"""Former name of :mod:`pgmaxsim.search` (renamed so that the module says what it holds).

Code that imported ``pgmaxsim.query`` keeps working: the name is an alias of
:mod:`pgmaxsim.search`, with a DeprecationWarning. It goes in a later release.
"""

import sys
import warnings

from pgmaxsim import search as _search

warnings.warn("pgmaxsim.query is now pgmaxsim.search", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _search
