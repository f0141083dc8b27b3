"""Micro-benchmark of cost-volume formulations (all five levels of one forward).

  python -m experiments.bench_cost_volume [--height=384 --width=1216 --batch=1]
      [--repeats=20] [--dtype=float32|bfloat16] [--variants=shifted (model),patches,...]
      [--whole_model="shifted (model),banded_matmul" --whole_repeats=5]
      [--output_json=FILE] [--output_md=FILE]
"""

from __future__ import annotations

import json

from absl import app, flags

from deepliflow_jax import cli
from deepliflow_jax.fileio import write_text_atomic

FLAGS = flags.FLAGS
flags.DEFINE_integer("height", 384, "Network input height (multiple of 64).")
flags.DEFINE_integer("width", 1216, "Network input width (multiple of 64).")
flags.DEFINE_integer("batch", 1, "Batch size.")
flags.DEFINE_integer("repeats", 20, "Timed calls per variant.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_list("variants", None, "Variants (default all); the first is the reference.")
flags.DEFINE_list("whole_model", [], "Also time the whole forward with these variants "
                  "swapped in (the first is the reference), e.g. 'shifted (model),banded_matmul'.")
flags.DEFINE_integer("whole_repeats", 5, "Timed forwards per --whole_model variant.")
flags.DEFINE_string("output_json", None, "Write the results as JSON here.")
flags.DEFINE_string("output_md", None, "Write the Markdown table here.")


def main(argv):
    del argv
    cli.announce_results("python -m experiments.bench_cost_volume",
                         FLAGS.output_json, FLAGS.output_md)
    from deepliflow_jax.profile import cost_volume_bench as cvb
    from deepliflow_jax.profile.inputs import check_sizes

    check_sizes(FLAGS.height, FLAGS.width, [FLAGS.batch])
    result = cvb.run_bench(FLAGS.height, FLAGS.width, FLAGS.batch, FLAGS.repeats, FLAGS.dtype,
                           FLAGS.variants)
    table = cvb.format_bench(result)
    if FLAGS.whole_model:
        whole = cvb.run_whole_model(FLAGS.whole_model, FLAGS.height, FLAGS.width, FLAGS.batch,
                                    FLAGS.whole_repeats, FLAGS.dtype)
        result["whole_model"] = whole
        table += "\n\n" + cvb.format_whole_model(whole, FLAGS.height, FLAGS.width, FLAGS.batch)
    print(table)
    if FLAGS.output_json:
        write_text_atomic(FLAGS.output_json, json.dumps(result, indent=2) + "\n")
    if FLAGS.output_md:
        write_text_atomic(FLAGS.output_md, table + "\n")


if __name__ == "__main__":
    app.run(main)
