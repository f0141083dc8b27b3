"""Run time of DeepLiDARFlow: Flax configs, compressed variants and the PyTorch reference.

  python -m experiments.runtime [--configs=dense,bf16,pruned50,fq8,torch_eager,...]
      [--height=384 --width=1216 --batch_sizes=1,8 --train_batch=1]
      [--repeats=20 --warmup=3 --processes=3] [--precision=default|highest]
      [--weights=params.npz] [--profile_dir=DIR] [--isolate] [--nomix_frameworks]
      [--compilation_cache_dir=DIR]
      [--output_json=FILE --output_md=FILE] [--note=TEXT]

Writes results/runtime/runtime.{json,md} under the current directory unless
--output_json / --output_md name other files (the committed experiments/results/ only
when named there).

Prints one line per (config, batch) and the target check lines; see
``deepliflow_jax.profile.timing`` for the method.
"""

from __future__ import annotations

from absl import app, flags

from deepliflow_jax import cli
from deepliflow_jax.profile import runtime_configs
from weights_convert import torch_bridge

FLAGS = flags.FLAGS
flags.DEFINE_string("configs", runtime_configs.DEFAULT_CONFIGS,
                    "Comma-separated configurations (dense, bf16, prunedN, fqN, torch_eager, "
                    "torch_compile, torch_eager_bf16, torch_compile_bf16, train_step, "
                    "train_step_bf16, torch_train_step, torch_compile_train_step).")
flags.DEFINE_integer("height", 384, "Network input height (multiple of 64).")
flags.DEFINE_integer("width", 1216, "Network input width (multiple of 64).")
flags.DEFINE_list("batch_sizes", ["1", "8"], "Forward batch sizes (1: latency, 8: throughput).")
flags.DEFINE_integer("train_batch", 1, "Batch size of the fine-tuning step configs.")
flags.DEFINE_integer("repeats", 20, "Timed rounds per process.")
flags.DEFINE_integer("warmup", 3, "Untimed calls per job after compiling.")
flags.DEFINE_integer("processes", 3, "Subprocesses per job group (0: in this process).")
flags.DEFINE_enum("precision", "default", ["default", "highest"],
                  "float32 matmul/conv precision: XLA default (TF32 possible on GPU) or "
                  "highest (true fp32); torch's TF32 switches follow.")
flags.DEFINE_integer("seed", 0, "Weights (random init) and input seed.")
flags.DEFINE_string("weights", None, "Parameters .npz ('/'-joined paths); default random init.")
flags.DEFINE_bool("isolate", False, "One subprocess per job (per-job peak memory).")
flags.DEFINE_bool("mix_frameworks", True,
                  "JAX and torch jobs in the same subprocess, interleaved in the same rounds "
                  "(--nomix_frameworks: one process group per framework).")
flags.DEFINE_string("profile_dir", None, "Capture a jax.profiler trace of the JAX forwards here.")
flags.DEFINE_string("output_json", "results/runtime/runtime.json", "JSON results file.")
flags.DEFINE_string("output_md", "results/runtime/runtime.md", "Markdown report file.")
flags.DEFINE_string("note", "", "Free text stored with the results.")
flags.DEFINE_string("compilation_cache_dir", None,
                    "JAX persistent compilation cache for the workers (process 1 compiles, the "
                    "others load; per-process compile times are recorded).")
flags.DEFINE_bool("progress", True, "Show progress.")


def main(argv):
    del argv
    from deepliflow_jax.profile import report, timing

    try:
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    except ValueError as e:
        raise ValueError(f"--batch_sizes={FLAGS.batch_sizes}: need integers") from e
    cli.announce_results("python -m experiments.runtime", FLAGS.output_json, FLAGS.output_md)
    result = timing.run_benchmark(
        FLAGS.configs, FLAGS.height, FLAGS.width, batch_sizes, FLAGS.train_batch,
        FLAGS.repeats, FLAGS.warmup, FLAGS.processes, FLAGS.precision, FLAGS.seed,
        FLAGS.weights, FLAGS.isolate, FLAGS.mix_frameworks, FLAGS.profile_dir,
        FLAGS.progress, FLAGS.note, FLAGS.compilation_cache_dir,
        torch_reference=torch_bridge.LOADER)
    report.write_results(result, FLAGS.output_json, FLAGS.output_md)
    print(report.format_console(result))
    print(f"wrote {FLAGS.output_json} and {FLAGS.output_md}")


if __name__ == "__main__":
    app.run(main)
