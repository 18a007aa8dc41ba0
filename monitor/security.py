"""CurveZMQ authentication and encryption for tiertop's sockets (control and telemetry).

A runtime's socket is a CURVE *server*: it holds a secret key, and a directory of client public
keys says who may connect. A client (dashboard, recorder, script) holds its own key pair and the
server's public key. Key files are ZeroMQ certificates as written by ``tiertop keys``
(``NAME.key`` public, ``NAME.key_secret`` secret).

With CURVE on, a client whose key is not in the directory completes no handshake: it receives
nothing and can change nothing. Each refused handshake is logged at WARNING on
``tiertop.monitor.security`` (peer address and key where ZeroMQ tells them) and counted on the
context's :class:`CurveAuthenticator`: unknown client keys (through ZAP), and clients without
CURVE or with a wrong server key (through socket monitor events).

The helpers take any socket, so the telemetry publisher/subscriber use them as the control
server/client do. Call them *before* ``bind``/``connect``::

    curve = ServerCurve.from_files("keys/runtime.key_secret", "keys/authorized")
    authenticator = apply_server_curve(socket, curve)   # shared per context, ref-counted
    socket.bind(address)
    serve(socket)
    socket.close()
    authenticator.release()

    apply_client_curve(socket, ClientCurve.from_files("keys/alice.key_secret",
                                                      "keys/runtime.key"))
    socket.connect(address)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

__all__ = [
    "DEFAULT_DOMAIN",
    "ClientCurve",
    "CurveAuthenticator",
    "CurveKeyPair",
    "HandshakeRefusal",
    "ServerCurve",
    "apply_client_curve",
    "apply_server_curve",
    "authenticator_for",
    "create_key_pair",
    "load_public_key",
]

log = logging.getLogger(__name__)

#: ZAP domain used when a caller names none; sockets of one context that share a domain share
#: the directory of authorised keys.
DEFAULT_DOMAIN = "tiertop"
#: A refusal of the same peer and key is logged at WARNING at most once per this many seconds
#: (a refused client reconnects every few hundred ms); every refusal is counted.
REPEAT_WARNING_S = 60.0


# ------------------------------------------------------------------------------------ key files


@dataclass(frozen=True, slots=True)
class CurveKeyPair:
    """A Z85-encoded CURVE key pair (40 characters each)."""

    public_key: bytes
    secret_key: bytes

    @classmethod
    def load(cls, secret_file: str | os.PathLike[str]) -> CurveKeyPair:
        """Read a ``NAME.key_secret`` certificate (it holds both keys)."""
        path = Path(secret_file)
        public, secret = _load_certificate(path)
        if secret is None:
            raise ValueError(
                f"{path} holds no secret key; pass the NAME.key_secret file, not NAME.key"
            )
        return cls(public, secret)

    @classmethod
    def generate(cls) -> CurveKeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


def load_public_key(public_file: str | os.PathLike[str]) -> bytes:
    """The Z85 public key in a ``NAME.key`` (or ``NAME.key_secret``) certificate."""
    return _load_certificate(Path(public_file))[0]


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(f"no CURVE certificate at {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise ValueError(f"{path} is not a ZeroMQ CURVE certificate: {exc}") from None
    for label, key in (("public", public), ("secret", secret)):
        if key is not None and not _is_z85_key(key):
            raise ValueError(f"{path}: the {label} key is not a 40-character Z85 CURVE key")
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError):
        return False


def create_key_pair(
    directory: str | os.PathLike[str], name: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600) into
    ``directory`` (created if missing); returns their paths. Refuses to replace existing files
    unless ``overwrite``."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"key name {name!r} must be a plain file name")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not overwrite:
        existing = [str(path) for path in (public, secret) if path.exists()]
        if existing:
            raise FileExistsError(
                f"{' and '.join(existing)} already exist"
            )
    # Create the secret file 0600 before pyzmq writes into it ("w" keeps the mode).
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    os.close(os.open(secret, flags, 0o600))
    os.chmod(secret, 0o600)
    written_public, written_secret = zmq.auth.create_certificates(folder, name)
    return Path(written_public), Path(written_secret)


# ------------------------------------------------------------------------------- configurations


@dataclass(frozen=True, slots=True)
class ServerCurve:
    """CURVE settings of a serving socket (the runtime's ROUTER or PUB).

    Attributes:
        keys: the server's key pair.
        authorized_clients: directory of ``*.key`` client certificates allowed to connect.
        domain: ZAP domain; sockets sharing a domain share the authorised keys.
    """

    keys: CurveKeyPair
    authorized_clients: Path
    domain: str = DEFAULT_DOMAIN

    @classmethod
    def from_files(
        cls,
        server_secret_file: str | os.PathLike[str],
        authorized_clients: str | os.PathLike[str],
        domain: str = DEFAULT_DOMAIN,
    ) -> ServerCurve:
        return cls(CurveKeyPair.load(server_secret_file), Path(authorized_clients), domain)


@dataclass(frozen=True, slots=True)
class ClientCurve:
    """CURVE settings of a connecting socket (DEALER, SUB): its key pair and the server's
    public key."""

    keys: CurveKeyPair
    server_public_key: bytes

    @classmethod
    def from_files(
        cls,
        client_secret_file: str | os.PathLike[str],
        server_public_file: str | os.PathLike[str],
    ) -> ClientCurve:
        return cls(CurveKeyPair.load(client_secret_file), load_public_key(server_public_file))


# ------------------------------------------------------------------------------- authenticator


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    """One refused handshake: who tried (``address``, ``client_key`` in Z85), for which
    domain, and why (ZAP's reason, e.g. ``Unknown key``)."""

    time: float
    address: str
    client_key: str
    domain: str
    reason: str


class CurveAuthenticator(ThreadAuthenticator):
    """The ZAP handler of one context: checks client keys against each domain's directory and
    logs/counts the refusals. One per context (ZeroMQ allows one ZAP handler per context);
    :func:`apply_server_curve` creates and shares it."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        super().__init__(context, log=logging.getLogger(__name__ + ".zap"))
        self.refused = 0
        self.refusals: deque[HandshakeRefusal] = deque(maxlen=100)
        self._domains: dict[str, Path] = {}
        self._peer: tuple[str, str, str] = ("", "", "")
        self._last_warning: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._users = 0

    def authorize(self, domain: str, directory: Path) -> None:
        """Allow the client keys in ``directory`` (``*.key`` files) on sockets of ``domain``."""
        if not directory.is_dir():
            raise FileNotFoundError(
                f"authorised client keys directory {directory} does not exist"
            )
        previous = self._domains.get(domain)
        if previous is not None and previous.resolve() != directory.resolve():
            raise ValueError(
                f"ZAP domain {domain!r} already authorises the keys in {previous}; "
                f"use another domain for {directory}"
            )
        self._domains[domain] = directory
        self.configure_curve(domain=domain, location=str(directory))
        if not self.certs.get(domain):
            log.warning(
                "no authorised client keys (*.key) in %s: every client of domain %r will be "
                "refused", directory, domain,
            )

    def reload(self) -> None:
        """Re-read every authorised-keys directory (after adding or removing a key file)."""
        for domain, directory in self._domains.items():
            self.configure_curve(domain=domain, location=str(directory))

    def release(self) -> None:
        """Drop one user's hold; the last one stops the authenticator thread."""
        with _REGISTRY_LOCK:
            self._users -= 1
            if self._users > 0:
                return
            _AUTHENTICATORS.pop(id(self.context), None)
        self._stopping.set()
        self.stop()

    # The two overrides below run on the authenticator's thread, one ZAP request at a time.

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        domain = msg[2].decode("utf-8", "replace") if len(msg) > 2 else "?"
        key = z85.encode(msg[6]).decode("ascii") if len(msg) > 6 and len(msg[6]) == 32 else "?"
        self._peer = (address, key, domain)
        await super().handle_zap_message(msg)

    def _send_zap_reply(
        self,
        request_id: bytes,
        status_code: bytes,
        status_text: bytes,
        user_id: str = "anonymous",
    ) -> None:
        if status_code != b"200":
            address, key, domain = self._peer
            self.record_refusal(address, key, domain, status_text.decode("utf-8", "replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def record_refusal(self, address: str, client_key: str, domain: str, reason: str) -> None:
        """Count and log one refused handshake (thread-safe). The first refusal of a given peer,
        key and reason is logged at WARNING, repeats within :data:`REPEAT_WARNING_S` at DEBUG."""
        now = time.time()
        with self._lock:
            self.refused += 1
            self.refusals.append(HandshakeRefusal(now, address, client_key, domain, reason))
            last = self._last_warning.get((address, client_key, reason))
            loud = last is None or now - last >= REPEAT_WARNING_S
            if loud:
                self._last_warning[(address, client_key, reason)] = now
        log.log(
            logging.WARNING if loud else logging.DEBUG,
            "refused CURVE handshake from %s (client key %s, domain %r): %s",
            address, client_key, domain, reason,
        )

    # Handshakes that fail before ZAP is asked (a client without CURVE, or one that has the
    # wrong server key) are only visible as socket monitor events.

    def watch(self, socket: zmq.Socket[bytes], domain: str) -> None:
        """Also log handshakes on ``socket`` that fail before ZAP is consulted. Call from the
        thread that owns the socket, before handing it to another thread."""
        events = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                  | zmq.EVENT_MONITOR_STOPPED)
        monitor = socket.get_monitor_socket(events)
        threading.Thread(target=self._watch, args=(monitor, domain), daemon=True,
                         name="tiertop-curve-watch").start()

    def _watch(self, monitor: zmq.Socket[bytes], domain: str) -> None:
        try:
            while not self._stopping.is_set():
                if not monitor.poll(200):
                    continue
                event = recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
                endpoint = event["endpoint"]
                where = endpoint.decode("utf-8", "replace") if isinstance(endpoint, bytes) \
                    else str(endpoint)
                self.record_refusal(f"an unknown peer on {where}", "?", domain,
                                    _HANDSHAKE_FAILURES.get(event["value"], "handshake failed"))
        except zmq.ZMQError:  # context terminated
            return
        finally:
            monitor.close(0)


_HANDSHAKE_FAILURES: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the client does not use CURVE",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        "cryptographic failure (the client may hold a wrong server public key)",
}

_AUTHENTICATORS: dict[int, CurveAuthenticator] = {}
_REGISTRY_LOCK = threading.Lock()


def authenticator_for(context: zmq.Context[zmq.Socket[bytes]]) -> CurveAuthenticator | None:
    """The running authenticator of ``context``, if a server socket of it uses CURVE."""
    with _REGISTRY_LOCK:
        return _AUTHENTICATORS.get(id(context))


# ------------------------------------------------------------------------------- socket helpers


def apply_server_curve(socket: zmq.Socket[bytes], curve: ServerCurve) -> CurveAuthenticator:
    """Make ``socket`` a CURVE server that admits only the keys in
    ``curve.authorized_clients``. Call before ``bind``. Returns the context's authenticator,
    with one more hold on it: call its :meth:`~CurveAuthenticator.release` once the socket is
    closed."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    context = socket.context
    with _REGISTRY_LOCK:
        authenticator = _AUTHENTICATORS.get(id(context))
        if authenticator is None:
            authenticator = CurveAuthenticator(context)
            authenticator.start()
            _AUTHENTICATORS[id(context)] = authenticator
        authenticator._users += 1
    try:
        authenticator.authorize(curve.domain, curve.authorized_clients)
        socket.setsockopt_string(zmq.ZAP_DOMAIN, curve.domain)
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, curve.keys.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, curve.keys.secret_key)
        authenticator.watch(socket, curve.domain)
    except BaseException:
        authenticator.release()
        raise
    return authenticator


def apply_client_curve(socket: zmq.Socket[bytes], curve: ClientCurve) -> None:
    """Make ``socket`` a CURVE client of the server whose public key is given. Call before
    ``connect``."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    socket.setsockopt(zmq.CURVE_SERVERKEY, curve.server_public_key)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, curve.keys.public_key)
    socket.setsockopt(zmq.CURVE_SECRETKEY, curve.keys.secret_key)

