"""The SQLite job queue: one job at a time on CPU, devices assigned and waited for with GPUs, state that
survives a new scheduler (a restarted studio), and Stop ending the whole process group.

The jobs here run a small stand-in trainer (a real subprocess in its own process group that follows the
run-directory contract) so scheduling is tested in seconds; the real trainer is driven by the browser test.
GPUs cannot exist on this machine: the GPU tests give the queue a mocked device list (and a fake nvidia-smi).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tunelab.core.config import RunConfig
from tunelab.core.rundir import RunDir, create_run
from tunelab.services.gpus import Gpu, detect_gpus
from tunelab.services.jobs import JobQueue
from tunelab.services.runner import group_alive, group_members

STAND_IN = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from tunelab.core.rundir import RunDir
    run = RunDir(sys.argv[1])
    (run.path / "env.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    # a worker in the same process group, like a dataloader worker: Stop must end it too
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (run.path / "worker.pid").write_text(str(worker.pid))
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    run.set_status("running")
    end = time.time() + float(sys.argv[2])
    while time.time() < end and not stop:
        time.sleep(0.05)
    worker.terminate(); worker.wait()
    if sys.argv[3] == "vanish":
        os._exit(3)
    run.set_status("aborted" if stop else "succeeded", message="stand-in")
""")


def launcher(seconds: float, mode: str = "report"):
    """A job launcher that starts the stand-in trainer for ``seconds`` (own session, like runner.spawn)."""

    def launch(run: RunDir, env: dict[str, str]) -> subprocess.Popen:
        with open(run.log_file, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", STAND_IN, str(run.path), str(seconds), mode], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **env},
            )
        run.set_status("queued", pgid=process.pid)
        return process

    return launch


def new_run(runs: Path, name: str) -> RunDir:
    return create_run(RunConfig(output_dir=str(runs / name)))


def wait_for(predicate, timeout: float = 30.0, poll=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if poll:
            poll()
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def states(queue: JobQueue) -> dict[str, str]:
    return {Path(job.run_dir).name: job.state for job in queue.jobs()}


def test_cpu_runs_one_job_at_a_time_in_order(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path, launcher=launcher(1.5))
    a, b = new_run(tmp_path, "a"), new_run(tmp_path, "b")
    queue.submit(a)
    queue.submit(b)
    started = queue.poll()
    assert [Path(j.run_dir).name for j in started] == ["a"]
    assert states(queue) == {"a": "running", "b": "queued"}
    assert b.status()["state"] == "queued"
    wait_for(lambda: states(queue)["b"] == "running", poll=queue.poll)
    assert a.status()["state"] == "succeeded"
    assert (a.path / "env.txt").read_text() == "<unset>"  # no GPUs: nothing narrowed
    wait_for(lambda: states(queue)["b"] == "finished", poll=queue.poll)
    assert [j.result for j in queue.jobs()] == ["succeeded", "succeeded"]


def test_gpu_jobs_get_their_devices_and_wait_for_busy_ones(tmp_path: Path) -> None:
    gpus = [Gpu("0", "mock A"), Gpu("1", "mock B")]  # mocked: no GPU exists on this machine
    queue = JobQueue(tmp_path, gpus=gpus, launcher=launcher(2.0))
    wants_1 = new_run(tmp_path, "wants-1")
    any_one = new_run(tmp_path, "any-one")
    needs_two = new_run(tmp_path, "needs-two")
    queue.submit(wants_1, devices=["1"])
    queue.submit(needs_two, gpu_count=2)
    queue.submit(any_one, gpu_count=1)
    queue.poll()
    assert states(queue) == {"wants-1": "running", "needs-two": "queued", "any-one": "running"}
    wait_for(lambda: (wants_1.path / "env.txt").is_file() and (any_one.path / "env.txt").is_file())
    assert (wants_1.path / "env.txt").read_text() == "1"
    assert (any_one.path / "env.txt").read_text() == "0"
    assert any_one.status()["devices"] == ["0"]
    wait_for(lambda: states(queue)["needs-two"] == "running", poll=queue.poll)
    wait_for(lambda: (needs_two.path / "env.txt").is_file())
    assert (needs_two.path / "env.txt").read_text() == "0,1"
    with pytest.raises(ValueError, match="devices: 7 not found; valid: 0, 1"):
        queue.submit(new_run(tmp_path, "bad"), devices=["7"])
    with pytest.raises(ValueError, match="already queued or running"):
        queue.submit(needs_two)
    queue.stop(needs_two.path)
    wait_for(lambda: states(queue)["needs-two"] == "finished", poll=queue.poll)


def test_a_new_scheduler_reattaches_and_stop_ends_the_whole_group(tmp_path: Path) -> None:
    first = JobQueue(tmp_path, launcher=launcher(120))
    run = new_run(tmp_path, "long")
    first.submit(run)
    first.poll()
    wait_for(lambda: run.status().get("state") == "running" and (run.path / "worker.pid").is_file())
    pgid = run.status()["pgid"]
    worker = int((run.path / "worker.pid").read_text())
    assert worker in group_members(pgid)
    first.close()
    del first  # the studio that started it is gone; the job is not

    second = JobQueue(tmp_path, launcher=launcher(120))
    second.poll()
    [job] = second.jobs()
    assert job.state == "running" and job.pgid == pgid and group_alive(pgid)
    assert second.stop(run.path) == "stopping"
    wait_for(lambda: second.jobs()[0].state == "finished", poll=second.poll)
    assert second.jobs()[0].result == "aborted"
    assert run.status()["state"] == "aborted"
    assert not group_alive(pgid) and not group_members(pgid)
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split(")")[1][:3]


def test_stopping_a_queued_job_removes_it(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path, launcher=launcher(30))
    running, waiting = new_run(tmp_path, "running"), new_run(tmp_path, "waiting")
    queue.submit(running)
    queue.submit(waiting)
    queue.poll()
    assert queue.stop(waiting.path) == "dequeued"
    assert waiting.status()["state"] == "aborted"
    assert queue.stop(waiting.path) == "idle"
    with pytest.raises(ValueError, match="stop it first"):
        queue.forget(running.path)
    queue.stop(running.path)
    wait_for(lambda: states(queue)["running"] == "finished", poll=queue.poll)
    queue.forget(running.path)
    assert "running" not in states(queue)


def test_a_trainer_that_vanishes_is_marked_failed(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path, launcher=launcher(0.2, mode="vanish"))
    run = new_run(tmp_path, "crash")
    queue.submit(run)
    queue.poll()
    wait_for(lambda: states(queue)["crash"] == "finished", poll=queue.poll)
    assert queue.jobs()[0].result == "failed"
    assert run.status()["state"] == "failed" and "without reporting" in run.status()["error"]


def test_detect_gpus_reads_nvidia_smi_and_cuda_visible_devices(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"  # mocked: prints what nvidia-smi prints for two GPUs
    fake.write_text("#!/bin/sh\nprintf '0, NVIDIA H100 80GB HBM3, 81559\\n1, NVIDIA H100 80GB HBM3, 81559\\n'\n")
    fake.chmod(0o755)
    both = detect_gpus({}, str(fake))
    assert [g.index for g in both] == ["0", "1"] and both[0].memory_mib == 81559
    assert both[1].label == "GPU 1: NVIDIA H100 80GB HBM3 (80 GiB)"
    assert [g.index for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "1"}, str(fake))] == ["1"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, str(fake)) == []
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}, str(fake)) == []
    assert detect_gpus({}, None) == []
    assert [g.index for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, None)] == ["2", "3"]


