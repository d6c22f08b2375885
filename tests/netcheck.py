"""What a set of processes listens on, and whether a client without the Ray token gets in.

Used by the head and demo tests: every listener must be on loopback, or be one of Ray's own
ports that Ray binds beyond loopback whatever we pass (Ray resolves ``--node-ip-address=127.0.0.1``
to the host's address), and those must refuse a client without the token.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import requests

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
# One real method of each Ray gRPC service that listens on a node; the auth interceptor answers
# UNAUTHENTICATED before the call reaches the service, an unknown method answers UNIMPLEMENTED.
RAY_GRPC_METHODS = (
    "/ray.rpc.NodeInfoGcsService/GetClusterId", "/ray.rpc.NodeManagerService/GetNodeStats",
    "/ray.rpc.ObjectManagerService/Push", "/ray.rpc.CoreWorkerService/NumPendingTasks",
    "/ray.rpc.RayletDriver/ClusterInfo", "/ray.rpc.ReporterService/GetTraceback", "/ray.serve.ASGIService/HandleRequest",
)


@dataclass(frozen=True)
class Listener:
    ip: str
    port: int
    pid: int
    name: str

    @property
    def loopback(self) -> bool:
        return self.ip in LOOPBACK


def listeners(procs) -> list[Listener]:
    """Every listening TCP socket of ``procs``."""
    out = set()
    for p in procs:
        try:
            name = " ".join(p.cmdline())[:120] or p.name()
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add(Listener(c.laddr.ip, c.laddr.port, p.pid, name))
        except psutil.Error:
            pass
    return sorted(out, key=lambda listener: listener.port)


def host_address() -> str:
    """This machine's non-loopback IPv4 address (what Ray binds its node to)."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    return "127.0.0.1"


def grpc_refuses(port: int, host: str) -> str:
    """'refused' when a token-less gRPC call is rejected as unauthenticated, else what happened."""
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=3)
        except grpc.FutureTimeoutError:
            return "not gRPC"
        codes = []
        for method in RAY_GRPC_METHODS:
            call = ch.unary_unary(method, request_serializer=lambda x: x, response_deserializer=lambda x: x)
            try:
                call(b"", timeout=5)
                return f"{method} answered without a token"
            except grpc.RpcError as e:
                codes.append(e.code().name)
        return "refused" if "UNAUTHENTICATED" in codes else f"gRPC {sorted(set(codes))}"


def http_status(port: int, host: str) -> tuple[int, str]:
    r = requests.get(f"http://{host}:{port}/", timeout=5)
    return r.status_code, r.text[:200]


def check_beyond_loopback(found: list[Listener]) -> tuple[list[str], list[str]]:
    """(problems, metrics-only ports) for the listeners bound beyond loopback: each must refuse a
    token-less client (gRPC UNAUTHENTICATED or HTTP 401/403) or serve nothing but Prometheus text."""
    host = host_address()
    problems, metrics = [], []
    for listener in found:
        if listener.loopback:
            continue
        verdict = grpc_refuses(listener.port, host)
        if verdict == "refused":
            continue
        if verdict != "not gRPC":
            problems.append(f"{listener}: {verdict}")
            continue
        try:
            status, body = http_status(listener.port, host)
        except requests.RequestException as e:
            problems.append(f"{listener}: neither gRPC nor HTTP ({type(e).__name__})")
            continue
        if status in (401, 403):
            continue
        if status == 200 and body.startswith("# HELP"):
            metrics.append(f"{listener.port} ({listener.name.split()[0]})")
            continue
        problems.append(f"{listener}: HTTP {status} without a token: {body[:80]!r}")
    return problems, metrics
