"""2-process CPU DDP (gloo) with a patched tiny model: same losses as one process on the whole batch."""
import gc
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("transformers")

IMG, ANS, STEPS = 5, 6, 3


def _data():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(10, 90, (4, 20), generator=g)
    ids[:, 2:7] = IMG
    ids[:, 13] = ANS
    return ids


def _model():
    from test_hf_helpers import model_pair

    from mma_kernels import apply_mma

    _, model = model_pair("llama")
    return apply_mma(model, image_token_id=IMG, answer_token_id=ANS)


def _train(model, ids, reduce=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        val = loss.detach().clone()
        if reduce is not None:
            reduce(val)
        losses.append(val.item())
    return losses


def _worker(rank, world, port, out_path, strategies):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ids = _data().chunk(world)[rank]  # equal token counts per rank: mean of means == global mean

        def reduce(t):
            dist.all_reduce(t)
            t /= world

        results = {}
        for strategy in strategies:
            model = _model()
            if strategy == "ddp":
                model = torch.nn.parallel.DistributedDataParallel(model)
            else:  # FSDP2
                from torch.distributed.fsdp import fully_shard

                for layer in model.model.layers:
                    fully_shard(layer)
                fully_shard(model)
            results[strategy] = _train(model, ids, reduce)
            # Deterministic teardown. DDP's reducer and FSDP2's hooks hold the gloo process group
            # (its worker threads, finished work holding tensors) and sit in reference cycles: left
            # to the cyclic GC they may be freed during interpreter shutdown, after
            # destroy_process_group, where C++ threads and Python objects are torn down in no
            # particular order. Free them now, while the interpreter is fully alive.
            del model
            gc.collect()
        if rank == 0:
            torch.save(results, out_path)
        # No rank starts tearing down while the other still communicates: rank 0 hosts the TCP
        # store, and a peer that exits first closes its gloo pairs under the other's feet.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_and_fsdp2_match_single_process(tmp_path):
    from torch.distributed import fsdp

    strategies = ["ddp"] + (["fsdp2"] if hasattr(fsdp, "fully_shard") else [])  # FSDP2: torch >= 2.6
    out = tmp_path / "losses.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out), strategies), nprocs=2, join=True)
    results = torch.load(out)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _train(_model(), _data())
    finally:
        torch.set_num_threads(n)
    assert single[-1] < single[0]
    assert set(results) == set(strategies)
    for strategy, losses in results.items():
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{strategy}: {m}")
