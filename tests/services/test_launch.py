"""The launcher: the argv and the files it generates for one process, one host and several hosts (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tunelab.core.config import ConfigError, RunConfig, load_config
from tunelab.core.rundir import create_run
from tunelab.services.launch import train_argv, write_launch_files


def test_one_process_is_plain_python(tmp_path: Path) -> None:
    run = create_run(RunConfig(output_dir=str(tmp_path / "r")))
    assert train_argv(run) == [sys.executable, "-m", "tunelab.engine.train", str(run.path)]


def test_one_host_uses_a_standalone_torchrun_with_per_rank_logs(tmp_path: Path) -> None:
    config = RunConfig(output_dir=str(tmp_path / "r"), strategy="ddp", nproc_per_node=4)
    run = create_run(config)
    argv = train_argv(run)
    assert argv[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert argv[argv.index("--nproc-per-node") + 1] == "4"
    assert argv[argv.index("--log-dir") + 1] == str(run.logs_dir / "node0") and "--tee" in argv
    assert argv[-3:] == ["-m", "tunelab.engine.train", str(run.path)]
    write_launch_files(run, config)
    assert "torch.distributed.run --standalone --nproc-per-node 4" in run.command_file.read_text()


def test_several_hosts_rendezvous_on_node_0_and_workers_keep_their_own_folder(tmp_path: Path) -> None:
    common = dict(strategy="fsdp2", nproc_per_node=8, nnodes=2, master_addr="10.0.0.1", master_port=29600)
    node1 = create_run(RunConfig(output_dir=str(tmp_path / "r"), node_rank=1, **common))
    assert node1.path.name == "r-node1"
    argv = train_argv(node1)
    assert "--standalone" not in argv
    for flag, value in {"--nnodes": "2", "--node-rank": "1", "--master-addr": "10.0.0.1", "--master-port": "29600"}.items():
        assert argv[argv.index(flag) + 1] == value


def test_strategy_files_are_generated_or_copied(tmp_path: Path) -> None:
    fsdp = RunConfig(output_dir=str(tmp_path / "f"), strategy="fsdp2", nproc_per_node=2, offload=True)
    run = create_run(fsdp)
    [written] = write_launch_files(run, fsdp)
    settings = json.loads(written.read_text())
    assert settings["version"] == 2 and settings["cpu_offload"] is True and settings["state_dict_type"] == "FULL_STATE_DICT"
    own = tmp_path / "ds.json"
    own.write_text('{"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}')
    ds = RunConfig(output_dir=str(tmp_path / "d"), strategy="deepspeed_zero3", nproc_per_node=2, deepspeed_config=str(own))
    run = create_run(ds)
    [written] = write_launch_files(run, ds)
    assert json.loads(written.read_text()) == json.loads(own.read_text())
    zero2 = RunConfig(output_dir=str(tmp_path / "z"), strategy="deepspeed_zero2", nproc_per_node=2, offload=True)
    [written] = write_launch_files(create_run(zero2), zero2)
    zero = json.loads(written.read_text())["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu" and "offload_param" not in zero


@pytest.mark.parametrize(("overrides", "message"), [
    (["nproc_per_node=2"], "nproc_per_node: nproc_per_node 2 x nnodes 1 = 2 processes need a strategy (strategy 'none' runs one process); valid strategies: ddp, fsdp2"),
    (["strategy=ddp", "nnodes=2", "node_rank=2"], "node_rank: 2 is not below nnodes=2"),
    (["strategy=ddp", "offload=true"], "offload: needs strategy fsdp2, deepspeed_zero2 or deepspeed_zero3, not 'ddp'"),
    (["strategy=ddp", "nproc_per_node=2", "booster=fast"], "booster: 'fast' is single-process"),
    (["strategy=fsdp2", "method=qlora"], "valid choices for qlora: none, ddp"),
    (["strategy=fsdp2", "fsdp_config=/nonexistent.json"], "fsdp_config: '/nonexistent.json' is not a file"),
    (["strategy=ddp", "deepspeed_config=x.json"], "deepspeed_config: used only with strategy deepspeed_zero2"),
])
def test_inconsistent_setups_are_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)
