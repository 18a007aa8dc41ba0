"""The dashboard's side of the control plane: commands out, outcomes back, never blocking the UI.

:class:`Controller` wraps one :class:`~tiertop.monitor.control_client.ControlClient` (created
when the first command goes out, from an explicit address or the one the runtime's Hello
announces) behind a lock, and turns every way a command can end into one :class:`Outcome`: the
runtime applied it, refused it (its own words), the client refused it before sending, or no
answer came. The app calls :meth:`Controller.send` from a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tiertop.monitor.commands import AnyCommand, Applied, Refused
from tiertop.monitor.control_client import (
    CommandRefused,
    ControlClient,
    ControlClientError,
    ControlTimeout,
)

from .format import compact, unwrap

__all__ = ["Controller", "Outcome", "describe_applied"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one or more commands ended (the first failure stops the rest).

    Attributes:
        ok: Every command was applied.
        text: One line for the user: what changed, or why nothing did.
        applied: The replies of the commands applied.
        refused: The refusal (runtime's or the client's own), when there was one.
        error_code: Its code ("timeout" when no answer came, "" when ok).
        rtt_s: Round trip of the last answered command.
    """

    ok: bool
    text: str
    applied: list[Applied] = field(default_factory=list)
    refused: Refused | None = None
    error_code: str = ""
    rtt_s: float | None = None


def describe_applied(reply: Applied) -> str:
    """``SetWatermarks dram: high=0.9 low=0.8 → high=0.5 low=0.4``."""
    target = f" {reply.target}" if reply.target else ""
    if reply.old is None and reply.new is None:
        return f"{reply.command}{target}"
    old, new = unwrap(reply.old, reply.target), unwrap(reply.new, reply.target)
    return f"{reply.command}{target}: {compact(old)} → {compact(new)}"


class Controller:
    """Sends commands for the dashboard.

    Args:
        address: Control endpoint (None: ask ``address_hint`` when the first command goes out).
        address_hint: Returns the control address the runtime announced, or None.
        make_client: Builds the client for an address (default: a ZeroMQ ControlClient; tests
            pass one over a ``MockTransport``).
        read_only: Refuse every mutating command locally (the ``--read-only`` flag).
        timeout_s: Per-attempt reply timeout of the default client.
        retries: Retries of the default client.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        address_hint: Callable[[], str | None] | None = None,
        make_client: Callable[[str], ControlClient] | None = None,
        read_only: bool = False,
        timeout_s: float = 1.0,
        retries: int = 1,
    ) -> None:
        self.address = address
        self.address_hint = address_hint
        self.read_only = read_only
        self._make_client = make_client or (
            lambda addr: ControlClient(addr, timeout_s=timeout_s, retries=retries)
        )
        self._client: ControlClient | None = None
        self._lock = threading.Lock()
        #: Commands sent so far (name, ok), newest last; for the status line and tests.
        self.history: list[tuple[str, bool]] = []

    def use_client_factory(self, make_client: Callable[[str], ControlClient]) -> None:
        """Build the client with ``make_client`` from now on (e.g. with CurveZMQ keys)."""
        with self._lock:
            self._make_client = make_client

    def resolved_address(self) -> str | None:
        """The control address in use or known (None: none known yet)."""
        if self.address is None and self.address_hint is not None:
            self.address = self.address_hint()
        return self.address

    def _client_for_use(self) -> ControlClient:
        if self._client is None:
            address = self.resolved_address()
            if address is None:
                raise ControlClientError(
                    "no control address: the runtime announced none; pass --control ADDR"
                )
            self._client = self._make_client(address)
        return self._client

    def send(self, commands: Sequence[AnyCommand]) -> Outcome:
        """Send ``commands`` in order, stop at the first that is not applied (blocking)."""
        applied: list[Applied] = []
        rtt: float | None = None
        with self._lock:
            for command in commands:
                if self.read_only and command.mutating:
                    self.history.append((command.name, False))
                    return Outcome(False, "read-only: controls are disabled in this dashboard",
                                   applied, error_code="read_only")
                try:
                    client = self._client_for_use()
                    reply = client.request(command)
                    rtt = client.last_rtt_s
                except CommandRefused as exc:  # invalid whatever the runtime's state
                    self.history.append((command.name, False))
                    return Outcome(False, f"{command.name} not sent: {exc.message}", applied,
                                   exc.reply, exc.code, rtt)
                except ControlTimeout as exc:
                    self.history.append((command.name, False))
                    return Outcome(False, str(exc), applied, None, "timeout", rtt)
                except ControlClientError as exc:
                    self.history.append((command.name, False))
                    return Outcome(False, str(exc), applied, None, "no_control", rtt)
                if isinstance(reply, Refused):
                    self.history.append((command.name, False))
                    return Outcome(
                        False,
                        f"{reply.command or command.name} refused: {reply.message} "
                        f"[{reply.error_code}]",
                        applied, reply, reply.error_code, rtt,
                    )
                self.history.append((command.name, True))
                applied.append(reply)
        text = "; ".join(describe_applied(a) for a in applied) or "nothing to send"
        if rtt is not None:
            text += f"  (rtt {rtt * 1e3:.1f} ms)"
        return Outcome(True, text, applied, None, "", rtt)

    @property
    def last_rtt_s(self) -> float | None:
        return self._client.last_rtt_s if self._client is not None else None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
