"""The queue API over real HTTP, on a real PostgreSQL: sign-in, access control, CSRF,
overview, list, item, workflow, CSV, audit. Expected figures come from the records the
test writes (contract-shaped alerts), never from the service's own code."""

from __future__ import annotations

import csv
import io
import time

import psycopg
import pytest
import requests

from tests.queue.pg import create_queue_db, drop_queue_db
from tests.queue.service import QueueService, add_user, ago, alert, charge_line, sign_in, write

CODER_PW = "coder-password-7f3a9c"
PHARM_PW = "pharmacist-password-2b8d1e"

# (alert_id, queue, reason, payer, dollars, first seen, state)
SEED = [
    ("c-new", "coding", "EM_MISSING_MODIFIER_25", "medicare", 40.0, dict(hours=2), "open"),
    ("c-2d", "coding", "MODIFIER_NOT_ALLOWED", "commercial", 15.5, dict(days=2), "open"),
    ("c-5d", "coding", "EM_MISSING_MODIFIER_25", "medicaid", 100.0, dict(days=5), "open"),
    ("c-9d", "coding", "DUPLICATE_SERVICE", "medicare", 7.25, dict(days=9), "open"),
    ("c-res", "coding", "EM_MISSING_MODIFIER_25", "medicare", 22.0, dict(days=1, hours=1), "resolved"),
    ("p-1", "pharmacy", "MISSING_NDC", "medicare", 55.0, dict(hours=3), "open"),
]


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    db = create_queue_db(*pg_server)
    alerts = []
    for aid, queue, reason, payer, dollars, age, state in SEED:
        alerts.append(
            (
                alert(
                    aid,
                    1,
                    queue=queue,
                    reason=reason,
                    payer=payer,
                    dollars=dollars,
                    line_id=f"L-{aid}",
                    sources=(f"ev-{aid}",),
                ),
                ago(**age),
            )
        )
        if state == "resolved":
            alerts.append(
                (
                    alert(
                        aid,
                        2,
                        state="resolved",
                        queue=queue,
                        reason=reason,
                        payer=payer,
                        dollars=dollars,
                        line_id=f"L-{aid}",
                        sources=(f"ev-{aid}",),
                    ),
                    ago(minutes=1),
                )
            )
    lines = [
        (charge_line("L-c-new", npi="1234567893", sources=("ev-c-new",)), ago(hours=2)),
        (charge_line("L-c-new-drug", code="J0696", sources=("ev-c-new",)), ago(hours=2)),
        (charge_line("L-c-2d", npi="1111111112", sources=("ev-c-2d",)), ago(days=2)),
    ]
    write(db.dsn, alerts=alerts, lines=lines)
    add_user(db, "coder", "coding", CODER_PW)
    add_user(db, "coder2", "coding", "second-coder-password-1")
    add_user(db, "pharmacist", "pharmacy", PHARM_PW)
    tmp = tmp_path_factory.mktemp("queue-api")
    svc = QueueService(tmp, db, extra=["--trusted-user-header", "X-Remote-User"]).start().wait_ready()
    try:
        yield db, svc
    finally:
        svc.stop()
        drop_queue_db(db)


@pytest.fixture(scope="module")
def coder(env):
    return sign_in(env[1], "coder", CODER_PW)


@pytest.fixture(scope="module")
def pharmacist(env):
    return sign_in(env[1], "pharmacist", PHARM_PW)


def audit_rows(db, **where) -> list[tuple]:
    cond = " AND ".join(f"{k} = %s" for k in where) or "true"
    with db.admin() as conn:
        return conn.execute(
            f"SELECT username, action, alert_id, work_queue, detail FROM access_audit WHERE {cond} "
            "ORDER BY audit_id",
            tuple(where.values()),
        ).fetchall()


# ------------------------------------------------------------------ authentication


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/v1/queues"),
        ("GET", "/api/v1/queues/coding/items"),
        ("GET", "/api/v1/items/c-new"),
        ("GET", "/api/v1/queues/coding/items.csv"),
        ("POST", "/api/v1/items/c-new/status"),
        ("GET", "/api/v1/session"),
    ],
)
def test_no_session_is_401(env, method, path):
    r = requests.request(method, env[1].url(path), json={"status": "done"}, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]


