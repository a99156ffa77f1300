"""Logs as the seed queries them: tail.until, tail.until_json, tail.follow(lines_back=2),
json(), and waits that fail clearly or with the predicate's own exception."""

import collections.abc
import json

import pytest

import hitchserve
from conftest import PATIENCE, py

# Prints each line (and a JSON line) it reads from a FIFO the tests write into. Opened
# read-write, once: it never sees an end of file, so it never closes and reopens it (a
# FIFO closed while a writer's lines are in it loses them: a test then waited forever).
ECHO = """
    import json, os, sys
    fifo = sys.argv[1]
    os.mkfifo(fifo)
    f = os.fdopen(os.open(fifo, os.O_RDWR), "r")
    print("READY")
    for line in f:
        line = line.rstrip("\\n")
        print(line)
        if line.startswith("{"):
            continue
        print(json.dumps({"echo": line}))
"""


@pytest.fixture
def echo(service_bundle, project):
    fifo = str(project / "in.fifo")
    service_bundle["Echo"] = hitchserve.Service(
        command=py(ECHO) + [fifo],
        log_line_ready_checker=lambda line: line == "READY",
    )
    service_bundle.startup()
    echo = service_bundle["Echo"]

    def say(*lines):
        with open(fifo, "w") as f:
            f.write("".join(l + "\n" for l in lines))

    echo.say = say
    return echo


def test_tail_until_returns_the_matching_line_and_moves_past_it(echo):
    tail = echo.logs.out.tail
    echo.say("one", "two", "three")
    line = tail.until(lambda l: l.startswith("t"), timeout=PATIENCE)
    assert line == "two"
    assert isinstance(line, hitchserve.LogLine)
    assert (line.service, line.stream) == ("Echo", "stdout")
    assert tail.until(lambda l: l.startswith("t"), timeout=PATIENCE) == "three"


def test_a_line_copies_and_pickles_whole(echo):
    import copy
    import pickle

    echo.say("keep me")
    line = echo.logs.out.tail.until(lambda l: l == "keep me", timeout=PATIENCE, lines_back=5)
    for again in (copy.copy(line), copy.deepcopy(line), pickle.loads(pickle.dumps(line))):
        assert isinstance(again, hitchserve.LogLine)
        assert again == "keep me"
        assert (again.service, again.stream, again.seq, again.time, again.console) == (
            line.service,
            line.stream,
            line.seq,
            line.time,
            line.console,
        )


def test_tail_until_with_lines_back_sees_lines_already_there(echo):
    echo.say("early bird")
    echo.logs.tail.until(lambda l: l == '{"echo": "early bird"}', timeout=PATIENCE, lines_back=5)
    assert echo.logs.tail.until(lambda l: l == "early bird", timeout=PATIENCE, lines_back=5) == "early bird"
    # More lines back than there are, however many: all of them.
    assert echo.logs.tail.until(lambda l: l == "READY", timeout=PATIENCE, lines_back=2**64) == "READY"
    assert echo.logs.last(2**70)[0] == "READY"


def test_until_json_returns_the_dict(echo):
    tail = echo.logs.out.tail
    echo.say("hello", '{"subject": "Reminder", "payload": "Remind me about upcoming gig."}')
    email = tail.until_json(lambda d: d.get("subject") == "Reminder", timeout=PATIENCE)
    assert email == {"subject": "Reminder", "payload": "Remind me about upcoming gig."}
    assert {"echo": "hello"} in echo.logs.json()


def test_until_json_looks_only_at_objects_and_arrays(echo):
    # `200` and `true` are JSON too, but not what a condition that looks inside can take.
    tail = echo.logs.out.tail
    echo.say("200", "true", '"text"', '{"subject": "Reminder"}')
    email = tail.until_json(lambda email: "subject" in email, timeout=PATIENCE)
    assert email == {"subject": "Reminder"}


