"""Control socket: wire format, a real server on a Unix socket, who may talk to it."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.control import protocol
from agent.control.client import Client, ControlError
from agent.control.protocol import ProtocolError, decode_request
from agent.control.server import ControlServer, Peer, SocketInUse

from .helpers import NOBODY, needs_root, python_for, run_as

T = TypeVar("T")

# --- wire format --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "message_has"),
    [
        (b"status\n", "bad_request", "not JSON"),
        (b"\xff\xfe{}\n", "bad_request", "not JSON"),
        (b"[1, 2]\n", "bad_request", "JSON object"),
        (b'{"v": 2, "id": 1, "method": "status"}\n', "unsupported_version", "2"),
        (b'{"id": 1, "method": "status"}\n', "unsupported_version", "None"),
        (b'{"v": 1, "id": 1}\n', "bad_request", "missing method"),
        (b'{"v": 1, "id": 1, "method": 5}\n', "bad_request", "missing method"),
        (b'{"v": 1, "id": 1, "method": "status", "params": []}\n', "bad_request", "params"),
    ],
)
def test_decode_request_errors(line: bytes, code: str, message_has: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_request(line)
    assert err.value.code == code
    assert message_has in err.value.message


def test_decode_request_ignores_unknown_fields() -> None:
    req = decode_request(b'{"v": 1, "id": "x7", "method": "status", "future": true}\n')
    assert (req.id, req.method, req.params) == ("x7", "status", {})


# --- a real server --------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="namesync-unit-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def status(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
    return {"names": 3, "uid": peer.uid, "pid": peer.pid, "echo": params}


async def broken(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("disk on fire")


HANDLERS = {"status": status, "broken": broken}


def with_server(
    path: Path,
    check: Callable[[ControlServer], T],
    allow_uids: tuple[int, ...] = (),
) -> T:
    """Run a ControlServer on ``path``; run blocking ``check`` in a thread meanwhile."""

    async def main() -> T:
        server = ControlServer(path, HANDLERS, allow_uids)
        await server.start()
        try:
            return await asyncio.to_thread(check, server)
        finally:
            await server.close()

    return asyncio.run(main())


def raw_exchange(path: Path, payload: bytes, responses: int) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        buf = b""
        while buf.count(b"\n") < responses:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {buf!r}"
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def test_client_gets_the_status_result(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    result = with_server(path, lambda _: Client(path).call("status", {"verbose": True}))
    assert result == {
        "names": 3,
        "uid": os.geteuid(),
        "pid": os.getpid(),
        "echo": {"verbose": True},
    }


def test_unknown_method(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"

    def check(_: ControlServer) -> ControlError:
        with pytest.raises(ControlError) as err:
            Client(path).call("reboot")
        return err.value

    err = with_server(path, check)
    assert err.code == "unknown_method"
    assert "reboot" in err.message


def test_handler_failure_is_reported_and_the_server_keeps_serving(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    payload = (
        b'{"v":1,"id":1,"method":"broken"}\n'
        b"this is not json\n"
        b'{"v":1,"id":"three","method":"status"}\n'
    )
    out = with_server(path, lambda _: raw_exchange(path, payload, 3))
    assert out[0]["id"] == 1 and out[0]["error"]["code"] == "internal"
    assert "disk on fire" in out[0]["error"]["message"]
    assert "RuntimeError" not in out[0]["error"]["message"]  # a sentence, not an exception name
    assert out[1]["id"] is None and out[1]["error"]["code"] == "bad_request"
    assert out[2]["id"] == "three" and out[2]["result"]["names"] == 3
    assert all(r["v"] == protocol.VERSION for r in out)


def test_socket_is_0600_right_after_start(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    st = with_server(path, lambda _: path.stat())
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_socket_is_removed_on_close(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with_server(path, lambda _: None)
    assert not path.exists()
    with pytest.raises(ControlError) as err:
        Client(path).call("status")
    assert err.value.code == "no_daemon"


def test_client_without_daemon_says_so(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with pytest.raises(ControlError) as err:
        Client(path).call("status")
    assert err.value.code == "no_daemon"
    assert str(path) in err.value.message


def make_stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: what a killed daemon leaves


def test_client_on_stale_socket_says_no_daemon(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    make_stale_socket(path)
    with pytest.raises(ControlError) as err:
        Client(path).call("status")
    assert err.value.code == "no_daemon"


def test_stale_socket_is_replaced_on_start(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    make_stale_socket(path)
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert with_server(path, lambda _: Client(path).call("status"))["names"] == 3


def test_live_socket_is_not_stolen(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"

    def check(_: ControlServer) -> dict[str, Any]:
        second = ControlServer(path, HANDLERS)
        with pytest.raises(SocketInUse):
            asyncio.run(second.start())
        return Client(path).call("status")  # the first daemon still answers

    assert with_server(path, check)["names"] == 3


def test_regular_file_at_socket_path_is_not_removed(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    path.write_bytes(b"important")
    with pytest.raises(SocketInUse):
        asyncio.run(ControlServer(path, HANDLERS).start())
    assert path.read_bytes() == b"important"


# --- other uids (root only: the test switches uid in a child) ------------------

_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect_errno": e.errno}))
    sys.exit(0)
try:
    s.sendall(b'{"v":1,"id":7,"method":"status","params":{}}\n')
except BrokenPipeError:
    pass  # refused at accept: the reason is already waiting to be read
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
print(json.dumps({"response": json.loads(buf)}))
"""


