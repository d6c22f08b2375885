"""Heavy passes in a process of their own (animalclf.runtime.isolate), on a real local Ray: the
result comes back, a user error stays itself, the variables given reach it, the process is gone
after the block. That publish reads a bucket through it is tests/test_bucket.py's."""

import os
import subprocess
import sys
import time

import pytest
import torch

from animalclf.data.s3 import client_env
from animalclf.errors import UserError
from animalclf.runtime.isolate import isolated
from animalclf.tune.space import parse_space


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_pass_runs_in_a_process_that_ends_with_the_block_and_a_user_error_stays_one_line(ray_session):
    import ray

    with isolated(env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}) as run:
        pid = run(os.getpid)
        assert pid != os.getpid() and alive(pid)
        assert run(divmod, 7, 2) == (3, 1)
        assert run(torch.get_num_threads) == torch.get_num_threads()  # the driver's, not Ray's 1 for a 0-CPU actor
        assert run(os.getpid) == pid  # one process for the whole block
        with pytest.raises(UserError) as e:
            run(parse_space, ["momentum=0.1:0.9"])
        assert type(e.value) is UserError and str(e.value).startswith("Unknown search parameter 'momentum'")
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError) as e:  # not a user error: Ray's remote traceback is kept
            run(int, "twelve")
        assert isinstance(e.value, ray.exceptions.RayTaskError) and "invalid literal" in str(e.value)
        # the variables given (the driver's AWS ones in publish): a Ray worker has the cluster's, not this shell's
        assert run(client_env)["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" != os.environ.get("AWS_ENDPOINT_URL")
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid)


def test_without_ray_a_pass_runs_here():
    code = ("import os, torch; from animalclf.runtime.isolate import isolated\n"
            "with isolated() as run: assert run(os.getpid) == os.getpid(); print('here')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert out.returncode == 0 and out.stdout.strip() == "here", out.stderr