def test_a_multi_process_run_gets_one_gpu_per_process(tmp_path: Path) -> None:
    gpus = [Gpu("0", "mock A"), Gpu("1", "mock B"), Gpu("2", "mock C")]  # mocked: no GPU exists on this machine
    queue = JobQueue(tmp_path, gpus=gpus, launcher=launcher(1.0))
    ddp = create_run(RunConfig(output_dir=str(tmp_path / "ddp"), strategy="ddp", nproc_per_node=2))
    queue.submit(ddp)
    queue.poll()
    wait_for(lambda: (ddp.path / "env.txt").is_file())
    assert (ddp.path / "env.txt").read_text() == "0,1"
    with pytest.raises(ValueError, match=r"devices: 2 GPU\(s\) picked for 1 process\(es\); set strategy"):
        queue.check_request(["1", "2"], processes=1)
    with pytest.raises(ValueError, match=r"devices: 1 GPU\(s\) picked for 2 process\(es\)"):
        queue.submit(create_run(RunConfig(output_dir=str(tmp_path / "b"), strategy="ddp", nproc_per_node=2)), devices=["2"])
    wait_for(lambda: states(queue)["ddp"] == "finished", poll=queue.poll)


def test_eval_and_export_jobs_wait_for_the_gpu_a_training_holds(tmp_path: Path) -> None:
    from tunelab.core.jobs import create_job

    gpus = [Gpu("0", "mock A")]  # mocked: no GPU exists on this machine
    queue = JobQueue(tmp_path, gpus=gpus, launcher=launcher(2.0))
    training = new_run(tmp_path, "training")
    queue.submit(training)
    queue.poll()
    export = create_job("export", {"run": "/nonexistent"}, tmp_path / "exports", "x")  # fails fast once it runs
    queue.submit(export, kind="export")
    queue.poll()
    assert states(queue)[export.path.name] == "queued", "the export waits: GPU 0 is the training's"
    wait_for(lambda: states(queue)[export.path.name] != "queued", poll=queue.poll)
    assert training.status()["state"] == "succeeded"
    job = queue.job_for(export.path)
    assert job.kind == "export" and job.devices == ["0"] and job.started_at >= queue.job_for(training.path).finished_at
    wait_for(lambda: states(queue)[export.path.name] == "finished", timeout=120, poll=queue.poll)
    assert export.log_file.is_file(), "the export module ran (its own log), started by the queue"
