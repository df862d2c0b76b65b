"""Hosts of our own for multi-host tests and benchmarks: network namespaces on a private bridge.

``Network`` makes a Linux bridge with an address for this (root) namespace and one network
namespace per host, joined to the bridge by a veth pair; every host has its own address.
``Network.start`` runs a command on a host, optionally with private directories: each is a fresh
tmpfs mounted over that path in a mount namespace of the process tree's own, so the host sees an
empty directory there and nothing passes between hosts through it (a worker's scratch, or the
client's build directory hidden from the workers). ``dask_cluster`` starts a ``dask scheduler``
host and worker hosts on it; ``object_store`` an S3 server host.

Everything is torn down in ``Network.close`` (process groups SIGKILLed, namespaces, links and the
bridge deleted), bounded in time, also when a test fails; ``Network.leftovers`` lists what
survived (a test asserts it is empty). Needs root and iproute2; ``namespaces_refused`` says why
not where they are refused, and the tests skip with that reason.

The names carry a random tag and the subnet a random third byte, so two test runs on one machine
(or other projects' namespaces) do not collide.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TEARDOWN_S = 10.0  # the most close() waits for processes to go


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def namespaces_refused() -> str | None:
    """None when network namespaces, veth links and tmpfs mounts can be made here, else why not."""
    if sys.platform != "linux":
        return f"network namespaces need Linux (this is {sys.platform})"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (apt-get install iproute2 util-linux)"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root; this user is not)"
    probe = f"stsun-probe-{secrets.token_hex(3)}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode:
            return f"'ip netns add' was refused: {made.stderr.strip()}"
        mounted = subprocess.run(["ip", "netns", "exec", probe, "unshare", "--mount", "--propagation", "private",
                                  "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, text=True, timeout=10)
        if mounted.returncode:
            return f"a private tmpfs in a mount namespace was refused: {mounted.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    veth: str      # the bridge's end of the link, in the root namespace
    processes: list[subprocess.Popen] = field(default_factory=list)


class Network:
    """A bridge with hosts on it; use as a context manager (or call ``close``)."""

    def __init__(self, logdir: Path) -> None:
        self.tag = secrets.token_hex(2)
        self.subnet = f"10.231.{secrets.randbelow(250) + 2}"
        self.bridge = f"bst{self.tag}"
        self.address = f"{self.subnet}.1"  # this namespace's address on the bridge (the client's)
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.hosts: dict[str, Host] = {}
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, name: str) -> Host:
        """A new host: a namespace with loopback and eth0 at the next address of the subnet."""
        index = len(self.hosts) + 2
        host = Host(name, f"stsun-{self.tag}-{name}", f"{self.subnet}.{index}", f"vst{self.tag}{index}")
        self.hosts[name] = host
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        for args in (("addr", "add", f"{host.address}/24", "dev", "eth0"), ("link", "set", "eth0", "up"),
                     ("link", "set", "lo", "up")):
            _ip("-n", host.namespace, *args)
        return host

    def start(self, host: Host, argv: list[str], private: tuple[str, ...] = (), env: dict | None = None,
              log: str | None = None) -> subprocess.Popen:
        """Run ``argv`` on ``host`` in a process group of its own, each ``private`` directory an empty
        tmpfs seen by this process tree only; output to ``logdir/<log or host>.log``."""
        # mode 700: a hidden folder the code checks for privacy (the s3:// staging folder) stays private
        mounts = "".join(f"mkdir -p -m 700 {shlex.quote(d)} && mount -t tmpfs -o size=512m,mode=700 tmpfs "
                         f"{shlex.quote(d)} && "
                         for d in private)
        script = f"{mounts}exec {shlex.join(argv)}"
        cmd = ["ip", "netns", "exec", host.namespace, "unshare", "--mount", "--propagation", "private",
               "sh", "-c", script]
        out = open(self.logdir / f"{log or host.name}.log", "ab")
        with out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        host.processes.append(proc)
        return proc

    def kill(self, host: Host) -> None:
        """SIGKILL every process started on ``host`` (the host dies; its namespace stays)."""
        for proc in host.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def link_down(self, host: Host) -> None:
        """Cut ``host`` off the network: its processes live on, nothing reaches them (no FIN, no RST)."""
        _ip("link", "set", host.veth, "down")

    def link_up(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def remove(self, host: Host) -> None:
        """Kill ``host``'s processes and delete its namespace and link (its name stays taken)."""
        self.kill(host)
        for proc in host.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=TEARDOWN_S)
        _ip("link", "del", host.veth, check=False)
        _ip("netns", "del", host.namespace, check=False)

    def close(self) -> None:
        """Kill every process, then delete the namespaces and links; never waits more than TEARDOWN_S."""
        procs = [p for h in self.hosts.values() for p in h.processes]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + TEARDOWN_S
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for host in self.hosts.values():
            _ip("link", "del", host.veth, check=False)  # both ends, now (a namespace's links go asynchronously)
            _ip("netns", "del", host.namespace, check=False)
        _ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """What ``close`` left behind: live processes, namespaces, links (empty when clean)."""
        left = [f"process {p.pid} ({p.args[-1][-80:]})" for h in self.hosts.values() for p in h.processes
                if p.poll() is None]
        namespaces = _ip("netns", "list").stdout
        left += [f"namespace {h.namespace}" for h in self.hosts.values() if h.namespace in namespaces]
        links = _ip("-br", "link").stdout
        left += [f"link {name}" for name in [self.bridge, *(h.veth for h in self.hosts.values())]
                 if f"{name} " in links or f"{name}@" in links]
        return left


