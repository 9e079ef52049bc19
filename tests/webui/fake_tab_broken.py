"""A tab module that exists but needs a package that is not installed."""

import tunelab_no_such_dependency  # noqa: F401
