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
from voxgate.control import CONTROL_FD_ENV, Channel, ChannelClosed, make_pair
from voxgate.logs import EventLog
from voxgate.supervisor.sessions import SessionRef

BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 10.0
STABLE_AFTER = 60.0


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
class PendingHandOff:
    """A socket sent to a worker that has not yet said it took it."""

    done: trio.Event = field(default_factory=trio.Event)
    taken: bool = False


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
    pending: dict[str, PendingHandOff] = field(default_factory=dict)  # sid -> awaiting "took"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def load(self) -> int:
        return len(self.sessions)

    async def hand_off(
        self, header: dict[str, Any], payload: bytes, fd: int, ack_timeout: float, ref: SessionRef | None = None,
    ) -> bool:
        """Send a client socket to this worker and wait until it says it took it. False when
        it refused (draining) or died first: a socket still queued in a dead worker's
        channel is lost with it, so the caller keeps its own copy until this returns and
        can try another worker or answer 503 (issue 16 §3).

        The session is counted before the send: a worker can end a short session and
        report "end" before we run again; counting after would leak a session that then
        holds a slot of every cap for good."""
        sid = header["sid"]
        if ref is None:
            ref = SessionRef(header.get("peer", ""), header.get("route", ""), self.provider, sid)
        ref.worker = self.worker_id
        self.sessions[sid] = ref
        pending = self.pending[sid] = PendingHandOff()
        try:
            await self.channel.send(header, payload, fd)
            # The channel closing (worker gone) settles every pending hand-off; the timeout
            # is a safety net beyond the hung-worker watchdog.
            with trio.move_on_after(ack_timeout):
                await pending.done.wait()
        except ChannelClosed:
            self.fail_pending()
        finally:
            self.pending.pop(sid, None)
            if not pending.taken:
                self.sessions.pop(sid, None)
        return pending.taken

    def settle(self, sid: str, taken: bool) -> None:
        """The worker's answer to a hand-off ("took" or "refused")."""
        pending = self.pending.get(sid)
        if pending is not None:
            pending.taken = taken
            pending.done.set()

    def fail_pending(self) -> None:
        """The worker is gone: every socket it had not taken is back with the supervisor,
        and no new one is sent its way."""
        self.state = "gone"
        for pending in self.pending.values():
            pending.done.set()

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.worker_id, "pid": self.pid, "state": self.state, "sessions": self.load}


