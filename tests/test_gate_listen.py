"""The gate's "[::]": every address of the pod, IPv6 and IPv4 both.

An IPv6-only cluster (EKS in IPv6 mode, for one) reaches a pod on its IPv6
address only; asyncio's "::" is IPv6 only and "0.0.0.0" IPv4 only. Each case
runs in a network namespace of its own (``unshare --net``, only a loopback
there), so that listening on every address exposes nothing beyond this test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

_UNSHARE = shutil.which("unshare")
_IP = shutil.which("ip")
_SS = shutil.which("ss")

#: Starts the gate on "::" (port 0) and asks /healthz over both loopbacks.
_GATE_ON_EVERY_ADDRESS = """
import asyncio, socket, subprocess
from vlm_operator.gate import GateConfig, GateServer

{prelude}

async def ask(host: str, port: int) -> str:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"unreachable ({{exc.errno}})"
    writer.write(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    status = (await reader.read()).split(b"\\r\\n", 1)[0].decode()
    writer.close()
    return status

async def main() -> None:
    gate = GateServer(
        GateConfig(upstream="http://127.0.0.1:9", host="::", port=0, health_path="")
    )
    await gate.start()
    port = gate.address[1]
    print(gate.url.replace(str(port), "PORT"))
    print(await ask("127.0.0.1", port))
    print(await ask("::1", port))
    # The listen backlog (ss's Send-Q of a listening socket), as on any other address.
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    print("backlog", listening.split()[2])
    await gate.close()

asyncio.run(main())
"""


def _in_own_network(script: str) -> list[str]:
    if _UNSHARE is None or _IP is None or _SS is None:
        pytest.skip("needs unshare, ip and ss (util-linux, iproute2) for a network namespace")
    probe = subprocess.run([_UNSHARE, "--net", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
    # The loopback comes up, then Python runs the script in its place ($0 and $1).
    command = f'{_IP} link set lo up && exec "$0" -c "$1"'
    done = subprocess.run(
        [_UNSHARE, "--net", "sh", "-c", command, sys.executable, script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_the_gate_on_every_address_answers_over_ipv6_and_ipv4() -> None:
    lines = _in_own_network(textwrap.dedent(_GATE_ON_EVERY_ADDRESS.format(prelude="")))
    assert lines == ["http://[::]:PORT", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "backlog 1024"]


def test_without_ipv6_the_gate_on_every_address_listens_on_ipv4() -> None:
    # A kernel without IPv6 cannot make an IPv6 socket, which is what this reports.
    prelude = "socket.has_dualstack_ipv6 = lambda: False"
    lines = _in_own_network(textwrap.dedent(_GATE_ON_EVERY_ADDRESS.format(prelude=prelude)))
    assert lines[:2] == ["http://0.0.0.0:PORT", "HTTP/1.1 200 OK"]
    assert lines[2].startswith("unreachable")
    assert lines[3] == "backlog 1024"


def test_a_port_in_use_is_an_error_not_a_fallback_to_ipv4() -> None:
    script = """
    import asyncio, errno, socket
    from vlm_operator.gate import GateConfig, GateServer

    taken = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    port = taken.getsockname()[1]

    async def main() -> None:
        gate = GateServer(GateConfig(upstream="http://127.0.0.1:9", host="::", port=port))
        try:
            await gate.start()
        except OSError as exc:
            print(errno.errorcode[exc.errno])
        else:
            print("listening at", gate.url)
            await gate.close()

    asyncio.run(main())
    """
    assert _in_own_network(textwrap.dedent(script)) == ["EADDRINUSE"]
