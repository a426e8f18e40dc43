"""The Airflow plugin that serves the reports folder: what it serves, and what it refuses.

The app is tested without importing Airflow (imported at collection, Airflow would configure
itself before the session's metadata DB is set up)."""

import pytest
from starlette.testclient import TestClient

from pipeline.orchestration import reports_app


@pytest.fixture
def client(settings):
    drift = settings.reports_dir / "drift"
    drift.mkdir(parents=True)
    (drift / "a-vs-v1.html").write_text("<html>evidently</html>")
    (drift / "a-vs-v1.json").write_text("{}")
    (settings.reports_dir / "notes.txt").write_text("not a report")
    (settings.home / "secret.html").write_text("outside the reports folder")
    return TestClient(reports_app.reports_app)


def test_serves_a_report_and_lists_every_report(client):
    reply = client.get("/reports/drift/a-vs-v1.html")
    assert reply.status_code == 200 and reply.text == "<html>evidently</html>"
    assert reply.headers["content-type"].startswith("text/html")
    assert reply.headers["x-content-type-options"] == "nosniff"
    index = client.get("/reports/")
    assert index.status_code == 200
    assert 'href="drift/a-vs-v1.html"' in index.text and 'href="drift/a-vs-v1.json"' in index.text
    assert "notes.txt" not in index.text and "2 reports" in index.text


@pytest.mark.parametrize("path", [
    "/reports/../secret.html", "/reports/%2e%2e/secret.html", "/reports/drift/../../secret.html",
    "/reports/notes.txt", "/reports/drift/missing.html", "/reports/drift/a-vs-v1.html%00.txt",
    "/reports//etc/passwd",
])
def test_refuses_what_is_not_a_report_inside_the_folder(client, path):
    reply = client.get(path)
    assert reply.status_code == 404, path
    assert "outside the reports folder" not in reply.text


def test_a_link_out_of_the_folder_is_neither_listed_nor_served(client, settings, tmp_path):
    """The index showed /etc/passwd's size and date through a symbolic link."""
    outside = tmp_path / "elsewhere.html"
    outside.write_text("<html>not a report of ours</html>")
    (settings.reports_dir / "drift" / "passwd.html").symlink_to(outside)
    (settings.reports_dir / "inside.html").symlink_to(settings.reports_dir / "drift" /
                                                      "a-vs-v1.html")
    index = client.get("/reports/").text
    assert "passwd" not in index and "3 reports" in index  # a link inside the folder stays
    assert client.get("/reports/drift/passwd.html").status_code == 404
    assert client.get("/reports/inside.html").text == "<html>evidently</html>"


def test_every_request_passes_the_check_before_anything_is_read(settings):
    """The plugin gives Airflow's auth manager as the check (the real API server's 401 and 200:
    tests/integration/airflow/test_airflow_ui.py and test_airflow_scheduler.py)."""
    asked = []

    async def check(request):
        asked.append(request.url.path)
        if request.headers.get("authorization") != "Bearer good":
            return reports_app.refusal(401, "not authenticated")
        return None

    guarded = TestClient(reports_app.make_app(check))
    (settings.reports_dir / "drift").mkdir(parents=True)
    (settings.reports_dir / "drift" / "r.html").write_text("<html>r</html>")
    for path in ("/reports/", "/reports/drift/r.html", "/reports/../secret.html"):
        refused = guarded.get(path)
        assert (refused.status_code, refused.json()) == (401, {"error": "not authenticated"})
    assert guarded.get("/reports/drift/r.html",
                       headers={"Authorization": "Bearer good"}).text == "<html>r</html>"
    assert len(asked) == 4


def test_the_plugin_mounts_the_app_and_links_it_in_the_ui(airflow_db):
    from pipeline.orchestration import airflow_plugin

    plugin = airflow_plugin.KMeansPlugin
    assert plugin.fastapi_apps[0]["url_prefix"] == "/kmeans"
    view = plugin.external_views[0]
    # with a url_route the UI links the entry to a page of its own that embeds href (without
    # one, the entry was a button that went nowhere: tests/integration/airflow/test_airflow_ui.py
    # clicks it)
    assert (view["name"], view["href"], view["url_route"], view["destination"]) == (
        "K-means reports", "/kmeans/reports/", "kmeans-reports", "nav")
