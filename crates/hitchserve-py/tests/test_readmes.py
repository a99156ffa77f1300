"""The Python examples of both READMEs, run as written (a stand-in `manage.py` plays Django)."""

import datetime
import os
import re
import textwrap

import pytest

import hitchserve
from conftest import REPO

# Plays `manage.py runserver PORT` (a real HTTP server that logs each request to stderr as
# Django does) and `manage.py migrate`.
MANAGE_PY = """\
    #!/usr/bin/env python3
    import http.server, sys
    if sys.argv[1:] == ["migrate"]:
        print("No migrations to apply.")
        sys.exit(0)
    assert sys.argv[1] == "runserver", sys.argv

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello")

        def log_request(self, code="-", size="-"):
            print(f'[11/Jul/2015 10:36:59] "{self.requestline}" {code} 5', file=sys.stderr, flush=True)

    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[-1])), Page)
    print(f"Starting development server at http://127.0.0.1:{sys.argv[-1]}/")
    print("Quit the server with CONTROL-C.")
    server.serve_forever()
"""

READMES = {
    "README.md": "## Python",
    "crates/hitchserve-py/README.md": "## Example",
}


def python_blocks(readme: str, section: str) -> list:
    text = (REPO / readme).read_text()
    start = text.index(section + "\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.mark.parametrize("readme", sorted(READMES))
def test_the_readmes_ten_line_example_runs(readme, hitchserve_project_directory, monkeypatch, capfd):
    monkeypatch.chdir(hitchserve_project_directory)  # the example's project_directory="."
    with open("manage.py", "w") as f:
        f.write(textwrap.dedent(MANAGE_PY))
    os.chmod("manage.py", 0o755)  # as Django makes it: the example runs ./manage.py
    example = python_blocks(readme, READMES[readme])[0]
    assert "time_travel(timedelta(days=30))" in example
    before = datetime.datetime.now()
    exec(compile(example, readme, "exec"), {"__name__": "readme_example"})
    out = capfd.readouterr().out
    # `print` writes its parts one by one: a service line (the bundle prints them from its
    # own threads) may land in the middle of the example's line. Take the console's out.
    ours = re.sub(r"\[[ \w]+\] [^\n]*\n", "", out)
    printed_now = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.?\d*) \d+$", ours, re.M)
    assert printed_now, out
    now = datetime.datetime.fromisoformat(printed_now.group(1))
    assert now - before >= datetime.timedelta(days=30)
    assert "Time traveling to 30 days from now" in out


@pytest.mark.parametrize("readme", sorted(READMES))
def test_the_readmes_fixture_example_runs(readme, service_bundle):
    text = (REPO / readme).read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def test_" in b]
    assert blocks, readme
    namespace = {"hitchserve": hitchserve}
    exec(compile(blocks[0], readme, "exec"), namespace)
    test = next(v for k, v in namespace.items() if k.startswith("test_"))
    test(service_bundle)
    assert service_bundle["Web"].is_ready


def test_the_fault_injection_example_runs(service_bundle):
    blocks = python_blocks("crates/hitchserve-py/README.md", "## Fault injection")
    namespace = {}
    exec(compile(blocks[0], "crates/hitchserve-py/README.md", "exec"), namespace)
    test = next(v for k, v in namespace.items() if k.startswith("test_"))
    test(service_bundle)
    assert service_bundle["Web"].incarnation == 2
