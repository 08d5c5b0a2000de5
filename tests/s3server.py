"""A real S3-compatible server for the tests: moto's standalone server in its own process,
behind a TCP proxy that a test can close (connections refused, open ones cut), reopen on
the same port, or make cut the next answers after the server has acted on the request.

Worker subprocesses reach it through the standard AWS environment (AWS_ENDPOINT_URL and
keys): in-process mocking could not reach them. moto keeps its state in memory, so an
outage is made at the proxy, or by pausing the server (SIGSTOP: connections hang), never
by restarting it (a restart would lose every object)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, *, auth: bool = False) -> None:
        self.port = free_port()
        env = dict(os.environ)
        if auth:  # every request is authenticated; no key is known, so every key is wrong
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/moto-api/", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:upstream, one thread pair per connection."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.cut_answers = 0   # cut this many answers after the server acted on them
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.open()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def close(self) -> None:
        """Refuse new connections and cut the open ones (a server that went away)."""
        lst, self._listener = self._listener, None
        if lst is not None:
            try:
                lst.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            lst.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            _close(c)

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if answers and self.cut_answers > 0:
                    interim, data = _split_interim(data)
                    dst.sendall(interim)
                    if data:
                        with self._lock:
                            cut = self.cut_answers > 0
                            self.cut_answers -= 1 if cut else 0
                        if cut:  # the server has acted and answered: the answer is lost
                            break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _split_interim(data: bytes) -> tuple[bytes, bytes]:
    """(an interim "100 Continue" at the start of `data`, the rest). boto3 sends PutObject
    with Expect: 100-continue, and the interim answer comes before the server has the
    body, so it is never the answer to cut. The server's final answer may arrive in the
    same read (one recv held both once, and the cut never happened)."""
    if not data.startswith(b"HTTP/1.1 100"):
        return b"", data
    end = data.find(b"\r\n\r\n")
    if end < 0:   # the interim answer's end in a later read: pass this part on
        return data, b""
    return data[:end + 4], data[end + 4:]


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class S3:
    """The server, its proxy and what a client process needs to reach it."""

    def __init__(self) -> None:
        self.server = MotoServer()
        self.proxy = TcpProxy(self.server.port)

    def env(self, retry_seconds: float = 60) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.proxy.url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "RENAS_S3_RETRY_SECONDS": str(retry_seconds)}

    def client(self):  # type: ignore[no-untyped-def]
        """A boto3 client that bypasses the proxy (the tests' own view of the bucket)."""
        import boto3
        return boto3.client("s3", endpoint_url=self.server.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"renas-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.proxy.close()
        self.server.stop()
