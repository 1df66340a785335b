"""`make demo` as a newcomer meets it (scripts/demo.sh): a busy port fails at once naming the
variable that moves it, a port a stopped demo left in TIME_WAIT is not "busy", and Ctrl-C (SIGINT
to the process group, as a terminal sends it) stops the provider, sidecar and demo app within 2 s.

The script runs from a scratch copy of the repository layout (scripts/, config/, and links to
.venv and tests) so its store files land in tmp_path, never in the checkout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PORT_VARS = ("PROVIDER_PORT", "SIDECAR_PORT", "MANAGEMENT_PORT", "DEMO_PORT")
pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A scratch checkout: demo.sh cds to its parent's parent and writes ./.dcr-sidecar/ there."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "demo.sh").write_bytes((REPO / "scripts" / "demo.sh").read_bytes())
    (tmp_path / "scripts" / "demo.sh").chmod(0o755)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dev.yaml").write_bytes((REPO / "config" / "dev.yaml").read_bytes())
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "tests").symlink_to(REPO / "tests")
    return tmp_path


def demo_env(ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PORT_VARS}
    env.update({var: str(port) for var, port in ports.items()})
    return env


def leave_time_wait(port: int) -> None:
    """Listen on port as the demo's servers do, accept one connection and close it first: the
    port's side of that connection stays in TIME_WAIT (60 s on Linux), as after a demo stopped
    with a browser open."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp and node do
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()
        client.recv(1)  # the server's FIN has arrived
        client.close()
    deadline = time.monotonic() + 5  # the client's FIN moves the port's side on to TIME_WAIT
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.02)
    raise AssertionError(f"port {port} did not reach TIME_WAIT within 5 s")


def run_check(demo_dir: Path,
              ports: dict[str, int]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(["bash", str(demo_dir / "scripts" / "demo.sh")], env=demo_env(ports),
                          capture_output=True, text=True, timeout=30, check=False)
    return done, time.monotonic() - started


def test_a_busy_port_fails_fast_naming_its_variable(demo_dir: Path) -> None:
    ports = {var: free_port() for var in PORT_VARS}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["SIDECAR_PORT"]))
        holder.listen()
        done, elapsed = run_check(demo_dir, ports)
    assert done.returncode == 1, done
    assert elapsed < 5, elapsed
    port = ports["SIDECAR_PORT"]
    assert (f"demo: port {port} on 127.0.0.1 is busy: run with SIDECAR_PORT=<a free port>"
            in done.stderr), done.stderr
    assert "PROVIDER_PORT" not in done.stderr, done.stderr
    assert "DEMO_PORT" not in done.stderr, done.stderr
    assert not (demo_dir / ".dcr-sidecar").exists()  # nothing was started


def test_a_port_left_in_time_wait_is_not_called_busy(demo_dir: Path) -> None:
    """Failed before the fix: re-running `make demo` right after Ctrl-C said every port the
    browser had talked to was busy, though nothing listened on it."""
    ports = {var: free_port() for var in PORT_VARS}
    leave_time_wait(ports["PROVIDER_PORT"])
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):  # a bare bind() fails
        plain.bind(("127.0.0.1", ports["PROVIDER_PORT"]))
    with socket.socket() as holder:  # a really busy port stops the script after its check
        holder.bind(("127.0.0.1", ports["DEMO_PORT"]))
        holder.listen()
        done, _ = run_check(demo_dir, ports)
    assert done.returncode == 1, done
    assert "DEMO_PORT=<a free port>" in done.stderr, done.stderr
    assert "PROVIDER_PORT" not in done.stderr, done.stderr


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class RunningDemo:
    """scripts/demo.sh in its own process group, up once it printed its banner."""

    def __init__(self, demo_dir: Path, ports: dict[str, int]) -> None:
        self.proc = subprocess.Popen(["bash", str(demo_dir / "scripts" / "demo.sh")],
                                     env=demo_env(ports), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.output = ""

    def wait_up(self) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Ctrl-C stops everything" not in self.output:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output += line
        assert "Ctrl-C stops everything" in self.output, self.output

    def interrupt(self) -> float:
        """SIGINT to the group, as Ctrl-C in a terminal; seconds until no process is left."""
        sent = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=2)
        while group_alive(self.proc.pid) and time.monotonic() - sent < 2:
            time.sleep(0.02)
        return time.monotonic() - sent

    def kill(self) -> None:
        if group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_ctrl_c_stops_the_whole_demo_within_two_seconds(demo_dir: Path) -> None:
    ports = {var: free_port() for var in PORT_VARS}
    demo = RunningDemo(demo_dir, ports)
    try:
        demo.wait_up()
        stopped = demo.interrupt()
        assert not group_alive(demo.proc.pid), f"demo still running {stopped:.2f} s after SIGINT"
        assert stopped < 2, stopped
        for var in ("SIDECAR_PORT", "DEMO_PORT"):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", ports[var]), timeout=1).close()
    finally:
        demo.kill()


def login_page(demo_port: int) -> str:
    """The demo's Log in, followed through the sidecar to the provider's page."""
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    try:
        with browser.open(f"http://127.0.0.1:{demo_port}/login", timeout=10) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:  # the provider's error page (400) is the finding
        return f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"


def test_a_second_demo_registers_afresh_and_its_login_works(demo_dir: Path) -> None:
    """Failed before the fix: the second `make demo` reused the client stored by the first,
    which the restarted in-memory provider does not know: its page said invalid_client."""
    ports = {var: free_port() for var in PORT_VARS}
    client_ids = []
    for _ in range(2):
        demo = RunningDemo(demo_dir, ports)
        try:
            demo.wait_up()
            client_ids.append((demo_dir / ".dcr-sidecar" / "demo-client-id").read_text().strip())
            page = login_page(ports["DEMO_PORT"])
            assert "invalid_client" not in page, page
            assert 'name="login"' in page, page
            assert demo.interrupt() < 2
        finally:
            demo.kill()
    assert client_ids[0] != client_ids[1], client_ids
