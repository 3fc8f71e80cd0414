"""Warnings that point at the user's call, whatever path inside skmlp led to them."""

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# scikit-learn's _fit_context wraps every fit and partial_fit in a frame of its own
_FIT_CONTEXT = os.path.join("sklearn", "base.py")


def warn(message, category):
    """``warnings.warn``, pointing at the first frame outside skmlp and outside the
    wrapper scikit-learn puts around ``fit``: the user's ``fit``, ``partial_fit``
    or ``fit_together`` call."""
    frame, level = sys._getframe(0), 1
    while frame is not None and _inside(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _inside(filename):
    return filename.startswith(_PACKAGE) or filename.endswith(_FIT_CONTEXT)
