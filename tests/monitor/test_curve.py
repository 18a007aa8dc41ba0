"""CurveZMQ: ``tiertop keys``, the socket helpers, and the control channel with CURVE on."""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from tiertop.main import main
from tiertop.monitor.control_client import ControlClient, ControlTimeout
from tiertop.monitor.security import (
    ClientCurve,
    CurveKeyPair,
    ServerCurve,
    apply_client_curve,
    apply_server_curve,
    authenticator_for,
    create_key_pair,
    load_public_key,
)
from tiertop.runtime.control_server import ControlServer

try:
    from .test_control import LOOPBACK, FakeTarget, RuntimeLoop
except ImportError:  # tests/monitor is not a package: pytest put this folder on sys.path
    from test_control import LOOPBACK, FakeTarget, RuntimeLoop  # type: ignore[no-redef]

SECURITY_LOG = "tiertop.monitor.security"


# ---------------------------------------------------------------------------------- key files


def test_keys_command_writes_a_loadable_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    out = tmp_path / "keys"
    assert main(["keys", "--out", str(out), "--name", "alice"]) == 0
    public, secret = out / "alice.key", out / "alice.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pair = CurveKeyPair.load(secret)
    assert load_public_key(public) == pair.public_key
    assert len(pair.public_key) == len(pair.secret_key) == 40
    assert "secret-key" not in public.read_text()
    printed = capsys.readouterr().out
    assert str(public) in printed and str(secret) in printed

    assert main(["keys", "--out", str(out), "--name", "alice"]) == 1
    assert "already exist; choose another --name or pass --force" in capsys.readouterr().err
    assert CurveKeyPair.load(secret) == pair  # untouched

    assert main(["keys", "--out", str(out), "--name", "alice", "--force"]) == 0
    assert CurveKeyPair.load(secret) != pair
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_keys_default_name_and_bad_names(tmp_path: Path) -> None:
    assert main(["keys", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tiertop.key").is_file()
    with pytest.raises(ValueError, match="must be a plain file name"):
        create_key_pair(tmp_path, "../escape")


def test_loading_the_wrong_files_says_what_is_wrong(tmp_path: Path) -> None:
    public, _ = create_key_pair(tmp_path, "bob")
    with pytest.raises(ValueError, match=r"bob\.key holds no secret key; pass the "
                                         r"NAME\.key_secret file, not NAME\.key"):
        CurveKeyPair.load(public)
    with pytest.raises(FileNotFoundError, match="no CURVE certificate at"):
        load_public_key(tmp_path / "nobody.key")
    bogus = tmp_path / "bogus.key"
    bogus.write_text('curve\n    public-key = "tooshort"\n')
    with pytest.raises(ValueError, match="the public key is not a 40-character Z85 CURVE key"):
        load_public_key(bogus)


# ------------------------------------------------------------------------- CURVE end to end


@dataclass
class Keys:
    server: ServerCurve
    alice: ClientCurve  # authorised
    mallory: ClientCurve  # a valid key pair the runtime does not know
    wrong_server: ClientCurve  # alice's keys, but a wrong server public key


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    authorized = tmp_path / "authorized"
    create_key_pair(tmp_path, "runtime")
    create_key_pair(authorized, "alice")
    create_key_pair(tmp_path, "mallory")
    server = ServerCurve.from_files(tmp_path / "runtime.key_secret", authorized,
                                    domain="control")
    alice = ClientCurve.from_files(authorized / "alice.key_secret", tmp_path / "runtime.key")
    mallory = ClientCurve.from_files(tmp_path / "mallory.key_secret", tmp_path / "runtime.key")
    wrong = ClientCurve(alice.keys, CurveKeyPair.generate().public_key)
    return Keys(server, alice, mallory, wrong)


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.term()


def test_only_authorised_clients_are_answered(
    keys: Keys, context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=SECURITY_LOG)
    target = FakeTarget()
    before = target.state()
    with ControlServer(LOOPBACK, curve=keys.server, context=context) as server, \
            RuntimeLoop(server, target):
        authenticator = authenticator_for(context)
        assert authenticator is not None

        with ControlClient(server.address, curve=keys.alice, context=context,
                           timeout_s=2.0, retries=0) as alice:
            assert alice.ping().command == "Ping"

        for intruder in (keys.mallory, keys.wrong_server, None):
            with ControlClient(server.address, curve=intruder, context=context,
                               timeout_s=0.3, retries=0) as cli, pytest.raises(ControlTimeout):
                cli.pause()
        assert target.state() == before
        assert server.stats.received == 1  # only alice's ping reached the server

        mallory_key = keys.mallory.keys.public_key.decode()
        deadline = time.monotonic() + 2
        while authenticator.refused < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        reasons = {refusal.reason for refusal in authenticator.refusals}
        assert {"Unknown key", "the client does not use CURVE",
                "cryptographic failure (the client may hold a wrong server public key)"} <= reasons
        warnings = [r.getMessage() for r in caplog.records
                    if r.name == SECURITY_LOG and r.levelno == logging.WARNING]
        assert (f"refused CURVE handshake from 127.0.0.1 (client key {mallory_key}, domain "
                "'control'): Unknown key") in warnings
        assert any(w.endswith("the client does not use CURVE") for w in warnings)
        assert not any(keys.alice.keys.public_key.decode() in w for w in warnings)

        with ControlClient(server.address, curve=keys.alice, context=context,
                           timeout_s=2.0, retries=0) as alice:
            assert alice.set_watermarks("dram", 0.5, 0.2).new == {
                "dram": {"high": 0.5, "low": 0.2},
            }
    # the last user released it: the ZAP thread is gone and the context can terminate
    assert authenticator_for(context) is None
    assert not authenticator.is_alive()


def test_repeated_refusals_warn_once_but_count_all(
    keys: Keys, context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=SECURITY_LOG)
    with ControlServer(LOOPBACK, curve=keys.server, context=context) as server:
        authenticator = authenticator_for(context)
        assert authenticator is not None
        for _ in range(3):
            with ControlClient(server.address, curve=keys.mallory, context=context,
                               timeout_s=0.15, retries=0) as cli, pytest.raises(ControlTimeout):
                cli.ping()
        deadline = time.monotonic() + 2
        while authenticator.refused < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert authenticator.refused == 3
        levels = [r.levelno for r in caplog.records
                  if r.name == SECURITY_LOG and "Unknown key" in r.getMessage()]
        assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def test_helpers_work_on_any_socket_pair(
    keys: Keys, context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """What the telemetry publisher/subscriber do: PUB as CURVE server, SUB as client."""
    pub = context.socket(zmq.PUB)
    sub = context.socket(zmq.SUB)
    stranger = context.socket(zmq.SUB)
    authenticator = apply_server_curve(pub, keys.server)
    try:
        pub.bind("tcp://127.0.0.1:*")
        address = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        apply_client_curve(sub, keys.alice)
        apply_client_curve(stranger, keys.mallory)
        for s in (sub, stranger):
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(address)
        received = None
        deadline = time.monotonic() + 3
        while received is None and time.monotonic() < deadline:  # slow-joiner: keep publishing
            pub.send(b"tick")
            if sub.poll(50):
                received = sub.recv()
        assert received == b"tick"
        pub.send(b"tick")
        assert stranger.poll(300) == 0  # the unauthorised subscriber receives nothing
    finally:
        for s in (pub, sub, stranger):
            s.close(0)
        authenticator.release()


def test_server_sockets_of_one_context_share_one_authenticator(
    keys: Keys, context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path,
) -> None:
    first, second = context.socket(zmq.ROUTER), context.socket(zmq.PUB)
    try:
        auth = apply_server_curve(first, keys.server)
        assert apply_server_curve(second, keys.server) is auth
        other = ServerCurve(keys.server.keys, tmp_path, domain="control")
        with pytest.raises(ValueError, match="ZAP domain 'control' already authorises the keys"):
            apply_server_curve(context.socket(zmq.PUB), other)
        auth.release()
        assert auth.is_alive()  # one user left
        auth.release()
        assert not auth.is_alive()
    finally:
        first.close(0)
        second.close(0)


def test_missing_authorised_directory_is_a_clear_error(
    keys: Keys, context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path,
) -> None:
    curve = ServerCurve(keys.server.keys, tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"authorised client keys directory .*nope "
                                                r"does not exist"):
        ControlServer(LOOPBACK, curve=curve, context=context).start()
    assert authenticator_for(context) is None