class Slot:
    """Keeps one serving worker of a provider alive; the restart policy lives here.

    `roll()` (SIGHUP) retires the serving worker without a gap: a new process is spawned at
    once and takes new sessions, while the old one drains its sessions and exits."""

    def __init__(self, pool: ProviderPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.worker: Worker | None = None
        self.retiring: list[Worker] = []
        self.generation = 0
        self.restarts = 0
        self.backoff = BACKOFF_INITIAL
        self.draining = False
        self.stopped = trio.Event()
        self._wake = trio.Event()

    async def run(self) -> None:
        log = self.pool.log
        async with trio.open_nursery() as nursery:
            while not self.draining:
                started = trio.current_time()
                self.generation += 1
                self._wake = trio.Event()
                exited = trio.Event()
                try:
                    worker = await self._spawn()
                except OSError as exc:
                    log.error("worker spawn failed", provider=self.pool.provider, error=exc.__class__.__name__)
                    exited.set()
                else:
                    nursery.start_soon(self._lifecycle, worker, exited)
                    await _first_of(exited.wait, self._wake.wait)
                if self.draining:
                    break
                if not exited.is_set():  # rolled: the old worker drains in the background
                    continue
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
                with trio.move_on_at(trio.current_time() + delay):
                    await self._wake.wait()
        self.stopped.set()

    async def _spawn(self) -> Worker:
        pool = self.pool
        parent_sock, child_sock = make_pair()
        env = worker_env(pool.config, pool.provider, self.index, self.generation)
        env[CONTROL_FD_ENV] = str(child_sock.fileno())
        try:
            process = await trio.lowlevel.open_process(
                worker_command(pool.provider), env=env, pass_fds=(child_sock.fileno(),), process_group=0
            )
        except OSError:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        worker = Worker(pool.provider, env["VOXGATE_WORKER_ID"], process, Channel(parent_sock))
        worker.last_heartbeat = trio.current_time()
        self.worker = worker
        pool.log.info("worker started", provider=pool.provider, worker=worker.worker_id, pid=process.pid)
        return worker

    async def _lifecycle(self, worker: Worker, exited: trio.Event) -> None:
        """Watch one worker process until it is gone, then clean up after it."""
        pool = self.pool
        status = None
        asked_to_stop = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, worker)
                nursery.start_soon(self._watchdog, worker)
                status = await worker.process.wait()
                asked_to_stop = self.draining or worker in self.retiring
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._reap(worker)
            if worker in self.retiring:
                self.retiring.remove(worker)
            if self.worker is worker:
                self.worker = None
            pool.changed()
            exited.set()
        code = worker.process.returncode if status is None else status
        # A worker that drained and exited 0 because we asked it to is routine, not a warning.
        level = "info" if asked_to_stop and code == 0 else "warning"
        pool.log.event(
            level, "worker exited", provider=pool.provider, worker=worker.worker_id, pid=worker.pid,
            status=_describe_status(code),
        )

    async def _reap(self, worker: Worker) -> None:
        worker.state = "gone"
        worker.fail_pending()
        for ref in worker.sessions.values():
            self.pool.on_end(ref)
        worker.sessions.clear()
        if worker.process.returncode is None:
            _kill(worker.process)
            with trio.move_on_after(5):
                await worker.process.wait()
        worker.channel.close()

    async def _receive(self, worker: Worker) -> None:
        while True:
            try:
                msg = await worker.channel.receive()
            except ChannelClosed:
                worker.fail_pending()
                # The process is going away; give it a moment to exit on its own so its
                # status is its own, then make sure. process.wait() ends the lifecycle.
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
            elif kind == "sessions":
                reports = msg.header.get("reports")
                for sid, report in (reports if isinstance(reports, dict) else {}).items():
                    ref = worker.sessions.get(sid)
                    if ref is not None:
                        self.pool.on_report(ref, report)
            elif kind in ("took", "refused"):
                worker.settle(msg.header.get("sid", ""), kind == "took")
            elif kind == "end":
                ref = worker.sessions.pop(msg.header.get("sid", ""), None)
                if ref is not None and isinstance(msg.header.get("report"), dict):
                    self.pool.on_report(ref, msg.header["report"])
                if ref is not None:
                    self.pool.on_end(ref)

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

    def workers(self) -> list[Worker]:
        current = [self.worker] if self.worker is not None and self.worker.state != "gone" else []
        return current + [w for w in self.retiring if w.state != "gone"]

    async def roll(self, timeout: float) -> bool:
        """Retire the serving worker and wait (bounded) until its successor is ready."""
        old = self.worker
        if self.draining or old is None or old.state != "ready":
            return False
        old.state = "draining"
        self.retiring.append(old)
        self.pool.changed()
        await self._send_drain(old)
        self._wake.set()
        with trio.move_on_after(timeout):
            while True:
                new = self.worker
                if new is not None and new is not old and new.state == "ready":
                    return True
                await self.pool.wait_changed()
        return False

    async def drain(self, grace: float) -> None:
        self.draining = True
        for worker in self.workers():
            if worker.process.returncode is None and worker.state in ("ready", "starting"):
                if worker.state == "ready":
                    await self._send_drain(worker, grace)
                worker.state = "draining"
        self.pool.changed()
        self._wake.set()

    async def _send_drain(self, worker: Worker, grace: float | None = None) -> None:
        try:
            await worker.channel.send({"t": "drain", "grace": self.pool.config.grace if grace is None else grace})
        except ChannelClosed:
            pass

    def kill(self) -> None:
        self.draining = True
        for worker in self.workers():
            if worker.process.returncode is None:
                _kill(worker.process)
        self._wake.set()


async def _first_of(*waits) -> None:
    """Return as soon as any of the given no-argument async callables returns."""
    async with trio.open_nursery() as nursery:
        async def run(fn) -> None:
            await fn()
            nursery.cancel_scope.cancel()

        for fn in waits:
            nursery.start_soon(run, fn)


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
        on_report: Callable[[SessionRef, dict], None] = lambda ref, report: None,
        on_end: Callable[[SessionRef], None] = lambda ref: None,
    ) -> None:
        self.provider = provider
        self.config = config
        self.log = log
        self.slots = [Slot(self, i) for i in range(config.workers_per_provider)]
        self.on_restart = on_restart
        self.on_heartbeat = on_heartbeat
        self.on_report = on_report
        self.on_end = on_end
        self._changed = trio.Event()

    def changed(self) -> None:
        """Wake anyone waiting for a ready worker."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def roll(self, timeout: float = 30.0) -> int:
        """Re-exec every worker, one slot at a time; returns how many were replaced."""
        replaced = 0
        for slot in self.slots:
            if await slot.roll(timeout):
                replaced += 1
        return replaced

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(slot.run)

    def workers(self) -> list[Worker]:
        return [w for slot in self.slots for w in slot.workers()]

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