def wait_for_port(address: str, port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Until ``address:port`` accepts connections; RuntimeError when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[-1][:200]} exited with {proc.returncode} before {address}:{port} opened")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{address}:{port} did not open within {timeout:.0f} s")


@dataclass
class DaskCluster:
    network: Network
    scheduler: Host
    workers: list[Host]

    @property
    def address(self) -> str:
        return f"tcp://{self.scheduler.address}:8786"


def dask_bin(name: str) -> str:
    """An executable of this Python's environment (dask, moto_server, stsun)."""
    return str(Path(sys.executable).parent / name)


@contextlib.contextmanager
def dask_cluster(network: Network, workers: int, scratch: str, hidden: tuple[str, ...] = (),
                 env: dict | None = None, nthreads: int = 1, prefix: str = "") -> Iterator[DaskCluster]:
    """A ``dask scheduler`` host and ``workers`` ``dask worker`` hosts (no nanny: one process per host,
    so SIGKILL takes the host's worker away for good), each worker with ``scratch`` (its
    ``--local-directory``) and ``hidden`` as private tmpfs (``hidden`` first: a scratch inside a hidden
    directory is made in the worker's own tmpfs). ``env`` goes to every process (Dask settings as
    DASK_* variables). Hosts are named ``prefix`` + sched, w1, ...; waits until every worker has
    joined, and removes the hosts when the block ends."""
    from distributed import Client

    sched = network.add(f"{prefix}sched")
    proc = network.start(sched, [dask_bin("dask"), "scheduler", "--host", sched.address, "--port", "8786",
                                 "--no-dashboard"], env=env)
    wait_for_port(sched.address, 8786, proc=proc)
    hosts = []
    for i in range(workers):
        host = network.add(f"{prefix}w{i + 1}")
        network.start(host, [dask_bin("dask"), "worker", f"tcp://{sched.address}:8786", "--host", host.address,
                             "--nthreads", str(nthreads), "--no-nanny", "--no-dashboard", "--name", host.name,
                             "--local-directory", scratch], private=(*hidden, scratch), env=env)
        hosts.append(host)
    cluster = DaskCluster(network, sched, hosts)
    try:
        with Client(cluster.address, timeout="20s") as client:
            client.wait_for_workers(workers, timeout=90)
        yield cluster
    finally:
        for host in [*hosts, sched]:
            network.remove(host)


S3_PORT = 9000


@contextlib.contextmanager
def object_store(network: Network, name: str = "s3") -> Iterator[dict[str, str]]:
    """moto's S3 server on a host of its own; the ``AWS_*`` environment that reaches it (boto3 reads
    ``AWS_ENDPOINT_URL``; stsun passes it on to GDAL). Its log lists each request with the
    address it came from."""
    host = network.add(name)
    proc = network.start(host, [dask_bin("moto_server"), "-H", host.address, "-p", str(S3_PORT)])
    try:
        wait_for_port(host.address, S3_PORT, proc=proc)
        yield {"AWS_ENDPOINT_URL": f"http://{host.address}:{S3_PORT}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    finally:
        network.remove(host)
