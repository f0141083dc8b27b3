"""What bf16 (or fp16) compute costs in accuracy: EPE and outlier rates per dtype.

  python -m experiments.precision_accuracy --checkpoint=DIR --data_dir=ROOT \\
      [--dtypes=float32,bfloat16] [--examples_dir=DIR] [--output_json=F --output_md=F]

``--data_dir`` is a synthetic world (``experiments.make_synthetic`` or the study's) or a
KITTI scene flow 2015 root; its validation split is evaluated at each compute dtype
through the same prediction path. ``--examples_dir`` adds the release's KITTI example
pair (no ground truth there: the distance between the two outputs is reported).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from absl import app, flags, logging

from deepliflow_jax import cli
from deepliflow_jax.fileio import write_text_atomic

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Converted or study checkpoint directory.")
flags.DEFINE_bool("random_init", False, "Random weights instead of --checkpoint (numbers "
                  "then only test the pipeline).")
flags.DEFINE_string("data_dir", None, "Synthetic world or KITTI root (with training/).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes; the first is the "
                  "reference.")
flags.DEFINE_integer("max_val_frames", None, "Cap on validation frames.")
flags.DEFINE_string("examples_dir", None, "Folder with ex_1_im_10.png ... (the release's "
                    "KITTI example) for an output comparison without ground truth.")
flags.DEFINE_string("output_json", None, "Write the results as JSON here.")
flags.DEFINE_string("output_md", None, "Write the Markdown report here.")
flags.DEFINE_string("note", "", "Free text stored with the results.")


def run(variables, data_dir, dtypes=("float32", "bfloat16"), max_val_frames=None,
        examples_dir=None) -> dict:
    """Library entry point: :func:`precision_metrics` on a data set, plus the example."""
    import jax

    from deepliflow_jax.api import load_dataset, read_example
    from deepliflow_jax.profile.precision import output_difference, precision_metrics

    data = load_dataset(data_dir, max_val_frames=max_val_frames)
    result = precision_metrics(variables, data.val_batches(data.num_samples), dtypes,
                               interp_size=data.interp_size)
    synthetic = (Path(data_dir) / "synthetic.json").is_file()
    result["data"] = {"root": str(data_dir),
                      "type": "synthetic (KITTI layout)" if synthetic else data.dataset_type,
                      "lidar_points": data.num_samples,
                      "size": list(data.val[0].image0.shape[:2])}
    if examples_dir:
        ex = read_example(examples_dir, 1)
        result["kitti_example"] = {
            name: output_difference(variables, ex["frames"], ex["dataset"], name)
            for name in dtypes[1:]}
    result["device"] = f"{jax.default_backend()} ({jax.devices()[0].device_kind}; " \
                       f"{platform.processor() or platform.machine()})"
    result["versions"] = {"jax": jax.__version__}
    return result


def main(argv):
    del argv
    cli.announce_results("python -m experiments.precision_accuracy",
                         FLAGS.output_json, FLAGS.output_md)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    from deepliflow_jax.profile.precision import markdown

    if bool(FLAGS.checkpoint) == FLAGS.random_init:
        raise app.UsageError("give exactly one of --checkpoint and --random_init")
    if not FLAGS.data_dir or not (Path(FLAGS.data_dir) / "training").is_dir():
        raise app.UsageError(f"--data_dir {FLAGS.data_dir} has no training/ folder")
    if FLAGS.checkpoint:
        from deepliflow_jax.checkpoint import load_checkpoint

        if not Path(FLAGS.checkpoint).exists():
            raise app.UsageError(f"--checkpoint {FLAGS.checkpoint} does not exist")
        variables = load_checkpoint(FLAGS.checkpoint)
    else:
        from deepliflow_jax.model.build import init_params

        print("WARNING: --random_init: untrained weights; the accuracy numbers mean nothing.")
        variables = init_params(0, kernel_gain=2**0.5)
    try:
        result = run(variables, FLAGS.data_dir, tuple(FLAGS.dtypes), FLAGS.max_val_frames,
                     FLAGS.examples_dir)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    result.update(checkpoint=FLAGS.checkpoint, random_init=FLAGS.random_init, note=FLAGS.note)
    notes = [f"Data: {result['data']['type']} validation split of {result['data']['root']} "
             f"({result['data']['size'][0]}x{result['data']['size'][1]}, "
             f"{result['data']['lidar_points']} LiDAR points per frame); weights: "
             f"{FLAGS.checkpoint or 'random init'}; device: {result['device']}."]
    for name, d in result.get("kitti_example", {}).items():
        notes.append(f"KITTI example 1 (no ground truth), {name} vs float32: mean flow "
                     f"endpoint distance {d['mean_flow_diff_px']:.4f} px = "
                     f"{d['relative_percent']:.3f} % of the mean flow "
                     f"({d['mean_flow_px']:.3f} px); largest output difference "
                     f"{d['max_abs_diff_px']:.3g} px.")
    if FLAGS.note:
        notes.append(FLAGS.note)
    report = markdown(result, "Accuracy per compute dtype", notes)
    print(report)
    if FLAGS.output_json:
        write_text_atomic(FLAGS.output_json, json.dumps(result, indent=2))
    if FLAGS.output_md:
        write_text_atomic(FLAGS.output_md, report)


if __name__ == "__main__":
    app.run(main)
