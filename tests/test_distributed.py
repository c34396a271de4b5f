"""DDP on the gloo backend, 2 processes on CPU: the gradients equal one process on the combined batch;
FSDP2 (fully_shard) wraps the model and trains.

Tolerance 1e-4: the same fp32 sums taken in another order (each rank sums its half, then the halves
are averaged); the token-type table sums every token, where that order shows at ~2e-5."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bertfast


def config():
    return bertfast.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)


def data():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([10, 4, 7, 1])
    mask = (torch.arange(10)[None] < lengths[:, None]).long()
    return torch.randint(1, 64, (4, 10), generator=g) * mask, mask


def loss_of(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return (out * torch.linspace(-1, 1, 32, device=out.device)).sum() / 4  # a sum over the global batch of 4


def worker(rank, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(bertfast.BertModel(config(), add_pooling_layer=False))
    ids, mask = data()
    part = slice(2 * rank, 2 * rank + 2)
    (loss_of(model, ids[part], mask[part]) * 2).backward()  # DDP averages over the 2 ranks
    if rank == 0:  # a file, not a queue: tensors in a queue die with the process that sent them
        torch.save({n: p.grad.clone() for n, p in model.module.named_parameters() if p.grad is not None}, out_path)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_matches_single_process(tmp_path):
    torch.manual_seed(0)
    model = bertfast.BertModel(config(), add_pooling_layer=False)  # every parameter gets a gradient, as DDP needs
    ids, mask = data()
    loss_of(model, ids, mask).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    ctx = mp.get_context("spawn")
    port, out_path = free_port(), str(tmp_path / "grads.pt")
    procs = [ctx.Process(target=worker, args=(rank, port, out_path)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    got = torch.load(out_path)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def fsdp_worker(rank, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    model = bertfast.BertForMaskedLM(bertfast.BertConfig.tiny(vocab_size=64, max_position_embeddings=16))
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(rank))
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    if rank == 0:
        torch.save(losses, out_path)
    dist.destroy_process_group()


def test_fsdp2_fully_shard_wraps_and_trains(tmp_path):
    """FSDP2 (fully_shard per layer and on the whole MLM model, gloo, 2 processes): trains, loss falls."""
    ctx = mp.get_context("spawn")
    port, out_path = free_port(), str(tmp_path / "losses.pt")
    procs = [ctx.Process(target=fsdp_worker, args=(rank, port, out_path)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    losses = torch.load(out_path)
    assert all(map(lambda x: x == x, losses)) and losses[-1] < losses[0] - 1.0, losses


def nccl_worker(rank, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=2)
    torch.cuda.set_device(rank)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        bertfast.BertModel(config(), add_pooling_layer=False).cuda(rank), device_ids=[rank])
    ids, mask = data()
    part = slice(2 * rank, 2 * rank + 2)
    (loss_of(model, ids[part].cuda(rank), mask[part].cuda(rank)) * 2).backward()
    if rank == 0:
        torch.save({n: p.grad.cpu() for n, p in model.module.named_parameters() if p.grad is not None}, out_path)
    dist.destroy_process_group()


@pytest.mark.gpu
def test_ddp_nccl_matches_single_process(tmp_path):
    """Run by the GPU check; it needs two GPUs, which the one-GPU machine does not have."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"DDP over NCCL needs 2 GPUs; this machine has {torch.cuda.device_count()}")
    torch.manual_seed(0)
    model = bertfast.BertModel(config(), add_pooling_layer=False).cuda()
    ids, mask = data()
    loss_of(model, ids.cuda(), mask.cuda()).backward()
    want = {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
    ctx = mp.get_context("spawn")
    port, out_path = free_port(), str(tmp_path / "grads.pt")
    procs = [ctx.Process(target=nccl_worker, args=(rank, port, out_path)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    got = torch.load(out_path)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
