"""One scheduler for every GPU job: processes that do their own work on a GPU (the Chat tab's model worker,
`tunelab chat`/`api`, `tunelab export`) hold it through the runs folder's job queue, like training does.

GPUs cannot exist on this machine: the queue gets a mocked device list, and the chat worker (a real `tunelab api`
process started by a real studio-like process) finds the same GPU through a fake nvidia-smi on its PATH. Everything
else is real: the SQLite queue, the worker, signals, and the stand-in trainer processes of test_jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.services.test_jobs import launcher, new_run, wait_for
from tunelab.services.gpus import Gpu, detect_gpus
from tunelab.services.holds import hold_gpus
from tunelab.services.jobs import JobQueue
from tunelab.services.runner import pid_running


def fake_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Gpu]:
    """Put a fake nvidia-smi listing one GPU first on PATH (mocked: no GPU exists here); returns what it lists."""
    folder = tmp_path / "bin"
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0, Mock GPU, 81559\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return detect_gpus()


def test_a_hold_waits_for_its_gpu_keeps_it_and_frees_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unchanged")  # restored after the test: hold_gpus sets it
    gpus = [Gpu("0", "mock")]  # mocked: no GPU exists on this machine
    queue = JobQueue(tmp_path, gpus=gpus, launcher=launcher(120))
    training = new_run(tmp_path, "training")
    queue.submit(training)
    queue.poll()
    wait_for(lambda: training.status().get("state") == "running")  # its SIGTERM handler is set: Stop ends it aborted
    reasons: list[str] = []
    inside = threading.Event()
    leave = threading.Event()

    def export() -> list[str]:
        with hold_gpus("tunelab export of x", tmp_path, on_wait=reasons.append, gpus=gpus) as devices:
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
            inside.set()
            leave.wait(60)
        return devices

    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(export)
        wait_for(lambda: bool(reasons))
        assert reasons == ["waiting for 1 free GPU: GPU 0 is held by run training"]
        assert not inside.is_set()
        queue.stop(training.path)  # the training ends: the hold gets GPU 0
        assert inside.wait(60)
        second = new_run(tmp_path, "second")
        queue.submit(second)
        queue.poll()
        assert queue.job_for(second.path).state == "queued"
        holder = f"tunelab export of x (pid {os.getpid()})"
        assert second.status()["message"] == f"waiting for 1 free GPU: GPU 0 is held by {holder}"
        leave.set()
        assert holding.result(60) == ["0"]
    wait_for(lambda: queue.job_for(second.path).state == "running", poll=queue.poll)
    assert [(j.kind, j.result) for j in queue.jobs()][:2] == [(None, "aborted"), ("hold", "released")]
    with hold_gpus("nothing to share", tmp_path, gpus=[]) as devices:
        assert devices == []  # no GPU: no hold, the block runs at once
    assert len(queue.jobs()) == 3
    queue.stop(second.path)
    wait_for(lambda: queue.job_for(second.path).state == "finished", poll=queue.poll)


def test_a_holder_that_dies_frees_its_gpu(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path, gpus=[Gpu("0", "mock")])  # mocked: no GPU exists on this machine
    holder = subprocess.Popen(["sleep", "60"])
    hold = queue.hold("a process killed by the OOM killer", holder.pid)
    queue.poll()
    assert queue.job_for(hold.run_dir).devices == ["0"]
    holder.kill()
    holder.wait()
    queue.poll()
    assert queue.job_for(hold.run_dir).result == "released"


STUDIO = """
import sys, threading, time
from pathlib import Path
from tunelab.core.serving import EngineOptions
from tunelab.services.chat_worker import ChatService
service = ChatService(log_dir=sys.argv[1], runs_dir=Path(sys.argv[2]))
served = []
loading = threading.Thread(target=lambda: served.extend(service.load("demo", [], EngineOptions(engine="hf"))))
loading.start()
while loading.is_alive() and not service.waiting:
    time.sleep(0.1)
print("waiting:", service.waiting, flush=True)
loading.join()
print([m.id for m in served], service.worker.process.pid, service.description, flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # a real `tunelab api` worker loading the demo model: ~35 s on the loaded 2-core machine
def test_the_chat_worker_holds_its_gpu_and_stops_with_the_studio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_model_dir: Path
) -> None:
    gpus = fake_gpu(tmp_path, monkeypatch)
    assert [g.index for g in gpus] == ["0"]
    queue = JobQueue(tmp_path / "runs", gpus=gpus, launcher=launcher(120))
    training = new_run(queue.runs_dir, "training")
    queue.submit(training)
    queue.poll()
    studio = subprocess.Popen([sys.executable, "-c", STUDIO, str(tmp_path / "chat"), str(queue.runs_dir)],
                              stdout=subprocess.PIPE, text=True)  # a studio process whose Chat tab loads demo
    try:
        assert studio.stdout.readline().strip() == "waiting: waiting for 1 free GPU: GPU 0 is held by run training"
        assert [j.state for j in queue.jobs() if j.kind == "hold"] == ["queued"]
        queue.stop(training.path)  # the worker's own scheduling hands it GPU 0 once the training is gone
        names, pid, description = studio.stdout.readline().strip().split(" ", 2)
        worker = int(pid)
        assert names == "['demo']" and description == f"worker pid {worker} on GPU 0"
        [hold] = [j for j in queue.jobs() if j.kind == "hold"]
        assert (hold.state, hold.devices, hold.pgid) == ("running", ["0"], worker)

        second = new_run(queue.runs_dir, "second")  # a training started now waits for the chat model's GPU
        queue.submit(second)
        queue.poll()
        assert queue.job_for(second.path).state == "queued"
        assert second.status()["message"] == f"waiting for 1 free GPU: GPU 0 is held by the Chat tab's model demo (pid {worker})"
    finally:
        os.kill(studio.pid, signal.SIGKILL)  # no atexit, no unload: only the worker's own watch of its parent can help
        studio.wait()
        studio.stdout.close()
    wait_for(lambda: not pid_running(worker), timeout=30)  # the worker shut down, and freed its GPU on the way out
    wait_for(lambda: queue.job_for(second.path).state == "running", poll=queue.poll)
    assert queue.job_for(hold.run_dir).result == "released"
    wait_for(lambda: (second.path / "env.txt").is_file())
    assert (second.path / "env.txt").read_text() == "0"
    queue.stop(second.path)
    wait_for(lambda: queue.job_for(second.path).state == "finished", poll=queue.poll)


def test_a_hold_whose_row_went_says_it_left_the_queue(tmp_path: Path) -> None:
    import os
    import sqlite3

    queue = JobQueue(tmp_path, gpus=[Gpu("0", "mock")])  # mocked: no GPU exists on this machine
    job = queue.hold("chat", os.getpid())
    with sqlite3.connect(queue.db_path) as db:  # its row removed behind the waiter's back
        db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
    with pytest.raises(ValueError, match=f"job {job.id} left the queue"):
        queue.wait_started(job, interval_s=0.01)
