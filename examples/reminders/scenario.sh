#!/bin/sh
# The reminders scenario with the command line only. HITCHSERVE names the binary.
set -eu
cd "$(dirname "$0")"
hs="${HITCHSERVE:-hitchserve}"
trap '"$hs" down >/dev/null 2>&1 || true' EXIT

"$hs" up --detach
"$hs" exec App -- python3 app.py add ann@example.com 30 "Call mum"

# 29 days on, cron runs send-due at once; nothing is due yet. (It has not run before:
# every 5 minutes of fake time, so the run awaited below is the one after the travel.)
if "$hs" logs SendDue | grep -q 'cron: running'; then
    echo "cron ran before the time travel" >&2
    exit 1
fi
# `logs --until` waits for a line from now on; -n looks back too, for a run that ended
# before we asked.
"$hs" time-travel +29d
"$hs" logs SendDue --until '^cron: exit 0$' -n 100 --timeout 30s
if [ -n "$("$hs" logs Smtp --json)" ]; then
    echo "an email was sent too early" >&2
    exit 1
fi

# Past 30 days: the reminder goes out.
"$hs" time-travel +2d
"$hs" logs Smtp --until-json 'subject=Reminder: Call mum' -n 100 --timeout 30s
"$hs" logs App --until 'sent reminder 1 to ann@example.com' -n 100 --timeout 30s
"$hs" down
echo "scenario passed"
