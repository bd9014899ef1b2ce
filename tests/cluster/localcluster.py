"""A real multi-node Ray cluster on this machine: one head and N worker raylets, each its own
``ray start --block`` in its own session (process group), token authentication on, every port picked
free, its own temp dir, so it never touches another Ray running here. Teardown ends exactly the
processes of those sessions (never ``ray stop``, which would stop every Ray of this user) and checks
that none is left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    killed: bool = False  # its raylet was killed on purpose: its `ray start` ending is expected

    @property
    def session(self) -> int:
        return self.proc.pid  # start_new_session: the session and group ids are the leader's pid

    def raylet(self) -> psutil.Process | None:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        return next((k for k in kids if k.name() == "raylet"), None)


@dataclass
class LocalCluster:
    """Start with :meth:`start_head` and :meth:`add_worker`; always :meth:`teardown`."""

    root: Path  # short: Ray's unix sockets live under it
    env: dict[str, str]  # the nodes' environment (what an image and its pod spec would set)
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    def __post_init__(self) -> None:
        self.temp_dir = self.root / "ray"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**self.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_TMPDIR": str(self.temp_dir), "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a user's shell needs to talk to this cluster (no PYTHONPATH)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
        return {**env, "PATH": f"{BIN}:{env.get('PATH', '')}", "RAY_ADDRESS": self.dashboard, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token, "RAY_TMPDIR": str(self.temp_dir), "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip

    def _start(self, name: str, args: list[str]) -> Node:
        agent, grpc, metrics, runtime_env, manager, objects = free_ports(6)
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
               "--object-store-memory", str(300 * 2**20), "--node-manager-port", str(manager),
               "--object-manager-port", str(objects), "--dashboard-agent-listen-port", str(agent),
               "--dashboard-agent-grpc-port", str(grpc), "--metrics-export-port", str(metrics),
               "--runtime-env-agent-port", str(runtime_env), "--disable-usage-stats", *args]  # fmt: skip
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.root)  # fmt: skip
        node = Node(name, proc, log)
        self.nodes.append(node)
        return node

    def start_head(self) -> Node:
        self.gcs_port, self.dashboard_port, client = free_ports(3)
        # Ray's own actors (Train's placement-group cleaner, state API calls) look for "the" cluster of
        # this machine when no address is set, and find every other Ray running here: name ours.
        self.env["RAY_ADDRESS"] = self.address
        node = self._start("head", ["--head", "--port", str(self.gcs_port), "--temp-dir", str(self.temp_dir),
                                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                                    "--ray-client-server-port", str(client)])  # fmt: skip
        self.wait_nodes(1)
        return node

    def add_worker(self, name: str = "worker", attempts: int = 3) -> Node:
        """Start a worker node and wait for it. Ray gives a new raylet 30 s to register with the GCS; on
        a loaded machine that can pass: its `ray start` then exits, and it is started again."""
        for attempt in range(attempts):
            # a temp dir of its own: nodes sharing one also share runtime_resources/, and one node's
            # runtime-env agent then deletes a job's working_dir the other node's job still runs in
            node = self._start(name, ["--address", self.address, "--temp-dir", str(self.temp_dir.parent / f"ray-{name}")])
            try:
                self.wait_nodes(len([n for n in self.nodes if not n.killed]))
                return node
            except RuntimeError:
                if node.proc.poll() is None or attempt == attempts - 1:
                    raise
                node.killed = True  # its session stays listed: teardown still sweeps it
                try:
                    os.killpg(node.session, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        raise AssertionError("unreachable")

    def state(self, kind: str, *filters: str) -> list[dict[str, Any]]:
        """``ray list <kind>`` of the state API, as a client would run it (token from the environment)."""
        args = [a for f in filters for a in ("--filter", f)]
        out = subprocess.run([str(BIN / "ray"), "list", kind, "--address", self.dashboard, "--format", "json",
                              "--limit", "10000", *args], env=self.client_env(), capture_output=True, text=True,
                             timeout=120, check=True)  # fmt: skip
        return json.loads(out.stdout)

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.state("nodes")

    def alive(self) -> dict[str, dict[str, Any]]:
        return {n["node_id"]: n for n in self.list_nodes() if n["state"] == "ALIVE"}

    def wait_nodes(self, count: int, timeout: float = 180) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.killed and node.proc.poll() is not None:
                    raise RuntimeError(f"ray start of {node.name} exited {node.proc.returncode}:\n{node.log.read_text()[-3000:]}")
            try:
                alive = self.alive()
                if len(alive) == count:
                    return alive
                last = alive
            except Exception as e:  # noqa: BLE001 (the dashboard is still starting)
                last = e
            time.sleep(2)
        raise TimeoutError(f"{count} alive nodes expected within {timeout}s, last seen: {last}")

    def kill_raylet(self, node: Node) -> int:
        raylet = node.raylet()
        if raylet is None:
            raise RuntimeError(f"no raylet under {node.name}")
        node.killed = True
        raylet.kill()
        return raylet.pid

    # -- teardown ----------------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster's sessions, or naming its temp dir (however it was started)."""
        sessions = {n.session for n in self.nodes}
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getsid(p.pid) in sessions or str(self.temp_dir) in " ".join(p.info["cmdline"] or []):
                    out.append(p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return [p for p in out if p.pid != os.getpid()]

    def teardown(self, grace: float = 10.0) -> list[str]:
        """Stop every node: SIGTERM to each session's group, SIGKILL to what is left after ``grace``
        seconds. Returns the command lines of processes still alive afterwards (empty: clean)."""
        for node in self.nodes:
            try:
                os.killpg(node.session, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.processes():
            time.sleep(0.5)
        for p in self.processes():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for node in self.nodes:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(1)
        return [" ".join(p.cmdline())[:160] for p in self.processes() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
