"""More than one process: Algorithm 1 on torch.distributed, exact over the global batch.

    torchrun --nproc_per_node N train.py --method ours    # N GPUs of one machine (gloo on CPUs)

Each of the W processes (ranks) takes its b = B / W images of the same global batch, drawn by
the same generator on every rank, so that a run's batches and crops do not depend on W. The
codes z and the channel's log P(T|X) of every rank are gathered *with their gradient*; each rank
sums its own b K rows of (2) against all B K columns (objective.exact_mi's rows), so the ranks'
shares add up to the MI of one process, and each weight's gradient is the sum over ranks.
In one process (python train.py) there is no process group, and every function here returns
its input, or does nothing.
"""
import os

import torch
import torch.distributed as dist


def start(device):
    """This process's device: under torchrun, its own GPU (LOCAL_RANK) where device is "auto" or
    "cuda" and CUDA is available, with a process group (NCCL on CUDA, gloo on CPUs)."""
    cuda = device != "cpu" and torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return torch.device("cuda" if cuda else "cpu")
    if not cuda:
        dist.init_process_group("gloo")
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    return device


def finish():
    if dist.is_initialized():
        dist.destroy_process_group()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def mine(B):
    """The slice of this rank's images in a global batch of B."""
    b = B // world_size()
    return slice(rank() * b, (rank() + 1) * b)


class _Gather(torch.autograd.Function):
    """Every rank's x (b, ...) concatenated in rank order: (B, ...).

    Each rank's loss depends on every rank's x through the gathered tensor, so the gradient of
    the sum of the ranks' losses with respect to this rank's x is the sum over ranks of what
    each sends back to this rank's slice: an all-reduce, then the slice.
    """

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # summed over ranks
        return grad[mine(len(grad))]


def gather(x):
    """Every rank's x along the batch, differentiable; x itself in one process."""
    return _Gather.apply(x) if world_size() > 1 else x


def share_of_mean(f, x):
    """This process's share of f's mean over the rows of a gathered batch x: f of its own rows,
    divided by the number of processes, so the shares add up to the batch's mean; f(x) in one
    process."""
    if world_size() == 1:
        return f(x)
    return f(x[mine(len(x))]) / world_size()


def sum_gradients(module):
    """Each weight's gradient summed over ranks: each rank holds the part that flows through its
    own images (the gather's backward gave it the whole gradient of their codes)."""
    if world_size() > 1:
        for w in module.parameters():
            dist.all_reduce(w.grad)


def total(values):
    """{name: the sum over ranks} of each rank's share {name: scalar tensor}; as is in one
    process."""
    if world_size() == 1:
        return values
    shares = torch.stack(list(values.values()))  # (n,)
    dist.all_reduce(shares)
    return dict(zip(values, shares))


def any_rank(flags, device):
    """[flag is true on some rank for each of flags]: Ctrl-C and the clock reach the processes
    at different steps, and they must all stop at the same one."""
    if world_size() == 1:
        return flags
    flags = torch.tensor(flags, dtype=torch.float32, device=device)  # (n,)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [bool(flag) for flag in flags.tolist()]
