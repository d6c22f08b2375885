"""Run heavy one-off passes in a process of their own, so that the driver's memory stays flat.

Decoding thousands of photos and running a model over them leaves glibc's malloc holding native
memory in the process that did it (about 50 KB per validation photo, see RESULTS "Cost at size");
``tracemalloc`` sees none of it and the process never gives it back. :func:`isolated` gives a
runner that sends such a pass to one Ray actor on this node, whose process ends with the block,
and returns what the pass returned; without a running Ray it runs the pass here.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

__all__ = ["isolated", "here", "Runner"]

T = TypeVar("T")
Runner = Callable[..., Any]  # runner(fn, *args, **kwargs) -> fn(*args, **kwargs)


def here(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The runner that runs ``fn`` in this process."""
    return fn(*args, **kwargs)


class _Pass:
    """The actor: runs what it is sent with the driver's torch thread count and the variables it
    was given (e.g. the driver's AWS ones), logging as the driver does."""

    def __init__(self, threads: int, env: Mapping[str, str]):
        import os

        import torch

        from animalclf.runtime.logs import setup_logging

        os.environ.update(env)
        torch.set_num_threads(threads)  # Ray caps a 0-CPU actor's threads at 1; the driver's pass had these
        setup_logging()

    def run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return fn(*args, **kwargs)


@contextlib.contextmanager
def isolated(env: Optional[Mapping[str, str]] = None) -> Iterator[Runner]:
    """A runner for the block: ``run(fn, *args, **kwargs)`` returns ``fn(*args, **kwargs)`` computed
    in one Ray actor of its own on this node (so local paths read the same), started at the first
    call with ``env`` in its environment (a Ray worker has the cluster's, not this shell's: pass
    what ``fn`` reads, e.g. :func:`animalclf.data.s3.client_env`; as the actor's arguments, like
    the keys inside the filesystem Ray Data's read tasks get, never in a runtime env the dashboard
    shows). It asks for no CPU (a search's trials may hold them all) and is killed when the
    block ends. A :class:`~animalclf.errors.UserError` ``fn`` raises comes back as itself, one
    line; other errors keep Ray's remote traceback. Without a running Ray, ``fn`` runs here."""
    import ray

    if not ray.is_initialized():
        yield here
        return
    from animalclf.errors import UserError

    started: list = []

    def actor():
        if not started:
            import torch
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = ray.get_runtime_context().get_node_id()
            started.append(ray.remote(num_cpus=0, max_restarts=0)(_Pass).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                    torch.get_num_threads(), dict(env or {})))
        return started[0]

    def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return ray.get(actor().run.remote(fn, args, kwargs))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):
                raise e.cause from None
            raise

    try:
        yield run
    finally:
        for a in started:
            with contextlib.suppress(Exception):  # Ray already down (Ctrl-C): the actor went with it
                ray.kill(a)
