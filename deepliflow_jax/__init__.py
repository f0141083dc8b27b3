"""deepliflow_jax: DeepLiDARFlow in JAX/Flax, and tools to prune, quantize and time it."""

__version__ = "0.1.0"
