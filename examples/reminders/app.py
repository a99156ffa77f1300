"""A small reminders web app, standard library only: the showcase of hitchserve.

    python3 app.py serve              # HTTP on $APP_PORT; prints READY once listening
    python3 app.py add EMAIL DAYS MESSAGE   # POST /reminders to the running server
    python3 app.py send-due           # POST /send-due: email every reminder whose time has come

State lives in SQLite at $REMINDERS_DB; mail goes to SMTP on 127.0.0.1:$SMTP_PORT.
Every time here is time.time(): under hitchserve's time travel, the app's own clock.
"""
import http.server
import json
import os
import smtplib
import sqlite3
import sys
import time
import urllib.request
from email.message import EmailMessage

DAY = 86400


def db():
    conn = sqlite3.connect(os.environ["REMINDERS_DB"])
    conn.execute(
        "CREATE TABLE IF NOT EXISTS reminders (id INTEGER PRIMARY KEY, email TEXT, "
        "message TEXT, due REAL, sent INTEGER DEFAULT 0)"
    )
    return conn


def send_due():
    conn = db()
    now = time.time()
    due = conn.execute(
        "SELECT id, email, message FROM reminders WHERE sent = 0 AND due <= ?", (now,)
    ).fetchall()
    for rid, email, message in due:
        mail = EmailMessage()
        mail["From"] = "Reminders <noreply@reminders.example>"
        mail["To"] = email
        mail["Subject"] = "Reminder: " + message
        mail.set_content(
            "You asked to be reminded: %s\nSee https://reminders.example/r/%d\n" % (message, rid)
        )
        with smtplib.SMTP("127.0.0.1", int(os.environ["SMTP_PORT"])) as smtp:
            smtp.send_message(mail)
        conn.execute("UPDATE reminders SET sent = 1 WHERE id = ?", (rid,))
        conn.commit()
        print("sent reminder %d to %s" % (rid, email), flush=True)
    return len(due)


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/reminders":
            conn = db()
            due = time.time() + float(body["days"]) * DAY
            cur = conn.execute(
                "INSERT INTO reminders (email, message, due) VALUES (?, ?, ?)",
                (body["email"], body["message"], due),
            )
            conn.commit()
            print("reminder %d for %s due in %s days" % (cur.lastrowid, body["email"], body["days"]), flush=True)
            self.reply(201, {"id": cur.lastrowid})
        elif self.path == "/send-due":
            self.reply(200, {"sent": send_due()})
        else:
            self.reply(404, {"error": "no such page"})

    def log_message(self, fmt, *args):
        sys.stderr.write("%s\n" % (fmt % args))


def post(path, body):
    url = "http://127.0.0.1:%s%s" % (os.environ["APP_PORT"], path)
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if what == "serve":
        db().close()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["APP_PORT"])), Handler)
        print("READY", flush=True)
        server.serve_forever()
    elif what == "add":
        print(json.dumps(post("/reminders", {"email": sys.argv[2], "days": sys.argv[3], "message": sys.argv[4]})))
    elif what == "send-due":
        print(json.dumps(post("/send-due", {})))
    else:
        sys.exit("usage: app.py serve | add EMAIL DAYS MESSAGE | send-due")


if __name__ == "__main__":
    main()
