"""Control socket server: root-only by default, callers identified by SO_PEERCRED."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from . import protocol

log = structlog.get_logger(component="control")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


Handler = Callable[[Peer, dict[str, Any]], Awaitable[dict[str, Any]]]


class SocketInUse(RuntimeError):
    pass


def peer_credentials(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def _claim_path(path: Path) -> None:
    """Remove a stale socket left by a killed daemon; refuse to steal a live one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    except PermissionError:
        raise SocketInUse(f"{path} belongs to someone else (permission denied)") from None
    finally:
        probe.close()
    raise SocketInUse(f"another namesync-agent is listening on {path}")


class ControlServer:
    def __init__(
        self, path: Path, handlers: Mapping[str, Handler], allow_uids: tuple[int, ...] = ()
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.allowed = {0, os.geteuid(), *allow_uids}
        self.open_to_others = bool(set(allow_uids) - {0, os.geteuid()})
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _claim_path(self.path)
        # Created with a tight umask so there is no window where others can connect.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=protocol.MAX_LINE
            )
        finally:
            os.umask(old)
        if self.open_to_others:
            # Other uids are let through the file mode, then checked by SO_PEERCRED.
            os.chmod(self.path, 0o666)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            peer = peer_credentials(sock)
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(protocol.error(None, "too_large", "request line too long"))
                    break
                if not line:
                    break
                writer.write(await self._dispatch(peer, line))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _dispatch(self, peer: Peer, line: bytes) -> bytes:
        try:
            req = protocol.decode_request(line)
        except protocol.ProtocolError as e:
            return protocol.error(None, e.code, e.message)
        if peer.uid not in self.allowed:
            log.warning("control request refused", uid=peer.uid, pid=peer.pid, method=req.method)
            return protocol.error(
                req.id, "permission_denied", f"uid {peer.uid} may not use this socket"
            )
        handler = self.handlers.get(req.method)
        if handler is None:
            return protocol.error(req.id, "unknown_method", f"no method {req.method!r}")
        try:
            return protocol.result(req.id, await handler(peer, req.params))
        except protocol.ProtocolError as e:
            return protocol.error(req.id, e.code, e.message)
        except Exception as e:
            log.exception("control handler failed", method=req.method)
            return protocol.error(req.id, "internal", f"{type(e).__name__}: {e}")
