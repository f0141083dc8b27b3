"""The compression study: presets, a resumable runner, tables and plots."""

from deepliflow_jax.study.config import PRESETS, StudyConfig, make_config
from deepliflow_jax.study.runner import Study, run_study

__all__ = ["PRESETS", "Study", "StudyConfig", "make_config", "run_study"]
