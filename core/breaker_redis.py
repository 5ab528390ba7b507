"""Breaker state shared by every process on every host: one Redis hash per breaker.

Each admission and each outcome is one Lua script, so a decision and the state
change it implies happen atomically inside Redis, timed by the Redis server's own
clock (``redis.call('TIME')``), never by the drifting clocks of the callers. No lock
is held while the protected call runs: the caller holds a permit (epoch, and for a
trial a token leased in a sorted set), and reports back.

The scripts (``core.breaker_lua``) are a line-by-line port of ``core.breaker_core`` (read its
docstring for the state machine); a hypothesis test checks they agree.

At most one round trip per call:

1. The outcome script is written to the socket without waiting for its reply
   (Redis runs it as soon as it arrives); the reply, the breaker's state and epoch
   after that outcome, is read later, before any other reply on that connection.
2. While the last state this process learnt is CLOSED (or DISABLED), is younger
   than ``closed_ttl`` and its own last outcome was a success, a call skips the
   admission script: CLOSED admits every call, and the outcome script counts it.
   A busy caller thus sends one script per call and waits for none.
3. Anything else (no recent knowledge, a failure just reported, OPEN, HALF_OPEN)
   asks the admission script first: one round trip. ``closed_ttl`` is kept below
   the OPEN wait, so a process can never ride on a CLOSED state from before an
   opening into the HALF_OPEN that follows it: trial calls stay exactly gated.

The price: for up to ``closed_ttl`` (0.5 s by default) after *another* process
trips the breaker, this process may still send calls, as calls already in flight
would. Each thread of each process keeps its own connection, and a forked child
opens its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from core.breaker_core import Admission, BreakerConfig, Outcome, State
from core.breaker_lua import ADMIT, OPERATE, RECORD
from core.clients import redis_pool

REGISTRY_SUFFIX = "registry"

OnReply = Callable[[Any], None]
MAX_UNREAD = 32  # replies left unread before a send waits for them


class _Wire(threading.local):
    """This thread's connection and the commands whose replies are still unread."""

    def __init__(self) -> None:
        self.pid = 0
        self.connection: Any = None
        self.pending: list[tuple[tuple[Any, ...], OnReply | None]] = []


class RedisChannel:
    """Runs breaker scripts over one connection per process and thread."""

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        self.url = url
        # The one Redis client factory (core.clients); the pool only makes connections here.
        self.pool = redis_pool(url, timeout, decode_responses=True)
        self._wire = _Wire()

    def _connection(self) -> Any:
        wire = self._wire
        if wire.connection is None or wire.pid != os.getpid():
            # A forked child must not share its parent's socket: open our own.
            # Built from the pool's settings but not counted by it: pool.make_connection()
            # counts against max_connections and is never given back, so a process that
            # ran ~100 short-lived threads would find the pool exhausted and every breaker
            # silently on its per-process fallback. A dead thread's connection goes with
            # its thread-local (closed when collected).
            wire.connection = self.pool.connection_class(**self.pool.connection_kwargs)
            wire.pid = os.getpid()
            wire.pending = []
        return wire.connection

    def _send(self, command: tuple[Any, ...], packed: bytes | None, on_reply: OnReply | None) -> None:
        connection = self._connection()
        if len(self._wire.pending) >= MAX_UNREAD:
            self._read_replies(block=True)
        if packed is None:
            connection.send_command(*command)
        else:
            connection.send_packed_command([packed], check_health=False)
        self._wire.pending.append((command, on_reply))

    def _eval(self, command: tuple[Any, ...]) -> Any:
        """Re-run a script by its source: the server lost its script cache (restart, SCRIPT FLUSH)."""
        _, sha, *rest = command
        script = next(s for s in (ADMIT, RECORD, OPERATE) if s.sha == sha)
        connection = self._wire.connection
        connection.send_command("EVAL", script.source, *rest)
        return connection.read_response()

    def _read_replies(self, block: bool) -> None:
        """Read unread replies in order (all, or only those already here); hand each to its callback."""
        wire = self._wire
        unknown = []
        while wire.pending and (block or wire.connection.can_read(timeout=0)):
            command, on_reply = wire.pending.pop(0)
            try:
                reply = wire.connection.read_response()
            except redis.exceptions.NoScriptError:
                unknown.append((command, on_reply))
                continue
            if on_reply is not None:
                on_reply(reply)
        for command, on_reply in unknown:  # nothing is in flight now: safe to run them again
            reply = self._eval(command)
            if on_reply is not None:
                on_reply(reply)

    def _guarded(self, run: Callable[[], Any]) -> Any:
        try:
            return run()
        except (redis.exceptions.RedisError, OSError):
            # Unread replies would now pair with the wrong commands: start afresh.
            self.reset_connection()
            raise

    def reset_connection(self) -> None:
        wire = self._wire
        if wire.connection is not None and wire.pid == os.getpid():
            wire.connection.disconnect()
        wire.connection = None
        wire.pending = []

    def call(self, *command: Any, packed: bytes | None = None) -> Any:
        """Send ``command`` and wait for its reply (after any unread earlier replies)."""

        def run() -> Any:
            self._connection()
            self._read_replies(block=True)
            self._send(command, packed, None)
            self._wire.pending.pop()
            try:
                return self._wire.connection.read_response()
            except redis.exceptions.NoScriptError:
                return self._eval(command)

        return self._guarded(run)

    def send(self, *command: Any, packed: bytes | None = None, on_reply: OnReply | None = None) -> None:
        """Send ``command`` now; its reply is read later, before any later command's."""
        self._guarded(lambda: self._send(command, packed, on_reply))

    def poll(self) -> None:
        """Read the replies that have already arrived, without waiting."""
        if self._wire.connection is not None and self._wire.pending and self._wire.pid == os.getpid():
            self._guarded(lambda: self._read_replies(block=False))

    def flush(self) -> None:
        """Wait until every command this thread sent has been answered."""
        if self._wire.connection is not None and self._wire.pid == os.getpid():
            self._guarded(lambda: self._read_replies(block=True))