def test_wrong_password_is_401_and_audited(env):
    db, svc = env
    r = requests.post(
        svc.url("/api/v1/session"), json={"username": "coder2", "password": "nope-nope-nope"}, timeout=10
    )
    assert r.status_code == 401
    assert ("coder2", "sign_in_failed") in [(u, a) for u, a, *_ in audit_rows(db, username="coder2")]


def test_repeated_failed_sign_ins_are_slowed(env):
    _, svc = env
    statuses = [
        requests.post(
            svc.url("/api/v1/session"), json={"username": "nobody", "password": "x" * 12}, timeout=20
        ).status_code
        for _ in range(6)
    ]
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    r = requests.post(
        svc.url("/api/v1/session"), json={"username": "nobody", "password": "x" * 12}, timeout=20
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_sign_out_ends_the_session(env):
    _, svc = env
    s, csrf = sign_in(svc, "coder2", "second-coder-password-1")
    assert s.get(svc.url("/api/v1/session"), timeout=10).status_code == 200
    assert s.delete(svc.url("/api/v1/session"), headers={"X-CSRF-Token": csrf}, timeout=10).status_code == 204
    old = s.cookies.get("chargecap_session")
    assert (
        old is None
        or requests.get(
            svc.url("/api/v1/session"), cookies={"chargecap_session": old}, timeout=10
        ).status_code
        == 401
    )


def test_cookie_is_httponly_and_samesite_strict(env):
    r = requests.post(
        env[1].url("/api/v1/session"),
        json={"username": "coder2", "password": "second-coder-password-1"},
        timeout=10,
    )
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert r.headers["Cache-Control"] == "no-store"


def test_sessions_expire(pg_server, tmp_path):
    db = create_queue_db(*pg_server)
    svc = QueueService(tmp_path, db, extra=["--session-idle-minutes", "0.03"]).start()
    try:
        svc.wait_ready()
        add_user(db, "coder", "coding", CODER_PW)
        s, _ = sign_in(svc, "coder", CODER_PW)
        assert s.get(svc.url("/api/v1/queues"), timeout=10).status_code == 200
        time.sleep(2.5)  # idle longer than 0.03 min = 1.8 s
        assert s.get(svc.url("/api/v1/queues"), timeout=10).status_code == 401
    finally:
        svc.stop()
        drop_queue_db(db)


def test_trusted_sso_header_names_the_user(env):
    _, svc = env
    s = requests.Session()
    r = s.get(svc.url("/api/v1/session"), headers={"X-Remote-User": "pharmacist"}, timeout=10)
    assert r.status_code == 200 and r.json()["queues"] == ["pharmacy"]
    assert (
        requests.get(
            svc.url("/api/v1/session"), headers={"X-Remote-User": "stranger"}, timeout=10
        ).status_code
        == 401
    )


def test_trusted_header_refused_unless_on_loopback(queue_db):
    from tests.queue.service import chargecap

    r = chargecap(
        "queue",
        "serve",
        "--dsn",
        queue_db.dsn,
        "--listen",
        "0.0.0.0:0",
        "--trusted-user-header",
        "X-Remote-User",
        timeout=60,
    )
    assert r.returncode != 0 and "only accepted when the service listens on loopback" in r.stderr


# ------------------------------------------------------------------ authorisation and CSRF


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/items/c-new",
        "/api/v1/queues/coding",
        "/api/v1/queues/coding/items",
        "/api/v1/queues/coding/items.csv",
    ],
)
def test_pharmacy_user_cannot_read_coding(env, pharmacist, path):
    s, _ = pharmacist
    assert s.get(env[1].url(path), timeout=10).status_code == 403


