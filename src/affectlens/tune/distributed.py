"""``tune`` on several processes: accelerate's engine (DDP, or FSDP when configured), not a home-made one.

``accelerate launch --num_processes N -m affectlens tune ...`` (or ``torchrun``)
starts N copies of the command. Each builds the same base, the same seeded
LoRA initialisation and the same seeded example order; :func:`make_accelerator`
then joins them into one ``accelerate.Accelerator`` (DDP on GPUs with NCCL, on
CPUs with gloo; FSDP when accelerate's config or ``--use_fsdp`` asks for it),
and the training loop (:func:`affectlens.training.train`) takes its share of
every global batch by rank. The main process alone writes the run dir; the
others wait at a barrier, so the result is written once.

Without a launcher (``WORLD_SIZE`` unset or 1) nothing here runs and ``tune``
is the plain single-process loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import AffectlensError


def _env_int(keys: tuple[str, ...], default: int) -> int:
    """The first of ``keys`` a launcher set to a number (torchrun / accelerate, then MPI spellings)."""
    for key in keys:
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return default


def world_size_from_env() -> int:
    """Processes in this job as the launcher (torchrun / accelerate launch / MPI) announced them."""
    return _env_int(("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"), 1)


def rank_from_env() -> int:
    """This process's global rank as the launcher announced it (0 without a launcher)."""
    return _env_int(("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"), 0)


def launched() -> bool:
    """Whether this process is one of several started by a launcher."""
    return world_size_from_env() > 1


def make_accelerator(device: str | None = None) -> Any:
    """The job's ``Accelerator`` when launched as several processes, else None.

    The device is accelerate's: each rank's GPU, or the CPU (gloo) where there is
    no GPU, where ``ACCELERATE_USE_CPU`` is set, or where ``--device cpu`` asks.
    Gradient accumulation is done by the loop itself (it normalises by the global
    label-token count), so the Accelerator is made without it.
    """
    if not launched():
        return None
    import torch
    from accelerate import Accelerator

    cpu = str(device or "auto").lower() == "cpu" or not torch.cuda.is_available()
    try:
        return Accelerator(cpu=cpu)
    except ValueError as e:  # an incomplete launch environment (WORLD_SIZE set by hand, no MASTER_ADDR)
        first = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
        raise AffectlensError(f"cannot join the {world_size_from_env()} processes WORLD_SIZE announces "
                              f"({first}); start them with accelerate launch or torchrun") from None


@dataclass(frozen=True)
class Layout:
    """How one optimizer step's examples are spread: per process × processes × accumulation."""

    per_process: int
    processes: int = 1
    accumulation: int = 1
    rank: int = 0
    engine: str = "none"  # accelerate's distributed type: MULTI_GPU / MULTI_CPU (DDP), FSDP, ...

    @property
    def effective(self) -> int:
        """Examples per optimizer step over the whole job."""
        return self.per_process * self.processes * self.accumulation

    def shard(self, batch: list[int]) -> list[list[int]]:
        """This rank's micro-batches of one global ``batch`` (deterministic: rank-major within each
        accumulation round), so every process knows every other's share without talking."""
        b, w = self.per_process, self.processes
        return [batch[(m * w + self.rank) * b:(m * w + self.rank + 1) * b] for m in range(self.accumulation)]

    def describe(self) -> str:
        return (f"effective batch {self.effective} = {self.per_process} per process x {self.processes} "
                f"process(es) x {self.accumulation} accumulation step(s)"
                + ("" if self.engine == "none" else f" ({self.engine})"))

    def to_dict(self) -> dict[str, Any]:
        return {"per_process_batch": self.per_process, "processes": self.processes,
                "grad_accum": self.accumulation, "effective_batch": self.effective, "engine": self.engine}


def layout(accelerator: Any, batch_size: int, grad_accum: int) -> Layout:
    if accelerator is None:
        return Layout(batch_size, 1, grad_accum, 0)
    return Layout(batch_size, accelerator.num_processes, grad_accum, accelerator.process_index,
                  str(accelerator.distributed_type.value))


def prepare(accelerator: Any, model: Any, make_optimizer: Callable[[Any], Any]) -> tuple[Any, Any]:
    """The model wrapped for the job (DDP/FSDP, on its device) and its optimizer.

    FSDP2 needs model and optimizer in one ``prepare`` call; DDP and FSDP1 want
    the optimizer built over the already wrapped (for FSDP1: flattened) parameters.
    """
    if getattr(accelerator, "is_fsdp2", False):
        wrapped, optim = accelerator.prepare(model, make_optimizer(model))
        return wrapped, optim
    model = accelerator.prepare(model)
    return model, accelerator.prepare(make_optimizer(model))


def finish(accelerator: Any, model: Any) -> tuple[Any, dict[str, Any] | None]:
    """After training: the plain (unwrapped) model, and under FSDP the gathered full state dict
    (a collective every rank must join; only the main process gets the tensors)."""
    accelerator.wait_for_everyone()
    state = None
    if accelerator.distributed_type.value == "FSDP":
        state = accelerator.get_state_dict(model)
    return accelerator.unwrap_model(model), state


__all__ = ["Layout", "finish", "launched", "layout", "make_accelerator", "prepare", "rank_from_env",
           "world_size_from_env"]
