"""Subprocess entry point of the run-time harness (see :mod:`.timing`).

  python -m deepliflow_jax.profile.timing_worker SPEC.json OUT.json
"""

import sys

from deepliflow_jax.profile.runners import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv))