def test_follow_lines_back_2_is_a_generator_of_the_two_last_lines_then_new_ones(echo):
    tail = echo.logs.out.tail
    echo.say("a", "b")
    tail.until(lambda l: l == '{"echo": "b"}', timeout=PATIENCE)
    follow = echo.logs.out.tail.follow(lines_back=2)
    assert isinstance(follow, collections.abc.Generator)
    assert next(follow) == "b"
    assert next(follow) == '{"echo": "b"}'
    echo.say("c")
    assert next(follow) == "c"


def test_a_closed_follow_returns_no_more_lines(echo):
    follow = echo.logs.out.tail.follow()
    echo.say("a")
    assert next(follow) == "a"
    follow.close()
    echo.say("b")
    echo.logs.out.tail.until(lambda l: l == "b", timeout=PATIENCE, lines_back=2)
    assert next(follow, None) is None


def test_printed_logs_and_lines_are_padded_as_the_console_pads_them(echo, service_bundle):
    echo.say("x")
    # The echo prints the line, then its JSON: wait for the second.
    echo.logs.out.tail.until(lambda l: l == '{"echo": "x"}', timeout=PATIENCE, lines_back=3)
    # The console's width here: "Err Echo" (8).
    assert "[    Echo] x\n" in str(echo.logs.out)
    assert repr(echo.logs.out).splitlines()[0] == "[    Echo] READY"
    assert echo.logs.out.last(1)[0].console == '[    Echo] {"echo": "x"}'
    assert "[   Hitch] Starting Echo" in str(service_bundle.logs)
    with pytest.raises(hitchserve.NoSuchService, match=r"\(it has: none yet\)"):
        hitchserve.ServiceBundle(".")["Echo"]


def test_follow_ends_when_the_service_stops(echo, service_bundle):
    follow = echo.logs.tail.follow(lines_back=1)
    service_bundle.shutdown()
    assert list(follow) == [echo.logs.last(1)[0]]


def test_a_wait_that_times_out_says_what_it_waited_for_and_shows_the_last_lines(echo):
    echo.say("the last thing said")
    echo.logs.tail.until(lambda l: l == "the last thing said", timeout=PATIENCE, lines_back=3)
    with pytest.raises(hitchserve.LogTimeout) as raised:
        echo.logs.tail.until(lambda l: l == "never", timeout=0.2)
    assert isinstance(raised.value, TimeoutError)
    assert "timed out after 0.2 s waiting for a matching line in `Echo`'s logs" in str(raised.value)
    assert any("the last thing said" in l for l in raised.value.last_lines)


def test_a_wait_that_times_out_names_its_service(echo, service_bundle):
    for logs in (echo.logs, echo.logs.err, echo.logs.out):
        with pytest.raises(hitchserve.LogTimeout) as raised:
            logs.tail.until_json(lambda v: False, timeout=0.05)
        assert raised.value.service == "Echo"
    with pytest.raises(hitchserve.LogTimeout) as raised:
        service_bundle.logs.tail.until(lambda l: False, timeout=0.05)
    assert raised.value.service is None  # the whole bundle's logs


@pytest.mark.parametrize("bad, error", [(-5, ValueError), ("2", TypeError), (1.5, TypeError)])
def test_a_bad_lines_back_is_refused_naming_the_argument(echo, bad, error):
    tail = echo.logs.tail
    for call in (
        lambda: tail.until(lambda l: True, timeout=PATIENCE, lines_back=bad),
        lambda: tail.until_json(lambda v: True, timeout=PATIENCE, lines_back=bad),
        lambda: tail.follow(lines_back=bad),
    ):
        with pytest.raises(error, match="lines_back is a number of lines"):
            call()
    with pytest.raises(error, match="n is a number of lines"):
        echo.logs.last(bad)


def test_a_predicate_that_raises_fails_the_wait_with_that_exception(echo):
    tail = echo.logs.out.tail
    echo.say("x")
    with pytest.raises(KeyError, match="subject"):
        tail.until_json(lambda d: d["subject"] == "Reminder", timeout=PATIENCE)