@pytest.mark.parametrize(
    "action,body",
    [("status", {"status": "done"}), ("assign", {"assignee": "pharmacist"}), ("notes", {"body": "mine now"})],
)
def test_pharmacy_user_cannot_act_on_a_coding_item(env, pharmacist, action, body):
    db, svc = env
    s, csrf = pharmacist
    r = s.post(svc.url(f"/api/v1/items/c-2d/{action}"), json=body, headers={"X-CSRF-Token": csrf}, timeout=10)
    assert r.status_code == 403
    with db.admin() as conn:
        assert conn.execute("SELECT count(*) FROM alert_note WHERE alert_id = 'c-2d'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM alert_workflow WHERE alert_id = 'c-2d'").fetchone() == (0,)
    assert ("pharmacist", "denied", "c-2d") in [(u, a, i) for u, a, i, *_ in audit_rows(db, alert_id="c-2d")]


def test_overview_lists_only_the_users_queues(env, pharmacist):
    s, _ = pharmacist
    body = s.get(env[1].url("/api/v1/queues"), timeout=10).json()
    assert [q["queue"] for q in body["queues"]] == ["pharmacy"]


@pytest.mark.parametrize("headers", [{}, {"X-CSRF-Token": "forged"}])
def test_missing_or_wrong_csrf_token_is_403(env, coder, headers):
    db, svc = env
    s, _ = coder
    r = s.post(svc.url("/api/v1/items/c-9d/notes"), json={"body": "x"}, headers=headers, timeout=10)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    with db.admin() as conn:
        assert conn.execute("SELECT count(*) FROM alert_note WHERE alert_id = 'c-9d'").fetchone() == (0,)


def test_unknown_item_is_404(env, coder):
    s, _ = coder
    assert s.get(env[1].url("/api/v1/items/no-such-alert"), timeout=10).status_code == 404


# ------------------------------------------------------------------ reads


def test_queue_overview_figures(env, coder):
    s, _ = coder
    o = s.get(env[1].url("/api/v1/queues/coding"), timeout=10).json()
    open_coding = [x for x in SEED if x[1] == "coding" and x[6] == "open"]
    assert o["open_items"] == len(open_coding) == 4
    assert o["dollars_at_risk"] == pytest.approx(sum(x[4] for x in open_coding))
    assert o["aging"] == {"lt_1d": 1, "d1_3": 1, "d3_7": 1, "gt_7d": 1}
    assert o["oldest_item"]["alert_id"] == "c-9d"
    assert 9 * 86400 - 60 < o["oldest_item"]["age_seconds"] < 9 * 86400 + 60
    assert o["resolved_today"] == 1


def test_list_sorts_filters_and_paginates(env, coder):
    _, svc = env
    s, _ = coder
    url = svc.url("/api/v1/queues/coding/items")
    by_dollars = s.get(url, timeout=10).json()
    assert [i["alert_id"] for i in by_dollars["items"]] == ["c-5d", "c-new", "c-2d", "c-9d"]
    assert by_dollars["total"] == 4
    by_age = s.get(url, params={"sort": "age"}, timeout=10).json()
    assert [i["alert_id"] for i in by_age["items"]] == ["c-9d", "c-5d", "c-2d", "c-new"]
    page2 = s.get(url, params={"page": 2, "page_size": 3}, timeout=10).json()
    assert [i["alert_id"] for i in page2["items"]] == ["c-9d"] and page2["total"] == 4
    f = s.get(url, params={"reason_code": "EM_MISSING_MODIFIER_25"}, timeout=10).json()
    assert {i["alert_id"] for i in f["items"]} == {"c-5d", "c-new"}
    f = s.get(url, params={"payer_class": "medicare"}, timeout=10).json()
    assert {i["alert_id"] for i in f["items"]} == {"c-new", "c-9d"}
    f = s.get(url, params={"rendering_npi": "1111111112"}, timeout=10).json()
    assert [i["alert_id"] for i in f["items"]] == ["c-2d"]
    f = s.get(url, params={"service_date_from": "2025-03-15"}, timeout=10).json()
    assert f["items"] == [] and f["total"] == 0
    f = s.get(url, params={"status": "resolved_by_correction"}, timeout=10).json()
    assert [(i["alert_id"], i["status"]) for i in f["items"]] == [("c-res", "resolved_by_correction")]
    assert s.get(url, params={"sort": "nonsense"}, timeout=10).status_code == 400
    assert s.get(url, params={"page": "0"}, timeout=10).status_code == 400


