"""The ready-made services from hitchserve.services, real servers; the seed's HitchSMTP
example; the reminders scenario as a Python team would write it."""

import datetime
import os
import smtplib
import sys
import urllib.request
from email.message import EmailMessage

import pytest

import hitchserve
from hitchserve.services import Cron, Postgres, PostgresDatabase, PostgresUser, Redis, Smtp
from conftest import PATIENCE, REPO


def send_email(port, subject, body, to="ann@example.com"):
    msg = EmailMessage()
    msg["From"] = "noreply@localhost"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=PATIENCE) as smtp:
        smtp.send_message(msg)


def test_the_seeds_hitchsmtp_until_json(service_bundle_factory):
    bundle = service_bundle_factory(startup_timeout=PATIENCE)
    bundle["HitchSMTP"] = Smtp()
    bundle.startup()
    containing = "upcoming gig"
    inbox = bundle["HitchSMTP"].logs.out.tail
    send_email(bundle["HitchSMTP"].smtp_port, "Reminder", "Remind me about upcoming gig.")
    email = inbox.until_json(
        lambda email: containing in email["payload"] or containing in email["subject"],
        timeout=PATIENCE,
    )
    assert email["subject"] == "Reminder"
    assert email["sent_to"] == ["ann@example.com"]
    assert bundle["HitchSMTP"].logs.json()[-1] == email
    assert bundle["HitchSMTP"].messages() == [email]


def test_smtp_runs_the_mock_this_package_installed(service_bundle, monkeypatch, tmp_path):
    # Nothing but the package: no $HITCHSMTP, no cargo-built hitchsmtp on PATH or in cargo's bin.
    monkeypatch.delenv("HITCHSMTP", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("CARGO_HOME", str(tmp_path))
    service_bundle["HitchSMTP"] = Smtp()
    service_bundle.startup()
    smtp = service_bundle["HitchSMTP"]
    assert any(os.path.basename(arg) == "hitchsmtp" for arg in smtp.process.cmdline()[:2])
    assert "python" in os.path.basename(smtp.process.exe())
    inbox = smtp.logs.out.tail
    send_email(smtp.smtp_port, "Hello", "From the wheel's own mock.")
    assert inbox.until_json(lambda m: m["subject"] == "Hello", timeout=PATIENCE)["payload"]


def test_python_m_hitchserve_smtp_is_the_mock(service_bundle):
    service_bundle["Mock"] = hitchserve.Service(
        command=[sys.executable, "-m", "hitchserve.smtp", "--port", "{port.smtp}"],
        ports=["smtp"],
        log_line_ready_checker=lambda line: line.startswith("hitchsmtp: listening on 127.0.0.1:"),
    )
    service_bundle.startup()
    mock = service_bundle["Mock"]
    inbox = mock.logs.out.tail
    send_email(mock.port("smtp"), "Hi", "Hello", to="550-unknown-user@example.com")
    assert inbox.until_json(lambda m: True, timeout=PATIENCE)["sent_to"] == ["550-unknown-user@example.com"]


def test_redis_cli_and_url(service_bundle):
    service_bundle["Redis"] = Redis(config={"maxmemory": "10mb"})
    service_bundle.startup()
    redis = service_bundle["Redis"]
    redis.cli("SET", "greeting", "hello").run()
    assert redis.cli("GET", "greeting").run(check_output=True).strip() == "hello"
    assert redis.url == f"redis://127.0.0.1:{redis.redis_port}"


def test_postgres_users_databases_and_psql_follow_time_travel(service_bundle_factory):
    # As root, PostgreSQL runs as `postgres`: the fixture's project directory must be in its
    # reach (pytest's tmp_path, under a 0700 directory, is not).
    service_bundle = service_bundle_factory(startup_timeout=PATIENCE)
    service_bundle["Postgres"] = Postgres(
        users=[PostgresUser("app", "secret")],
        databases=[PostgresDatabase("app", "app")],
    )
    service_bundle.startup()
    pg = service_bundle["Postgres"]
    pg.psql("app", "CREATE TABLE reminders (id int); INSERT INTO reminders VALUES (42);").run()
    out = pg.psql("app", "SELECT id FROM reminders;").checked_output()
    assert b"42" in out.stdout
    assert pg.connection_url("app").startswith("postgresql://")
    service_bundle.time_travel(datetime=__import__("datetime").datetime(2031, 1, 2, 12, 0))
    year = pg.psql("app", "SELECT extract(year from now())::int AS y;").checked_output()
    assert b"2031" in year.stdout


def test_ready_made_hooks_cannot_be_overridden(service_bundle):
    class MyRedis(Redis):
        def poststart(self):
            pass

    service_bundle["Redis"] = MyRedis()
    with pytest.raises(TypeError, match="its own poststart hook"):
        service_bundle.startup()


def test_the_reminders_scenario(service_bundle_factory):
    """A reminder due in 30 days: nothing after 29 days, the email after 31."""
    app_dir = REPO / "examples" / "reminders"
    bundle = service_bundle_factory(startup_timeout=PATIENCE)
    env = {
        "REMINDERS_DB": "{run}/reminders.sqlite",
        "SMTP_PORT": "{Smtp.port.smtp}",
    }
    bundle["Smtp"] = Smtp()
    bundle["App"] = hitchserve.Service(
        command=[sys.executable, "-u", "app.py", "serve"],
        log_line_ready_checker=lambda line: "READY" in line,
        directory=str(app_dir),
        env_vars=dict(env, APP_PORT="{port.http}"),
        ports=["http"],
        needs=[bundle["Smtp"]],
    )
    bundle["SendDue"] = Cron(
        every=300,
        command=[sys.executable, "app.py", "send-due"],
        directory=str(app_dir),
        env_vars=dict(env, APP_PORT="{App.port.http}"),
        needs=[bundle["App"]],
    )
    bundle.startup()
    app, smtp, cron = bundle["App"], bundle["Smtp"], bundle["SendDue"]

    app.subcommand(sys.executable, "app.py", "add", "ann@example.com", "30", "Call mum").run()

    cron_runs = cron.logs.tail
    bundle.time_travel(days=29)
    cron_runs.until(lambda line: line == "cron: exit 0", timeout=PATIENCE)
    assert smtp.messages() == []

    inbox = smtp.logs.out.tail
    bundle.time_travel(days=2)
    email = inbox.until_json(lambda m: m["subject"] == "Reminder: Call mum", timeout=PATIENCE)
    assert email["sent_to"] == ["ann@example.com"]
    assert email["links"]
    app.logs.tail.until(lambda l: l == "sent reminder 1 to ann@example.com", timeout=PATIENCE, lines_back=100)


@pytest.mark.parametrize("every", [0, -5, 0.0, datetime.timedelta(0), float("inf")])
def test_a_cron_interval_of_no_time_is_refused_where_it_is_given(every):
    # 0 ran the command over and over; -5 raised a bare ValueError from inside startup().
    with pytest.raises(ValueError, match="`every` must be a time of more than 0 seconds"):
        Cron(every=every, command=["true"])



@pytest.mark.parametrize("every", ["5m", None, True, [300]])
def test_a_cron_interval_that_is_not_a_time_is_refused_naming_it(every):
    # "5m" (the bundle file's way) raised float()'s bare ValueError, naming nothing.
    with pytest.raises(TypeError, match="`every` must be a number of seconds or a timedelta"):
        Cron(every=every, command=["true"])
