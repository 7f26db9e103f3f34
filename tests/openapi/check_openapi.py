#!/usr/bin/env python3
"""/openapi.json as tools read it: validated as OpenAPI 3.1 by
openapi-spec-validator, then a Python client generated from it by
openapi-python-client calls the running server.

    python3 tests/openapi/check_openapi.py BASE_URL USERNAME PASSWORD DEVICE_ID WORKDIR

The server must have user USERNAME (an admin) with PASSWORD, device DEVICE_ID
with a location published retained on devices/DEVICE_ID/location, and the
flag map.clustering. Prints one "ok"/"FAIL" line per check, then
"N passed, M failed". Exit status 0 only if all passed; 77 when a tool is
not installed.
"""

import io
import json
import subprocess
import sys
import traceback
import urllib.request

try:
    import openapi_python_client  # noqa: F401
    from openapi_spec_validator import validate
except ImportError as e:
    print(f"skipped: {e.name} is not installed for {sys.executable} "
          "(pip install openapi-spec-validator openapi-python-client)")
    sys.exit(77)

base, username, password, device, workdir = sys.argv[1:6]
results = []


def check(name):
    def run(fn):
        try:
            fn()
            results.append(True)
            print(f"ok   {name}")
        except Exception:
            results.append(False)
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
        return fn
    return run


with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as resp:
    doc = json.load(resp)


@check("the document validates as OpenAPI 3.1")
def _():
    assert doc["openapi"].startswith("3.1"), doc["openapi"]
    validate(doc)


spec = f"{workdir}/openapi.json"
with open(spec, "w") as f:
    json.dump(doc, f)


@check("a client generates from it with no operation left out")
def _():
    out = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", spec,
         "--meta", "none", "--output-path", f"{workdir}/mapcast_client"],
        capture_output=True, text=True, timeout=120,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "WARNING" not in text, text


sys.path.insert(0, workdir)
from mapcast_client import AuthenticatedClient, Client  # noqa: E402
from mapcast_client.api.flags import get_flag  # noqa: E402
from mapcast_client.api.history import get_history  # noqa: E402
from mapcast_client.api.identities import create_session, get_device, list_devices  # noqa: E402
from mapcast_client.api.topics import put_topic  # noqa: E402
from mapcast_client.models import Flag, Problem, Published, Session, SignIn  # noqa: E402
from mapcast_client.types import File  # noqa: E402

# Undocumented statuses raise: every answer must be one the document names.
anonymous = Client(base_url=base, raise_on_unexpected_status=True)
state = {}


@check("sign in: the answer parses as Session")
def _():
    session = create_session.sync(client=anonymous, body=SignIn(username=username, password=password))
    assert isinstance(session, Session), session
    state["client"] = AuthenticatedClient(base_url=base, token=session.token, raise_on_unexpected_status=True)


@check("a wrong password: a documented 401 that parses as Problem")
def _():
    res = create_session.sync_detailed(client=anonymous, body=SignIn(username=username, password="wrong password"))
    assert res.status_code == 401, res
    assert isinstance(res.parsed, Problem) and res.parsed.type_.endswith(":unauthorized"), res.parsed


@check("devices: the list and one device parse")
def _():
    devices = list_devices.sync(client=state["client"])
    assert device in [d.id for d in devices.items], devices
    one = get_device.sync(id=device, client=state["client"])
    assert one.id == device, one


@check("an unknown device: a documented 404 that parses as Problem")
def _():
    res = get_device.sync_detailed(id="no-such-device", client=state["client"])
    assert res.status_code == 404 and isinstance(res.parsed, Problem), res


@check("a stored flag parses as Flag")
def _():
    flag = get_flag.sync(key="map.clustering", client=state["client"])
    assert isinstance(flag, Flag) and flag.key == "map.clustering", flag


@check("history: a page with the retained location")
def _():
    page = get_history.sync(topic=f"devices/{device}/location", client=state["client"], limit=10)
    assert page.items and page.items[0].topic == f"devices/{device}/location", page


@check("publish: the answer parses as Published")
def _():
    payload = File(payload=io.BytesIO(b'{"hello":1}'), mime_type="application/json")
    res = put_topic.sync_detailed(topic="openapi/check", client=state["client"], body=payload)
    assert res.status_code in (200, 202) and isinstance(res.parsed, Published), res
    assert res.parsed.topic == "openapi/check", res.parsed


passed = sum(results)
print(f"{passed} passed, {len(results) - passed} failed")
sys.exit(0 if all(results) else 1)