def test_item_shows_its_lines_revisions_and_is_audited(env, coder):
    db, svc = env
    s, _ = coder
    item = s.get(svc.url("/api/v1/items/c-new"), timeout=10).json()
    assert item["message"].startswith("E/M 99213") and item["suggested_fix"] == "Append modifier 25 to 99213"
    assert item["predicted_denial"] == {"carc": "CO-97", "rarc": None}
    assert item["source_event_ids"] == ["ev-c-new"]
    assert sorted(x["line_id"] for x in item["charge_lines"]) == ["L-c-new", "L-c-new-drug"]
    assert [r["revision"] for r in item["revisions"]] == [1]
    assert item["workflow"]["status"] == "new"
    assert ("coder", "view_item", "c-new", "coding") in [r[:4] for r in audit_rows(db, alert_id="c-new")]


# ------------------------------------------------------------------ workflow


def test_workflow_assign_note_done_and_done_still_failing(env, coder):
    db, svc = env
    s, csrf = coder
    h = {"X-CSRF-Token": csrf}
    r = s.post(svc.url("/api/v1/items/c-5d/assign"), json={"assignee": "coder2"}, headers=h, timeout=10)
    assert r.status_code == 200 and r.json()["assignee"] == "coder2" and r.json()["status"] == "in_progress"
    assert (
        s.post(
            svc.url("/api/v1/items/c-5d/assign"), json={"assignee": "pharmacist"}, headers=h, timeout=10
        ).status_code
        == 422
    )  # not a member of coding
    r = s.post(
        svc.url("/api/v1/items/c-5d/notes"), json={"body": "asked Dr. for the note"}, headers=h, timeout=10
    )
    assert r.status_code == 201
    r = s.post(
        svc.url("/api/v1/items/c-5d/status"), json={"status": "waiting_clinician"}, headers=h, timeout=10
    )
    assert r.json()["status"] == "waiting_clinician"
    r = s.post(svc.url("/api/v1/items/c-5d/status"), json={"status": "done"}, headers=h, timeout=10)
    assert r.json()["status"] == "done_still_failing"  # the engine still reports it open
    listed = s.get(svc.url("/api/v1/queues/coding/items"), params={"assignee": "coder2"}, timeout=10).json()
    assert [(i["alert_id"], i["status"]) for i in listed["items"]] == [("c-5d", "done_still_failing")]
    item = s.get(svc.url("/api/v1/items/c-5d"), timeout=10).json()
    assert [n["body"] for n in item["notes"]] == ["asked Dr. for the note"]
    actions = [a for _, a, *_ in audit_rows(db, alert_id="c-5d", username="coder")]
    assert actions[:5] == ["assign", "add_note", "set_status", "set_status", "view_item"]

    # The engine resolves it: the item leaves the active list by itself.
    write(
        db.dsn,
        alerts=[
            (
                alert(
                    "c-5d",
                    2,
                    state="resolved",
                    payer="medicaid",
                    dollars=100.0,
                    reason="EM_MISSING_MODIFIER_25",
                ),
                ago(seconds=1),
            )
        ],
    )
    active = s.get(svc.url("/api/v1/queues/coding/items"), timeout=10).json()
    assert "c-5d" not in [i["alert_id"] for i in active["items"]]
    assert (
        s.get(svc.url("/api/v1/items/c-5d"), timeout=10).json()["workflow"]["status"]
        == "resolved_by_correction"
    )


