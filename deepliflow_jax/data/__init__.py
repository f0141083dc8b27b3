"""Data: KITTI / FlyingThings3D readers, LiDAR sampling, preprocessing, augmentation,
the built-in synthetic world and the batching pipeline.

Modules: ``io`` (PNG / PFM), ``kitti``, ``ft3d``, ``lidar``, ``preprocess``, ``augment``
(JAX), ``pipeline``, ``synthetic``. Nothing is imported here so that NumPy-only users
(e.g. the synthetic generator) do not load JAX.
"""
