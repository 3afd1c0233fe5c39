"""Test hosts on one machine: Linux network namespaces (``ip netns``) on one bridge, each process under its own
hostname, so a multi-host test sees what separate machines would see, and nothing more.

``TestNetwork`` makes the namespaces ``tally-<pid>-<role>`` (the first role's namespace holds the bridge, like
a switch in that host's rack) with one veth link from each other namespace into it, and one from the test's
own namespace, so the test talks to the hosts as a client on the same LAN would. Addresses come from a /24 in
10.0.0.0/8 that no route of this machine uses. Each host reaches the others only by their addresses: its
``127.0.0.1`` is its own. A host's processes also get a UTS namespace with the host's name as hostname
(``socket.gethostname()``), so code that tells hosts apart by name (a worker's liveness check) believes it.
The pid and mount namespaces stay shared: the test can kill any host's process by its pid.

Everything is removed on exit, however the test ended; namespaces a killed test run left behind (its pid no
longer exists) are removed by the next run. Needs root and iproute2 (``scripts/_env.sh`` installs it).
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from tally.launcher import Launcher
from workers.recovery import _pid_alive  # the liveness check workers use

NAME = re.compile(r"^tally-(\d+)-[a-z0-9]+$")
ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole", "nat"}
CLIENT_LINK = "tn{pid}"  # the test's own end of its link (interface names have at most 15 characters)


def unavailable() -> str | None:
    """Why test hosts cannot be made here (not root, no ``ip``, no ``unshare``, no netns support); None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (the CI machine runs the tests as root)"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"no `{tool}` binary: install {package} (scripts/_env.sh does, as root)"
    probe = f"tally-{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    return None


def ip(*args: str, namespace: str | None = None) -> None:
    """One ``ip`` command (in ``namespace``), bounded; a failure raises with ip's own message."""
    argv = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def remove_leftovers() -> list[str]:
    """Delete the namespaces of earlier test runs that were killed before they could clean up."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    removed = []
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        match = NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


def free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that overlaps no route of this machine."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                            timeout=10).stdout
    used = []
    for line in routes.splitlines():
        words = line.split()
        word = words[1] if words[0] in ROUTE_TYPES and len(words) > 1 else words[0]
        try:
            used.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue  # "default" and the like
    used = [net for net in used if net.prefixlen > 0]  # a default route overlaps everything
    for _ in range(100):
        subnet = ipaddress.ip_network(f"10.{random.randint(64, 254)}.{random.randint(0, 255)}.0/24")
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise RuntimeError("no free 10.x.y.0/24 for the test network")


@dataclass(frozen=True)
class Host:
    """One test host: its namespace (also its hostname) and its address on the test network."""

    role: str
    namespace: str
    address: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host: in its network namespace, with its own hostname. ``ip netns exec``,
        ``unshare`` and ``sh`` each exec the next, so the process keeps the pid the caller started."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                self.namespace, *argv]


class TestNetwork:
    """Hosts on one bridge, and a link for this process; a context manager that removes them all on exit."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, roles: tuple[str, ...] = ("api", "a", "b")):
        self.pid = os.getpid()
        self.subnet = free_subnet()
        addresses = list(self.subnet.hosts())
        self.hosts = {role: Host(role, f"tally-{self.pid}-{role}", str(addresses[n])) for n, role in enumerate(roles)}
        self.client_address = str(addresses[-1])  # this process, on the same LAN
        self._made: list[str] = []

    def __getitem__(self, role: str) -> Host:
        return self.hosts[role]

    def __enter__(self) -> "TestNetwork":
        remove_leftovers()
        try:
            self._build()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _build(self) -> None:
        hub, *others = self.hosts.values()
        prefix = self.subnet.prefixlen
        for host in self.hosts.values():
            ip("netns", "add", host.namespace)
            self._made.append(host.namespace)
            ip("link", "set", "lo", "up", namespace=host.namespace)
        ip("link", "add", "br0", "type", "bridge", namespace=hub.namespace)
        ip("addr", "add", f"{hub.address}/{prefix}", "dev", "br0", namespace=hub.namespace)
        ip("link", "set", "br0", "up", namespace=hub.namespace)
        for n, host in enumerate(others):
            self._port(f"p{n}", "eth0", host.namespace, hub.namespace)
            ip("addr", "add", f"{host.address}/{prefix}", "dev", "eth0", namespace=host.namespace)
            ip("link", "set", "eth0", "up", namespace=host.namespace)
        client = CLIENT_LINK.format(pid=self.pid)
        ip("link", "add", client, "type", "veth", "peer", "name", "pclient", "netns", hub.namespace)
        ip("link", "set", "pclient", "master", "br0", "up", namespace=hub.namespace)
        ip("addr", "add", f"{self.client_address}/{prefix}", "dev", client)
        ip("link", "set", client, "up")

    @staticmethod
    def _port(port: str, inside: str, namespace: str, hub: str) -> None:
        """A veth pair: ``port`` on the hub's bridge, ``inside`` in ``namespace``."""
        ip("link", "add", port, "type", "veth", "peer", "name", inside, "netns", namespace, namespace=hub)
        ip("link", "set", port, "master", "br0", "up", namespace=hub)

    def remove(self) -> None:
        """Delete the namespaces (their links go with them, the test's end of its link too); never raises."""
        for namespace in reversed(self._made):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)
        self._made.clear()
        subprocess.run(["ip", "link", "del", CLIENT_LINK.format(pid=self.pid)], capture_output=True, timeout=10)


class HostLauncher(Launcher):
    """Tally's ``Launcher`` whose processes run on one test host: the same start, readiness and stop logic as
    ``tally up``, with the host's namespace and hostname around every command."""

    def __init__(self, host: Host, settings, env: dict | None = None, log_dir=None):
        super().__init__(settings, env=env, log_dir=log_dir)
        self.host = host

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        return super()._spawn(name, self.host.command(argv))

    def start_redis(self, port: int, directory) -> None:
        """A redis-server on the host's address (nothing persisted), once it answers."""
        self._spawn("redis", ["redis-server", "--bind", self.host.address, "--port", str(port), "--save", "",
                              "--appendonly", "no", "--protected-mode", "no", "--dir", str(directory)])
        self._wait(self.redis_answers, 15, f"redis-server on host {self.host.role} did not start")

    def start_s3(self, port: int) -> str:
        """moto's S3 server on the host's address, once it answers; returns its endpoint."""
        import httpx

        endpoint = f"http://{self.host.address}:{port}"

        def answers() -> bool:
            try:
                return httpx.get(endpoint, timeout=1) is not None
            except httpx.TransportError:
                return False

        self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", self.host.address, "-p", str(port)])
        self._wait(answers, 30, f"moto's S3 server on host {self.host.role} did not start")
        return endpoint
