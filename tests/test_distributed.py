"""The process-group helpers: identity with one process, real collectives over gloo."""

from __future__ import annotations

import os

from backlm.distributed import (
    DistInfo,
    all_reduce_mean,
    broadcast_flags,
    gather_lists,
    init_distributed,
)


def test_one_process_passes_values_through(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed()
    assert info == DistInfo() and info.main
    assert all_reduce_mean([1.0, 3.0], info, "cpu") == [1.0, 3.0]
    assert gather_lists([{"a": 1}], info) == [{"a": 1}]
    assert broadcast_flags((True, False), info, "cpu") == (True, False)
    assert not DistInfo(rank=1, world=2).main


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    import json

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      BACKLM_DIST_BACKEND="gloo", MASTER_ADDR="127.0.0.1")
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    info = init_distributed()  # already initialised: only reads the environment
    result = {
        "info": [info.rank, info.world],
        "mean": all_reduce_mean([float(rank), 10.0 * rank], info, "cpu"),
        "gathered": gather_lists([f"r{rank}a", f"r{rank}b"], info),
        "flags": broadcast_flags((rank == 0, rank == 1), info, "cpu"),
    }
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def test_two_gloo_processes_agree(tmp_path):
    import json

    import torch.multiprocessing as mp

    out = str(tmp_path / "out")
    # fork: the workers need no fresh interpreter (and skip re-importing torch)
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True,
                       start_method="fork")
    results = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    for rank, res in enumerate(results):
        assert res["info"] == [rank, 2]
        assert res["mean"] == [0.5, 5.0]
        assert res["gathered"] == ["r0a", "r0b", "r1a", "r1b"]
        assert res["flags"] == [True, False]  # rank 0's decision everywhere
