"""Extraction over several processes with torchrun: which rank this is, its device, barriers, and how a
stage whose `cmd` never changes puts itself under torchrun (README, "Distributed extraction").

The launcher's arguments are not params (the number of processes must not change a store, nor re-run a
stage): env CLIPCACHE_TORCHRUN or `torchrun:` in the untracked local.yaml, e.g. "--nproc_per_node 2".
"""

import os
import shlex
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

# Rank 0 waits at the final barrier while the slowest rank finishes its shards: hours on a large dataset.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def owns(self, shard: int) -> bool:
        """Shard i belongs to rank i mod world size."""
        return shard % self.size == self.rank

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def current_world() -> World:
    """This process's place in the torchrun world (a single process when not under torchrun)."""
    world = World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if not 0 <= world.rank < world.size:
        raise ValueError(f"RANK={world.rank} is outside WORLD_SIZE={world.size}")
    return world


@contextmanager
def process_group(world: World, device: str):
    """The collective backend for the barriers: nccl on GPUs (one per local rank), gloo on CPU."""
    if world.size == 1:
        yield
        return
    if device == "cuda":
        torch.cuda.set_device(world.local_rank)
    else:   # each of this machine's ranks takes its share of the cores (an inherited OMP_NUM_THREADS would not)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // _env_int("LOCAL_WORLD_SIZE", world.size)))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def launcher_args(root: Path) -> list[str]:
    """torchrun's arguments from env CLIPCACHE_TORCHRUN > local.yaml `torchrun:`; [] = one process."""
    value = os.environ.get("CLIPCACHE_TORCHRUN")
    if value is None and (root / "local.yaml").is_file():
        value = (yaml.safe_load((root / "local.yaml").read_text()) or {}).get("torchrun")
    if value is None:
        return []
    if not isinstance(value, str):
        raise ValueError(f"`torchrun` in {root / 'local.yaml'} must be a string of torchrun arguments, e.g. "
                         f"'--nproc_per_node 2', not {value!r}")
    return shlex.split(value)


def relaunch_under_torchrun(script: str, root: Path) -> None:
    """Replace this process by `torchrun <launcher args> script <same args>` when a launcher is configured and
    this process is not already one of its workers; otherwise return and run here."""
    launch = launcher_args(root)
    if not launch or "LOCAL_RANK" in os.environ:
        return
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *launch, script, *sys.argv[1:]])
