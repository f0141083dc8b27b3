"""The command-line scripts (``python -m experiments.<name>``) over the library.

XLA logs from C++ below FATAL are off in these scripts unless ``TF_CPP_MIN_LOG_LEVEL``
is set: compiling the whole network on a CPU takes minutes, and XLA then logs its
"Very slow compile? If you want to file a bug ..." alarm at ERROR level (after 2
minutes, once per power-of-two slow compile), which here is expected, not a bug. The
scripts report compile time themselves (the study: "first pre-training step ... s");
errors still reach the user as Python exceptions. ``TF_CPP_MIN_LOG_LEVEL=0`` shows
XLA's log again. Set here because this package is imported before any script's
module, hence before JAX (which reads the variable once, at import).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
