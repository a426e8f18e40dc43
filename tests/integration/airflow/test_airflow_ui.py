"""`make airflow-ui` as a person meets it: ``python -m pipeline.devtools.airflow_env`` (what
the target runs) on a fresh AIRFLOW_HOME (SQLite), moved to another port by Airflow's own
AIRFLOW__API__PORT alone; Debian's Chromium (Playwright) for the UI.

- "Airflow is ready" comes only once the UI's page and the reports page answer, and says where
  the admin password is kept;
- the API server listens on 127.0.0.1 only;
- every Airflow URL of the deployment (its base URL, the tasks' execution API, the review
  links) is on the moved port;
- "K-means reports" in the UI's navigation opens the reports index when clicked.

The screenshots are kept in ``test-artifacts/airflow-ui-nav/`` (git ignores the folder).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import airflow_ui
from tests.helpers.net import free_port, log_tail
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOTS = ROOT / "test-artifacts" / "airflow-ui-nav"
READY = "Airflow is ready"
#: Seconds the start may go without its output or the components' logs growing.
STALL_TIMEOUT = 300.0


class UI:
    def __init__(self, proc: subprocess.Popen, out: Path, home: Path, port: int):
        self.proc, self.out, self.home, self.port = proc, out, home, port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_page: int | None = None
        self.ready_reports: int | None = None

    def progress(self) -> int:
        logs = self.home / "components"
        return self.out.stat().st_size + sum(f.stat().st_size for f in logs.glob("*.log"))

    def said(self) -> str:
        return self.out.read_text(errors="replace")

    def auth(self) -> dict[str, str]:
        """A bearer token of the admin user (its password from the kept file)."""
        password = json.loads((self.home / "passwords.json").read_text())["admin"]
        token = httpx.post(f"{self.url}/auth/token", timeout=30, json={
            "username": "admin", "password": password}).json()["access_token"]
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def airflow_ui_target(tmp_path_factory):
    """`make airflow-ui`'s command on a fresh home with only AIRFLOW__API__PORT set; waited for
    until it says it is ready (and, at that moment, the UI's page and the reports page are
    asked once); stopped with SIGINT (Ctrl-C) at the end."""
    root = tmp_path_factory.mktemp("airflow-ui")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KMEANS_"))}
    env.update({"AIRFLOW_HOME": str(root / "airflow"), "KMEANS_HOME": str(root / "home"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW_PARALLELISM": "2",
                "AIRFLOW__API__PORT": str(port)})
    out = root / "airflow-ui.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.devtools.airflow_env"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
    ui = UI(proc, out, root / "airflow", port)

    def ready() -> bool:
        if READY not in ui.said():
            return False
        # what a person opening the printed address right then gets
        ui.ready_page = httpx.get(f"{ui.url}/", timeout=30).status_code
        # the reports are for Airflow's users: without a token 401, with one 200
        ui.ready_reports = (httpx.get(f"{ui.url}/kmeans/reports/", timeout=30).status_code,
                            httpx.get(f"{ui.url}/kmeans/reports/", timeout=30,
                                      headers=ui.auth()).status_code)
        return True

    def dead() -> str | None:
        code = proc.poll()
        return None if code is None else f"exited {code}: {log_tail(out)}"

    try:
        wait_until(ready, STALL_TIMEOUT, "`make airflow-ui` saying it is ready",
                   progress=ui.progress, alive=dead, interval=0.2)
        yield ui
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: it stops its components' group
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        pgid_file = ui.home / "components.pgid"
        if pgid_file.exists():  # whatever is left of the components
            from pipeline.devtools.airflow_env import stop_group

            stop_group(int(pgid_file.read_text()))


def test_ready_is_said_once_the_ui_answers_and_says_where_the_password_is(airflow_ui_target):
    ui = airflow_ui_target
    assert (ui.ready_page, ui.ready_reports) == (200, (401, 200)), ui.said()
    page = httpx.get(f"{ui.url}/", timeout=30).text
    assert "<title>Airflow</title>" in page and 'id="root"' in page
    said = ui.said()
    passwords = ui.home / "passwords.json"
    assert f"the password is kept in {passwords}" in said, said
    password = json.loads(passwords.read_text())["admin"]
    assert f"the password generated at this first start: {password}" in said, said
    assert said.index("starting Airflow") < said.index(READY)


def _listening(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, _, state = line.split()[1:4]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc writes each 32-bit word in the host's (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def test_the_api_server_listens_on_loopback_only(airflow_ui_target):
    ui = airflow_ui_target
    assert _listening(ui.port) == {"127.0.0.1"}
    # the machine's other addresses do not answer on the port
    others = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None,
                                                          socket.AF_INET)} - {"127.0.0.1"}
    for address in others:
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, ui.port)) != 0, address


def test_every_airflow_url_follows_airflows_own_port(airflow_ui_target):
    """AIRFLOW__API__PORT alone: the API server answers there, and the environment the
    components (and so the task processes they fork) run with has the API server's base URL,
    the tasks' execution API and the review links (KMEANS_REPORTS_URL) there. A component that
    renamed its process (setproctitle) overwrote what /proc shows of its environment: it is
    skipped; the others are read."""
    ui = airflow_ui_target
    assert f"Airflow is ready: {ui.url}" in ui.said()
    read = []
    for component in ("scheduler", "dag-processor", "triggerer", "api-server"):
        pid = int((ui.home / "components" / f"{component}.pid").read_text())
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        environ = dict(item.decode(errors="replace").split("=", 1) for item in raw
                       if b"=" in item)
        if environ.get("AIRFLOW_HOME") != str(ui.home):
            continue
        read.append(component)
        assert environ["AIRFLOW__API__HOST"] == "127.0.0.1"
        assert environ["AIRFLOW__API__BASE_URL"] == ui.url
        assert environ["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{ui.url}/execution/"
        assert environ["KMEANS_REPORTS_URL"] == f"{ui.url}/kmeans/reports"
    assert read, "no component's environment could be read"


def test_the_k_means_reports_entry_opens_the_reports(airflow_ui_target):
    ui = airflow_ui_target
    password = json.loads((ui.home / "passwords.json").read_text())["admin"]
    with airflow_ui.browser(SCREENSHOTS) as page:
        airflow_ui.log_in(page, ui.url, "admin", password)
        opened = airflow_ui.open_reports_from_nav(page, ui.url)
        assert "/plugin/kmeans-reports" in opened.url, opened.url