def test_a_wait_on_a_service_that_exits_ends_at_once(service_bundle):
    service_bundle["Short"] = hitchserve.Service(
        command=py("""
            import sys
            print("READY")
            sys.stdin.read()
        """),
        log_line_ready_checker=lambda l: l == "READY",
    )
    service_bundle.startup()
    with pytest.raises(hitchserve.LogEnded) as ended:
        service_bundle["Short"].logs.tail.until(lambda l: l == "never", timeout=PATIENCE)
    assert ended.value.service == "Short"
    with pytest.raises(hitchserve.LogEnded) as ended:
        service_bundle["Short"].logs.out.tail.until_json(lambda v: False, timeout=PATIENCE)
    assert ended.value.service == "Short"
    with pytest.raises(hitchserve.ServiceExited):
        service_bundle.check()
    # Told by check(): the fixture's shutdown doesn't fail the test for it.
    service_bundle.shutdown()


def test_the_bundles_logs_hold_every_service_and_its_own_lines(echo, service_bundle):
    service_bundle.log("a note from the test")
    lines = service_bundle.logs.entries()
    assert any(l.service == "Echo" and l == "READY" for l in lines)
    assert any(l == "a note from the test" for l in lines)
    assert service_bundle.all_log.endswith("logs/all.log")


# Asks for a password without a newline, then waits for the test to answer (a file).
LOGIN = """
    import os, sys, time
    answer = sys.argv[1]
    print("READY")
    sys.stdout.write("Password: ")
    sys.stdout.flush()
    while not os.path.exists(answer):
        time.sleep(0.01)
    print("accepted")
    print("welcome")
    while True:
        time.sleep(3600)
"""


def test_tail_until_sees_a_prompt_without_a_newline_then_the_rest_of_its_line(service_bundle, project):
    answer = project / "answer"
    service_bundle["Login"] = hitchserve.Service(
        command=py(LOGIN) + [str(answer)],
        log_line_ready_checker=lambda line: line == "READY",
    )
    service_bundle.startup()
    logs = service_bundle["Login"].logs.out
    tail = logs.tail
    prompt = tail.until(lambda l: l.startswith("Password:"), timeout=PATIENCE)
    assert prompt == "Password: "
    assert prompt.is_partial and not prompt.is_rest
    assert logs.lines() == ["READY"]
    answer.touch()
    # The same tail goes on with the rest of the prompt's line, not the prompt again.
    rest = tail.until(lambda l: True, timeout=PATIENCE)
    assert rest == "accepted" and rest.is_rest and not rest.is_partial
    welcome = tail.until(lambda l: True, timeout=PATIENCE)
    assert welcome == "welcome" and not (welcome.is_partial or welcome.is_rest)
    assert logs.lines() == ["READY", "Password: accepted", "welcome"]
    # Copied and pickled with its shape.
    import copy, pickle
    assert pickle.loads(pickle.dumps(prompt)).is_partial and copy.copy(rest).is_rest


def test_json_lines_with_nan_and_infinity_are_what_json_loads_gives(echo):
    # Python's json.dumps writes them; the lines were skipped as not JSON.
    text = '{"latency": NaN, "peak": Infinity, "low": -Infinity, "event": "req"}'
    echo.say(text)
    value = echo.logs.out.tail.until_json(lambda d: d.get("event") == "req", timeout=PATIENCE, lines_back=5)
    assert value["latency"] != value["latency"]  # NaN
    assert (value["peak"], value["low"]) == (float("inf"), float("-inf"))
    assert any(isinstance(v, dict) and v.get("event") == "req" for v in echo.logs.json())


def test_json_values_are_what_json_loads_gives_key_order_and_big_integers_kept(echo):
    text = '{"z": 1, "a": [2, {"y": 3, "b": 4}], "big": 12345678901234567890123}'
    echo.say(text)
    value = echo.logs.out.tail.until_json(lambda d: "big" in d, timeout=PATIENCE, lines_back=5)
    assert value == json.loads(text)
    assert list(value) == ["z", "a", "big"] and list(value["a"][1]) == ["y", "b"]
    assert value["big"] == 12345678901234567890123
    stored = [v for v in echo.logs.json() if isinstance(v, dict) and "big" in v]
    assert stored == [value] and list(stored[0]) == ["z", "a", "big"]