def test_csv_export_has_the_filtered_rows(env, coder):
    db, svc = env
    s, _ = coder
    r = s.get(svc.url("/api/v1/queues/coding/items.csv"), params={"payer_class": "medicare"}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {x["alert_id"] for x in rows} == {"c-new", "c-9d"}
    assert all(x["work_queue"] == "coding" for x in rows)
    assert any(a == "export_csv" for _, a, *_ in audit_rows(db, username="coder"))


# ------------------------------------------------------------------ audit and secrets


def test_service_role_cannot_change_the_audit(env):
    db, _ = env
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM access_audit").fetchone()[0] > 0
        conn.execute("INSERT INTO access_audit (username, action) VALUES ('t', 'probe')")
        for stmt in (
            "UPDATE access_audit SET username = 'x'",
            "DELETE FROM access_audit",
            "TRUNCATE access_audit",
            "UPDATE alert_revision SET state = 'open'",
            "DELETE FROM alert_note",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)


def test_passwords_never_in_clear_in_the_database_or_logs(env):
    db, svc = env
    with db.admin() as conn:
        for table in ("queue_user", "user_session", "access_audit", "login_failure"):
            text = " ".join(str(r) for r in conn.execute(f"SELECT * FROM {table}").fetchall())
            for pw in (CODER_PW, PHARM_PW, "second-coder-password-1"):
                assert pw not in text, table
        hashes = [h for (h,) in conn.execute("SELECT password_hash FROM queue_user")]
    assert all(h.startswith("$argon2id$") for h in hashes)
    log = svc.log()
    assert log  # the service did log
    for pw in (CODER_PW, PHARM_PW, "second-coder-password-1"):
        assert pw not in log


def test_audit_command_shows_views_and_actions(env, coder):
    from tests.queue.service import chargecap

    db, svc = env
    s, _ = coder
    s.get(svc.url("/api/v1/items/c-9d"), timeout=10)
    r = chargecap("queue", "audit", "--admin-dsn", db.admin_dsn, "--item", "c-9d", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert '"action": "view_item"' in r.stdout and '"username": "coder"' in r.stdout


def test_binds_loopback_by_default():
    from stream_app.queue.settings import QueueSettings

    assert QueueSettings().host == "127.0.0.1"


def test_changed_since_returns_what_changed(env, coder):
    _, svc = env
    s, csrf = coder
    url = svc.url("/api/v1/queues/coding/items")
    since = s.get(svc.url("/api/v1/session"), timeout=10).json()["expires_at"]  # a server-side "now" + idle
    r = s.get(url, params={"changed_since": "2000-01-01T00:00:00Z", "status": "all"}, timeout=10).json()
    assert r["total"] == len([x for x in SEED if x[1] == "coding"])
    assert s.get(url, params={"changed_since": since}, timeout=10).json()["total"] == 0
    assert s.get(url, params={"changed_since": "yesterday"}, timeout=10).status_code == 400
    assert s.get(url, params={"changed_since": "2025-03-14T10:00:00"}, timeout=10).status_code == 400


def test_search_by_patient_or_encounter_stays_within_the_users_queues(env, coder, pharmacist):
    _, svc = env
    s, _ = coder
    url = svc.url("/api/v1/queues/coding/items")
    # Every seeded alert is patient P1, encounter E1 (tests/queue/service.py alert()).
    by_patient = s.get(url, params={"search": "P1", "status": "all"}, timeout=10).json()
    assert by_patient["total"] == len([x for x in SEED if x[1] == "coding"])
    assert (
        s.get(url, params={"search": "E1", "status": "all"}, timeout=10).json()["total"]
        == by_patient["total"]
    )
    assert [i["alert_id"] for i in s.get(url, params={"search": "c-9d"}, timeout=10).json()["items"]] == [
        "c-9d"
    ]
    assert s.get(url, params={"search": "P2"}, timeout=10).json()["total"] == 0
    # The pharmacist's search of the same patient finds only pharmacy items.
    p, _ = pharmacist
    found = p.get(svc.url("/api/v1/queues/pharmacy/items"), params={"search": "P1"}, timeout=10).json()
    assert [i["alert_id"] for i in found["items"]] == ["p-1"]
    assert p.get(url, params={"search": "P1"}, timeout=10).status_code == 403
