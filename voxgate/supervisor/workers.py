"""Worker lifecycle: spawn, watch, restart with backoff, drain. The arbiter of voxgate.

Each provider has a `ProviderPool` of `Slot`s (one per `--workers-per-provider`). A slot
keeps exactly one worker process alive forever: when it exits, dies or stops sending
heartbeats it is killed and respawned, at once after a stable run, otherwise after a delay
that doubles from 0.1 s to a 10 s cap. The supervisor never exits because a worker crashed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from voxgate.config import KEY_VARS, PROVIDERS, WORKER_CONFIG_ENV, Config
from voxgate.control import Channel, ChannelClosed, make_pair
from voxgate.logs import EventLog

BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 10.0
STABLE_AFTER = 60.0
CONTROL_FD_ENV = "VOXGATE_CONTROL_FD"


def worker_command(provider: str) -> list[str]:
    return [sys.executable, "-m", f"voxgate.workers.{provider}"]


def worker_env(config: Config, provider: str, slot: int, generation: int) -> dict[str, str]:
    """The worker sees its own key only, plus the non-secret config."""
    env = dict(os.environ)
    for other in PROVIDERS:
        env.pop(KEY_VARS[other], None)
    key = config.key_for(provider)
    if key:
        env[KEY_VARS[provider]] = key
    env[WORKER_CONFIG_ENV] = config.to_worker_json()
    env["VOXGATE_WORKER_ID"] = f"{provider}-{slot}.{generation}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(slots=True)
class SessionRef:
    """What the supervisor remembers of a handed-off session."""

    ip: str
    route: str


@dataclass
class Worker:
    """One running worker process as the supervisor sees it."""

    provider: str
    worker_id: str
    process: trio.Process
    channel: Channel
    state: str = "starting"  # starting | ready | draining | gone
    sessions: dict[str, SessionRef] = field(default_factory=dict)
    last_heartbeat: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def load(self) -> int:
        return len(self.sessions)

    async def hand_off(self, header: dict[str, Any], payload: bytes, fd: int) -> None:
        """Send a client socket to this worker; raises ChannelClosed if it is gone."""
        await self.channel.send(header, payload, fd)
        self.sessions[header["sid"]] = SessionRef(header.get("peer", ""), header.get("route", ""))

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.worker_id, "pid": self.pid, "state": self.state, "sessions": self.load}


class Slot:
    """Keeps one worker of a provider alive; the restart policy lives here."""

    def __init__(self, pool: ProviderPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.worker: Worker | None = None
        self.generation = 0
        self.restarts = 0
        self.backoff = BACKOFF_INITIAL
        self.draining = False
        self.stopped = trio.Event()

    async def run(self) -> None:
        log = self.pool.log
        while not self.draining:
            started = trio.current_time()
            self.generation += 1
            try:
                await self._run_once()
            except OSError as exc:
                log.error("worker spawn failed", provider=self.pool.provider, error=exc.__class__.__name__)
            if self.draining:
                break
            lived = trio.current_time() - started
            if lived >= STABLE_AFTER:
                self.backoff = BACKOFF_INITIAL
                delay = 0.0
            else:
                delay = self.backoff
                self.backoff = min(self.backoff * 2, BACKOFF_CAP)
            self.restarts += 1
            self.pool.on_restart(self.pool.provider)
            log.warning(
                "worker restarting", provider=self.pool.provider, slot=self.index,
                lived=f"{lived:.2f}s", delay=f"{delay:.2f}s", restarts=self.restarts,
            )
            await trio.sleep(delay)
        self.stopped.set()

    async def _run_once(self) -> None:
        pool = self.pool
        parent_sock, child_sock = make_pair()
        env = worker_env(pool.config, pool.provider, self.index, self.generation)
        env[CONTROL_FD_ENV] = str(child_sock.fileno())
        try:
            process = await trio.lowlevel.open_process(
                worker_command(pool.provider), env=env, pass_fds=(child_sock.fileno(),), process_group=0
            )
        finally:
            child_sock.close()
        worker = Worker(pool.provider, env["VOXGATE_WORKER_ID"], process, Channel(parent_sock))
        worker.last_heartbeat = trio.current_time()
        self.worker = worker
        pool.log.info("worker started", provider=pool.provider, worker=worker.worker_id, pid=process.pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, worker, nursery.cancel_scope)
                nursery.start_soon(self._watchdog, worker)
                status = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._reap(worker)
        pool.log.warning(
            "worker exited", provider=pool.provider, worker=worker.worker_id, pid=worker.pid,
            status=_describe_status(status), lost_sessions=len(worker.sessions),
        )

    async def _reap(self, worker: Worker) -> None:
        worker.state = "gone"
        worker.sessions.clear()
        if worker.process.returncode is None:
            _kill(worker.process)
            with trio.move_on_after(5):
                await worker.process.wait()
        worker.channel.close()

    async def _receive(self, worker: Worker, scope: trio.CancelScope) -> None:
        while True:
            try:
                msg = await worker.channel.receive()
            except ChannelClosed:
                # The process is going away; give it a moment to exit on its own so its
                # status is its own, then make sure. process.wait() ends the round.
                with trio.move_on_after(2):
                    await worker.process.wait()
                _kill(worker.process)
                return
            kind = msg.header.get("t")
            worker.last_heartbeat = trio.current_time()
            if kind == "ready":
                if worker.state == "starting":
                    worker.state = "draining" if self.draining else "ready"
                    self.pool.log.info("worker ready", provider=self.pool.provider, worker=worker.worker_id, pid=worker.pid)
                    self.pool.changed()
                    if self.draining:
                        await self._send_drain(worker)
            elif kind == "hb":
                self.pool.on_heartbeat(self.pool.provider, msg.header.get("stats", {}))
            elif kind == "end":
                worker.sessions.pop(msg.header.get("sid", ""), None)

    async def _watchdog(self, worker: Worker) -> None:
        timeout = self.pool.config.worker_timeout
        while True:
            await trio.sleep(min(1.0, timeout / 4))
            if trio.current_time() - worker.last_heartbeat > timeout:
                self.pool.log.error(
                    "worker hung, killing", provider=self.pool.provider, worker=worker.worker_id,
                    pid=worker.pid, silent_for=f"{timeout:.1f}s",
                )
                _kill(worker.process)
                return

    async def drain(self, grace: float) -> None:
        self.draining = True
        worker = self.worker
        if worker is not None and worker.state in ("ready", "starting") and worker.process.returncode is None:
            if worker.state == "ready":
                await self._send_drain(worker, grace)
            worker.state = "draining"
            self.pool.changed()

    async def _send_drain(self, worker: Worker, grace: float | None = None) -> None:
        try:
            await worker.channel.send({"t": "drain", "grace": self.pool.config.grace if grace is None else grace})
        except ChannelClosed:
            pass

    def kill(self) -> None:
        self.draining = True
        if self.worker is not None and self.worker.process.returncode is None:
            _kill(self.worker.process)


def _kill(process: trio.Process) -> None:
    try:
        process.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if status < 0:
        try:
            return signal.Signals(-status).name
        except ValueError:
            return f"signal {-status}"
    return f"exit {status}"


class ProviderPool:
    """All worker slots of one provider, and the choice of worker for a new session."""

    def __init__(
        self,
        provider: str,
        config: Config,
        log: EventLog,
        *,
        on_restart: Callable[[str], None] = lambda provider: None,
        on_heartbeat: Callable[[str, dict], None] = lambda provider, stats: None,
    ) -> None:
        self.provider = provider
        self.config = config
        self.log = log
        self.slots = [Slot(self, i) for i in range(config.workers_per_provider)]
        self.on_restart = on_restart
        self.on_heartbeat = on_heartbeat
        self._changed = trio.Event()

    def changed(self) -> None:
        """Wake anyone waiting for a ready worker."""
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(slot.run)

    def workers(self) -> list[Worker]:
        return [s.worker for s in self.slots if s.worker is not None and s.worker.state != "gone"]

    def ready_workers(self) -> list[Worker]:
        return [w for w in self.workers() if w.state == "ready"]

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots)

    def pick(self) -> Worker | None:
        """The least-loaded ready worker, or None."""
        ready = self.ready_workers()
        return min(ready, key=lambda w: w.load) if ready else None

    async def wait_for_worker(self, timeout: float) -> Worker | None:
        """A ready worker, waiting up to `timeout` while one (re)starts."""
        with trio.move_on_after(timeout):
            while True:
                worker = self.pick()
                if worker is not None:
                    return worker
                if all(s.draining for s in self.slots):
                    return None
                await self._changed.wait()
        return None

    async def drain(self, grace: float) -> None:
        for slot in self.slots:
            await slot.drain(grace)

    async def wait_stopped(self) -> None:
        for slot in self.slots:
            await slot.stopped.wait()

    def kill(self) -> None:
        for slot in self.slots:
            slot.kill()

    def snapshot(self) -> list[dict[str, Any]]:
        return [w.snapshot() for w in self.workers()]
