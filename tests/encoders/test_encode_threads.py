"""Ranks started by a plain ``srun`` (no torchrun) share the node's cores, not each all."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from rasterdata import make_scene

from embcat.encoders.job import threads_per_rank

SCRIPT = """
import sys, torch
from embcat.encoders.job import run_encode
run_encode([sys.argv[1]], sys.argv[2], "mosaiks", {"num_features": 8, "chip_size": 32},
           workers=0, progress=False, device="cpu", dist_timeout_s=120)
print("threads", torch.get_num_threads())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_srun_ranks_on_one_node_take_half_the_cores_each(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "s.tif", width=64, height=64)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_"))}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    procs = []
    for rank in range(2):
        rank_env = {
            **env, "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
            "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT, str(scene), str(tmp_path / "run")],
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    cores = len(os.sched_getaffinity(0))
    for out, _ in outs:
        assert f"threads {max(1, cores // 2)}" in out


def test_cpus_per_task_caps_the_threads() -> None:
    env = {"SLURM_CPUS_PER_TASK": "4", "SLURM_NTASKS_PER_NODE": "8"}
    assert threads_per_rank(env, available=64, node_cpus=64) == 4


def test_a_rank_bound_to_its_own_cores_uses_them_all() -> None:
    env = {"SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "1"}
    assert threads_per_rank(env, available=16, node_cpus=64) == 16


def test_unbound_ranks_share_the_node() -> None:
    assert threads_per_rank({"SLURM_TASKS_PER_NODE": "4(x2)"}, available=64, node_cpus=64) == 16
    assert threads_per_rank({"LOCAL_WORLD_SIZE": "3"}, available=8, node_cpus=8) == 2


def test_omp_num_threads_set_by_the_user_is_kept() -> None:
    assert threads_per_rank({"OMP_NUM_THREADS": "7"}, available=64, node_cpus=64) is None


def test_a_single_process_keeps_torchs_default() -> None:
    assert threads_per_rank({}, available=8, node_cpus=8) is None