@pytest.fixture
def other_uids() -> None:
    needs_root()
    for uid in (NOBODY, NOBODY - 1):
        if python_for(uid) is None:
            pytest.skip(f"no Python interpreter executable by uid {uid}")


def client_as(uid: int, path: Path) -> dict[str, Any]:
    done = run_as(uid, _CLIENT, str(path))
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


@pytest.mark.usefixtures("other_uids")
def test_allowed_uid_is_served(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"

    def check(_: ControlServer) -> tuple[int, dict[str, Any]]:
        return stat.S_IMODE(path.stat().st_mode), client_as(NOBODY, path)

    mode, out = with_server(path, check, allow_uids=(NOBODY,))
    assert mode == 0o666
    assert out["response"]["id"] == 7
    assert out["response"]["result"]["uid"] == NOBODY  # identity from SO_PEERCRED


@pytest.mark.usefixtures("other_uids")
def test_uid_not_in_allow_list_gets_permission_denied(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    out = with_server(path, lambda _: client_as(NOBODY - 1, path), allow_uids=(NOBODY,))
    # Refused at accept, before its request was read: the reply cannot carry its id.
    assert out["response"]["id"] is None
    assert "result" not in out["response"]
    assert out["response"]["error"]["code"] == "permission_denied"
    assert str(NOBODY - 1) in out["response"]["error"]["message"]


@pytest.mark.usefixtures("other_uids")
def test_root_only_socket_cannot_even_be_connected_by_others(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    out = with_server(path, lambda _: client_as(NOBODY, path), allow_uids=())
    assert out == {"connect_errno": errno.EACCES}


# --- hostile requests (issue 10, defect 9) ---------------------------------------

EDGE_CASES = [
    pytest.param(b'{"v":1,"id":' + b"9" * 5000 + b',"method":"status"}\n', id="id-5000-digits"),
    pytest.param(b'{"v":1,"id":' + b"[" * 200_000 + b"]" * 200_000 + b',"method":"status"}\n',
                 id="id-nested-200k"),
    pytest.param(b"[" * 200_000 + b"\n", id="unclosed-200k"),
    pytest.param(b'{"v":1,"id":NaN,"method":"status"}\n', id="id-NaN"),
    pytest.param(b'{"v":1,"id":-Infinity,"method":"status"}\n', id="id-Infinity"),
    pytest.param(b'{"v":1,"id":1e400,"method":"status"}\n', id="id-1e400-overflows-to-inf"),
    pytest.param(b'{"v":1,"id":-1e400,"method":"status"}\n', id="id-minus-1e400"),
    pytest.param(b'{"v":1,"id":1,"method":"status","params":{"x":NaN}}\n', id="params-NaN"),
    pytest.param(b'{"v":1,"id":"' + b"x" * 10_000 + b'","method":"status"}\n', id="id-10k-string"),
    pytest.param(b'{"v":1,"id":{"a":1},"method":"status"}\n', id="id-object"),
    pytest.param(b'{"v":' + b"7" * 5000 + b',"id":1,"method":"status"}\n', id="v-5000-digits"),
    pytest.param(b'{"v":1,"id":1,"method":"' + b"m" * 100_000 + b'"}\n', id="method-100k"),
]


@pytest.mark.parametrize("payload", EDGE_CASES)
def test_hostile_request_gets_a_strict_json_error_and_the_server_goes_on(
        sock_dir: Path, payload: bytes, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = sock_dir / "control.sock"
    follow_up = b'{"v":1,"id":2,"method":"status"}\n'

    def check(_: ControlServer) -> list[bytes]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(payload + follow_up)
            buf = b""
            while buf.count(b"\n") < 2:
                chunk = s.recv(65536)
                assert chunk, f"connection closed after {buf[:200]!r}"
                buf += chunk
        return buf.splitlines()

    lines = with_server(path, check)

    def strict(raw: bytes) -> Any:
        return json.loads(raw, parse_constant=lambda c: pytest.fail(f"bare {c} on the wire"))

    first, second = (strict(line) for line in lines)
    assert first["error"]["code"] in ("bad_request", "unknown_method")
    assert first["id"] is None or first["id"] == 1
    assert len(lines[0]) < 1000  # the offending value is not quoted back whole
    assert second == {"v": 1, "id": 2, "result": {"names": 3, "uid": os.geteuid(),
                                                   "pid": os.getpid(), "echo": {}}}
    logged = capsys.readouterr()
    assert "Traceback" not in logged.out + logged.err
    assert "Traceback" not in caplog.text


def test_handler_result_with_nan_is_an_error_not_bare_nan(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"

    async def nan(peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        return {"ratio": float("nan")}

    async def main() -> list[dict[str, Any]]:
        server = ControlServer(path, {"nan": nan})
        await server.start()
        try:
            return await asyncio.to_thread(
                raw_exchange, path, b'{"v":1,"id":1,"method":"nan"}\n', 1)
        finally:
            await server.close()

    (out,) = asyncio.run(main())
    assert out["id"] == 1 and out["error"]["code"] == "internal"


def test_backlog_takes_1000_simultaneous_connects(sock_dir: Path) -> None:
    """All connect before the server accepts any: only the listen backlog holds them."""
    path = sock_dir / "control.sock"
    from agent.control.server import Limits

    async def main() -> tuple[list[int], int]:
        server = ControlServer(path, HANDLERS, limits=Limits(max_connections=2000,
                                                            max_per_uid=2000))
        server_limits_ok = server.limits.root_reserve
        await server.start()
        loop = asyncio.get_running_loop()
        # The loop is not allowed to accept while the clients connect.
        assert server._listener is not None
        loop.remove_reader(server._listener.fileno())

        def connect_all() -> list[int]:
            errs, socks = [], []
            for _ in range(1000):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(str(path))
                except OSError as e:
                    errs.append(e.errno or 0)
                socks.append(s)
            for s in socks:
                s.close()
            return errs

        try:
            return await asyncio.to_thread(connect_all), server_limits_ok
        finally:
            await server.close()

    errs, _ = asyncio.run(main())
    assert errs == []


def test_client_messages_are_plain_sentences(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with pytest.raises(ControlError) as err:
        Client(path).call("status")
    assert err.value.message == f"no agent listening on {path} (is namesync running?)"

    # A peer that accepts and never answers: a timeout, said as such.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(ControlError) as err:
            Client(path, timeout=0.3).call("status")
        assert err.value.code == "timeout"
        assert err.value.message == f"no answer from the agent on {path} within 0.3s"
    finally:
        listener.close()


def test_a_line_over_max_line_is_refused_even_when_its_newline_came_in_the_same_read(
        sock_dir: Path) -> None:
    """The peer socket's max_message_bytes is this limit: a 1 KiB limit must not let a
    64 KiB line through because its newline arrived within the last chunk read."""
    path = sock_dir / "s.sock"

    async def main() -> list[dict[str, Any]]:
        server = ControlServer(path, HANDLERS, max_line=1024)
        await server.start()
        try:
            pad = " " * 4096
            payload = ('{"v":1,"id":1,"method":"status"}' + pad + "\n").encode()
            return await asyncio.to_thread(raw_exchange, path, payload, 1)
        finally:
            await server.close()

    reply, = asyncio.run(main())
    assert reply["error"]["code"] == "too_large"