def _array(length: int) -> bytes:
    return b"*%d\r\n" % length


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _bulks(*values: object) -> bytes:
    return b"".join(_bulk(str(v).encode()) for v in values)


@dataclass(frozen=True)
class _Known:
    state: State
    epoch: int
    at: float  # monotonic time the answer was asked for


class RedisBreakerStore:
    """The shared state of one named breaker, and what this process last learnt of it."""

    def __init__(
        self, name: str, config: BreakerConfig, channel: RedisChannel, prefix: str, closed_ttl: float = 0.5
    ) -> None:
        self.name = name
        self.config = config
        self.channel = channel
        base = f"{prefix}:{{{name}}}"  # braces: one hash slot for all three keys
        self.keys = (base, f"{base}:window", f"{base}:trials")
        self.registry = f"{prefix}:{REGISTRY_SUFFIX}"
        # Step 3 of the module docstring: never ride on CLOSED across an OPEN wait.
        self.closed_ttl = min(closed_ttl, config.wait_seconds / 2)
        self._known: _Known | None = None
        self._forgot_at = 0.0  # answers asked for before this say nothing (see record)
        self._registered_pid = 0
        self._prepack()

    def _register(self) -> None:
        if self._registered_pid != os.getpid():
            self.channel.send("SADD", self.registry, self.name)
            self._registered_pid = os.getpid()
            self._forget_known()

    def _forget_known(self) -> None:
        self._known = None
        self._forgot_at = time.monotonic()

    def _learn(self, state: str, epoch: Any, asked_at: float) -> None:
        known = self._known
        if asked_at >= self._forgot_at and (known is None or asked_at >= known.at):
            self._known = _Known(State(state), int(epoch), asked_at)

    def ride(self) -> Admission | None:
        """Step 2: admit without a round trip if this process knows, freshly, that it is CLOSED."""
        self.channel.poll()
        known = self._known
        if (
            known is not None
            and known.state in (State.CLOSED, State.DISABLED)
            and time.monotonic() - known.at < self.closed_ttl
            and self._registered_pid == os.getpid()
        ):
            return Admission(True, known.state, known.epoch, counted=False)
        return None

    def admit(self, token: str) -> Admission:
        self._register()
        cfg = self.config
        command = ("EVALSHA", ADMIT.sha, 3, *self.keys, token, cfg.half_open_calls, cfg.trial_timeout)
        packed = b"%s%s%s" % (self._admit_head, _bulk(token.encode()), self._admit_tail)
        asked_at = time.monotonic()
        admitted, state, epoch, retry_at = self.channel.call(*command, packed=packed)
        self._learn(state, epoch, asked_at)
        trial = int(admitted) == 2
        return Admission(
            bool(int(admitted)),
            State(state),
            int(epoch),
            trial=trial,
            token=token if trial else "",
            retry_at=float(retry_at) if retry_at else None,
        )

    def record(self, admission: Admission, outcome: Outcome, slow: bool = False) -> None:
        variable = (outcome.value, admission.epoch, admission.token, "1" if slow else "0")
        count = "0" if admission.counted else "1"
        packed = b"%s%s%s%s" % (
            self._record_head,
            b"".join(_bulk(str(v).encode()) for v in variable),
            self._record_tail,
            _bulk(count.encode()),
        )
        asked_at = time.monotonic()
        if outcome is not Outcome.SUCCESS:
            self._forget_known()  # our own failure may have tripped it: ask before the next call

        def learn(reply: Any) -> None:
            if outcome is Outcome.SUCCESS:
                self._learn(reply[0], reply[1], asked_at)

        self.channel.send(
            "EVALSHA", RECORD.sha, 3, *self.keys, *variable, *self._record_config, count, packed=packed, on_reply=learn
        )

    def _prepack(self) -> None:
        """Encode the constant parts of both scripts' commands once (Python packing costs more than Redis)."""
        cfg = self.config
        fixed = (RECORD.sha, "3", *self.keys)
        self._record_config = (
            cfg.window_size, cfg.minimum_calls, cfg.failure_rate_threshold, cfg.consecutive_failures,
            cfg.success_threshold, cfg.wait_seconds, cfg.wait_multiplier, cfg.max_wait_seconds,
        )  # fmt: skip
        self._record_head = _array(1 + len(fixed) + 4 + len(self._record_config) + 1) + _bulks("EVALSHA", *fixed)
        self._record_tail = _bulks(*self._record_config)
        self._admit_head = _array(1 + len(fixed) + 3) + _bulks("EVALSHA", ADMIT.sha, "3", *self.keys)
        self._admit_tail = _bulks(cfg.half_open_calls, cfg.trial_timeout)

    def operate(self, operation: str) -> str:
        self._forget_known()
        answer = str(self.channel.call("EVALSHA", OPERATE.sha, 3, *self.keys, operation))
        if operation == "forget":  # the registry lives in another hash slot: a command of its own
            self.channel.call("SREM", self.registry, self.name)
            self._registered_pid = 0
        return answer

    def read(self) -> dict[str, str]:
        return dict(self.channel.call("HGETALL", self.keys[0]) or {})

    def flush(self) -> None:
        self.channel.flush()


def known_breakers(channel: RedisChannel, prefix: str) -> list[str]:
    """Names of every breaker that ever admitted a call against this Redis."""
    return sorted(channel.call("SMEMBERS", f"{prefix}:{REGISTRY_SUFFIX}") or [])
