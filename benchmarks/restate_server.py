"""The Restate server for the benchmarks: installed from npm into a cache outside the repository,
started on 127.0.0.1 with telemetry off, and stopped by its PID.

``@restatedev/restate-server`` on the npm registry ships the server as a prebuilt binary in a
platform package (``@restatedev/restate-server-linux-x64`` and so on); ``npm install
--prefix <cache>`` puts it at ``<cache>/node_modules/@restatedev/restate-server-<platform>/
bin/restate-server``. The cache is ``~/.cache/duraflow-bench/restate-<version>``
(``$DURAFLOW_BENCH_CACHE`` moves it).

Settings (environment variables; everything else is Restate's default): telemetry off
(``RESTATE_DISABLE_TELEMETRY``), TCP only, ingress, admin and node-to-node ports bound to
127.0.0.1 on free ports, the web UI off, its data in a temporary directory. The server also
asks GitHub for its latest release once at start, and no setting turns that off, so the
benchmark process moves itself into a network namespace of its own with only loopback
(``unshare(CLONE_NEWNET)``, which needs root; without it the check is simply made).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

VERSION = "1.7.12"
PACKAGE = "@restatedev/restate-server"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 600.0
_PLATFORMS = {
    ("Linux", "x86_64"): "linux-x64",
    ("Linux", "aarch64"): "linux-arm64",
    ("Darwin", "x86_64"): "darwin-x64",
    ("Darwin", "arm64"): "darwin-arm64",
}


class RestateUnavailable(RuntimeError):
    """The Restate server (or its Python SDK) cannot be had here; the message says why."""


def cache_dir() -> Path:
    root = os.environ.get("DURAFLOW_BENCH_CACHE") or Path.home() / ".cache" / "duraflow-bench"
    return Path(root) / f"restate-{VERSION}"


def binary_path() -> Path:
    """Where ``npm install`` puts the server binary for this platform."""
    key = (platform.system(), platform.machine())
    if key not in _PLATFORMS:
        raise RestateUnavailable(f"no restate-server package for {key[0]} {key[1]}")
    return cache_dir() / "node_modules" / f"{PACKAGE}-{_PLATFORMS[key]}" / "bin" / "restate-server"


def installed() -> Path | None:
    """The cached binary, or None when it has not been installed yet."""
    try:
        path = binary_path()
    except RestateUnavailable:
        return None
    return path if os.access(path, os.X_OK) else None


def install() -> Path:
    """Install the server binary into the cache (about 100 MB from the npm registry) once.

    Raises:
        RestateUnavailable: no ``npm`` here, or the install failed.
    """
    if (path := installed()) is not None:
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise RestateUnavailable(f"npm is not installed, so {PACKAGE}@{VERSION} cannot be")
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    print(f"restate: installing {PACKAGE}@{VERSION} into {target} (once)", file=sys.stderr)
    # --ignore-scripts: the package needs none, and its one dependency's install script only
    # reports the install to an analytics service (SCARF_ANALYTICS=false says no as well).
    command = [npm, "install", "--prefix", str(target), "--ignore-scripts", "--no-audit"]
    command += ["--no-fund", "--no-save", f"{PACKAGE}@{VERSION}"]
    env = {**os.environ, "SCARF_ANALYTICS": "false"}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if done.returncode != 0 or installed() is None:
        raise RestateUnavailable(f"`npm install {PACKAGE}@{VERSION}` failed: {done.stderr[-800:]}")
    return binary_path()


# -- network --------------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def isolate_network() -> bool:
    """Move this process into a new network namespace with only loopback (up); False when
    the system does not allow it (not root, not Linux). Call it before any thread starts:
    every process started afterwards inherits the namespace."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Run in a child before exec: it is killed if the process that started it dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def clean_env() -> dict[str, str]:
    """This environment without Restate settings or proxies (every call stays on loopback)."""
    dropped = ("RESTATE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


def http_json(url: str, payload: Any = None, timeout: float = 10.0) -> Any:
    """GET (or POST ``payload`` as JSON) and decode the JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def wait_until(ready: Any, what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout_s:g} s")
        time.sleep(0.05)


# -- processes ------------------------------------------------------------------------------


class Process:
    """A child process with its log in ``log_path``, stopped by its PID."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # started before any thread exists
            )
        self.pid = self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM to our PID, then SIGKILL after ``STOP_TIMEOUT_S``."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_server(binary: Path, data_dir: Path) -> tuple[Process, str, str]:
    """Start ``restate-server`` on free 127.0.0.1 ports; return it, the ingress and admin URLs."""
    fabric, admin, ingress = free_port(), free_port(), free_port()
    env = {
        **clean_env(),
        "RESTATE_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "RESTATE_LISTEN_MODE": "tcp",
        "RESTATE_NODE_NAME": "bench",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{fabric}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{fabric}/",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
        "RESTATE_ADMIN__DISABLE_WEB_UI": "true",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
        "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
        "RESTATE_SHUTDOWN_TIMEOUT": "5s",
    }
    command = [str(binary), "--base-dir", str(data_dir), "--no-logo"]
    server = Process("restate-server", command, env, data_dir.parent / "restate-server.log")
    admin_url, ingress_url = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{ingress}"

    def ready() -> bool:
        server.check_alive()
        http_json(f"{admin_url}/health")
        urllib.request.urlopen(f"{ingress_url}/restate/health", timeout=2.0).close()
        return True

    try:
        wait_until(ready, "restate-server")
    except BaseException:
        server.stop()
        raise
    return server, ingress_url, admin_url


def start_sdk(module: str, log_dir: Path) -> tuple[Process, str]:
    """Serve the benchmark services (``python -m <module> <port>``) with hypercorn."""
    port = free_port()
    command = [sys.executable, "-m", module, str(port)]
    sdk = Process("restate SDK (hypercorn)", command, clean_env(), log_dir / "sdk.log")

    def ready() -> bool:
        sdk.check_alive()
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        return True

    try:
        wait_until(ready, "the SDK's hypercorn")
    except BaseException:
        sdk.stop()
        raise
    return sdk, f"http://127.0.0.1:{port}"


def register(admin_url: str, sdk_url: str) -> list[str]:
    """Register the SDK endpoint with the admin API; the names of the services it serves."""
    try:
        answer = http_json(f"{admin_url}/deployments", {"uri": sdk_url}, timeout=30.0)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"registering {sdk_url}: {exc}: {exc.read()[:500]!r}") from exc
    return [service["name"] for service in answer["services"]]
