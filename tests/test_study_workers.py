"""Study workers sharing one results folder: 2 processes (one killed) give 1 process's records.

One tiny study (post-training and aware pruning at two levels, no timing) runs
in a single process, then in two worker processes started together on another
folder; the worker holding an aware-training configuration is SIGKILLed in the
middle of it, and the survivor takes that configuration over and finishes the
study. Every process shares the session's persistent XLA cache
(``JAX_COMPILATION_CACHE_DIR``, set by conftest), so only the first compiles.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["-m", "experiments.run_study", "--preset=tiny", "--experiments=post_prune,aware_prune",
        "--prune_percents=10,20", "--runtime_repeats=0", "--devices=1"]
AWARE = ("aware_prune_10", "aware_prune_20")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def _start(folder) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *ARGS, f"--results_dir={folder}"], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _holder(claims_dir, pids) -> tuple[int, str] | None:
    """(pid, key) of a worker holding an aware-training claim, if any."""
    for key in AWARE:
        try:
            info = json.loads((claims_dir / f"{key}.claim").read_text())
        except (FileNotFoundError, ValueError):
            continue
        if info.get("pid") in pids:
            return info["pid"], key
    return None


@pytest.mark.slow
def test_two_workers_match_one_process_and_take_over_a_killed_one(tmp_path):
    t0 = time.perf_counter()
    one = subprocess.run([sys.executable, *ARGS, f"--results_dir={tmp_path / 'one'}"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    t_one = time.perf_counter() - t0

    two = tmp_path / "two"
    workers = {p.pid: p for p in (_start(two), _start(two))}
    try:
        held = None
        deadline = time.time() + 900
        while held is None and time.time() < deadline:
            if any(p.poll() is not None for p in workers.values()):
                break
            held = _holder(two / "claims", set(workers))
            time.sleep(0.02)
        assert held is not None, "no worker was seen running an aware configuration"
        pid, key = held
        os.kill(pid, signal.SIGKILL)
        killed = workers.pop(pid)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        killed.stdout.close()
        (survivor,) = workers.values()
        out, _ = survivor.communicate(timeout=900)
    finally:
        for p in workers.values():
            p.kill()
    assert survivor.returncode == 0, out[-3000:]
    assert f"{key}: taking over from" in out, out[-3000:]
    assert not list((two / "claims").glob("*.claim"))  # every claim released

    # the same records (every metric, the validation histories) and the same tables
    ref = json.loads((tmp_path / "one" / "results.json").read_text())["records"]
    got = json.loads((two / "results.json").read_text())["records"]
    assert set(got) == set(ref) == {"baseline", "zero_flow", "post_prune_10", "post_prune_20",
                                    *AWARE}
    assert got == ref
    assert (two / "tables.md").read_text() == (tmp_path / "one" / "tables.md").read_text()
    print(f"1 process: {t_one:.0f} s")


def test_a_batch_that_does_not_split_over_the_devices_is_refused(tmp_path):
    env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    base = [sys.executable, "-m", "experiments.run_study", "--preset=tiny"]
    proc = subprocess.run([*base, "--devices=2", f"--results_dir={tmp_path / 'a'}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert ("devices (--devices) is 2, but the training batch of 1 frame(s) does not split "
            "over 2 devices: use a device count that divides 1 (e.g. --devices=1)"
            in proc.stderr), proc.stderr[-2000:]
    assert not (tmp_path / "a" / "records").exists() or not any(
        (tmp_path / "a" / "records").iterdir())  # refused before any work
    for bad, says in (("3", "devices (--devices) is 3, but this process has 2 device(s)"),
                      ("two", "--devices must be 'all' or a positive whole number")):
        proc = subprocess.run([*base, f"--devices={bad}", f"--results_dir={tmp_path / bad}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]


def test_all_devices_means_as_many_as_the_batch_splits_over(tmp_path):
    """The default: a batch of 1 on a 2-device process trains on 1 device and says why."""
    env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    script = ("import sys\n"
              "from deepliflow_jax.study.config import make_config\n"
              "from deepliflow_jax.study.runner import Study\n"
              "study = Study(make_config('tiny'), sys.argv[1])\n"
              "study.prepare()\n"
              "print('devices', study.devices, study.trainer.mesh.devices.size)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "devices 1 1" in proc.stdout
    assert "data parallel over 1 of 2 devices (the training batch of 1 splits no further" in (
        proc.stdout)
