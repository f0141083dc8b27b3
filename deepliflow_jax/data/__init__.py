"""Data: KITTI / FlyingThings3D readers, LiDAR sampling, preprocessing, augmentation,
the built-in synthetic world, the batching pipeline and the one data set type.

Modules: ``io`` (PNG / PFM), ``kitti``, ``ft3d``, ``lidar``, ``preprocess``, ``augment``
(JAX), ``pipeline``, ``synthetic``, ``dataset`` (``Dataset``, ``load_dataset``: what the
study, the search and the API train and evaluate on). Nothing is imported here so that
NumPy-only users (e.g. the synthetic generator) do not load JAX.
"""
