"""Writes the built-in synthetic scene-flow data set in the KITTI Scene Flow layout.

  python -m experiments.make_synthetic --output_dir=data/synthetic --num_scenes=200

Then read it with ``deepliflow_jax.data.kitti.KittiSceneFlow(output_dir, split,
split_file=output_dir + "/split.txt")``. Interrupted runs resume (existing scenes are
skipped).
"""

from __future__ import annotations

import json

from absl import app, flags

from deepliflow_jax.data import synthetic

FLAGS = flags.DEFINE_string("output_dir", None, "Data-set root (training/ is created in it).")
_NUM = flags.DEFINE_integer("num_scenes", 200, "Number of frame pairs.")
_HEIGHT = flags.DEFINE_integer("height", synthetic.KITTI_SIZE[0], "Image height.")
_WIDTH = flags.DEFINE_integer("width", synthetic.KITTI_SIZE[1], "Image width.")
_SEED = flags.DEFINE_integer("seed", 0, "Data-set seed.")
_START = flags.DEFINE_integer("start_index", 0, "Index of the first scene.")
_COMPRESSION = flags.DEFINE_integer("compression", 1, "PNG zlib level (0-9).")
_NOC = flags.DEFINE_bool("write_noc", True, "Also write flow_noc (visible-at-t+1 flow).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Regenerate scenes that exist.")
_WORKERS = flags.DEFINE_integer("num_workers", 1, "Processes generating scenes in parallel.")
flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    summary = synthetic.generate_dataset(
        FLAGS.value, _NUM.value, height=_HEIGHT.value, width=_WIDTH.value, seed=_SEED.value,
        start_index=_START.value, compression=_COMPRESSION.value, write_noc=_NOC.value,
        overwrite=_OVERWRITE.value, num_workers=_WORKERS.value)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
