"""The store shared by every instance on one Redis (issue 12, `--redis-url`).

Admission is one Lua script per new session: revocation, global / per-IP / per-token counts,
the per-IP rate bucket, lifetime budgets and the session's lease, atomically. Everything else
happens off the hot path in one background loop: lease refresh (so a SIGKILLed instance's
slots expire), batched usage flushes, this instance's kill list, and reconnecting with backoff.
redis-py is blocking, so every call runs in a worker thread; frames never touch Redis.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import orjson
import redis
import trio

from voxgate.supervisor.admission import Budget, Rejection
from voxgate.supervisor.sessions import SessionRef, Spent
from voxgate.supervisor.store import REVOKED, LocalStore, Ticket, budget_rejection, token_id

if TYPE_CHECKING:
    from voxgate.supervisor.server import Supervisor

P = "vg:"
TICK = 0.5  # kill-list poll
FLUSH_EVERY = 2.0  # usage batch interval
BACKOFF_MAX = 5.0
KILL_TTL_MS = 60_000
REVOKE_TTL_S = 3600 + 60

ADMIT = """
local p = 'vg:'
local now = tonumber(ARGV[1]); local lease = tonumber(ARGV[2]); local exp = now + lease
local sid, inst, ip = ARGV[3], ARGV[4], ARGV[5]
if ARGV[14] ~= '' and redis.call('EXISTS', p .. 'revoked:' .. ARGV[14]) == 1 then return {'revoked'} end
redis.call('ZREMRANGEBYSCORE', p .. 'live', '-inf', now)
local maxg = tonumber(ARGV[6])
if maxg > 0 and redis.call('ZCARD', p .. 'live') >= maxg then return {'global_sessions'} end
local ipkey = p .. 'ip:' .. ip
redis.call('ZREMRANGEBYSCORE', ipkey, '-inf', now)
local maxip = tonumber(ARGV[7])
if maxip > 0 and redis.call('ZCARD', ipkey) >= maxip then return {'ip_sessions'} end
local rate = tonumber(ARGV[8])
if rate > 0 then
  local rk = p .. 'rate:' .. ip
  local st = redis.call('HMGET', rk, 't', 's')
  local tokens = tonumber(st[1]) or rate
  local stamp = tonumber(st[2]) or now
  tokens = math.min(rate, tokens + math.max(0, now - stamp) * rate / 60000)
  local allowed = tokens >= 1
  if allowed then tokens = tokens - 1 end
  redis.call('HSET', rk, 't', tostring(tokens), 's', tostring(now))
  redis.call('PEXPIRE', rk, 120000)
  if not allowed then return {'ip_rate', tostring(math.ceil((1 - tokens) * 60 / rate))} end
end
local tkey = ARGV[9]
local out = {'ok'}
if tkey ~= '' then
  local spent = redis.call('HMGET', p .. 'spent:' .. tkey, 'audio', 'tokens')
  local ma, mt = tonumber(ARGV[12]), tonumber(ARGV[13])
  if ma and (tonumber(spent[1]) or 0) >= ma then return {'budget', 'max_audio_seconds'} end
  if mt and (tonumber(spent[2]) or 0) >= mt then return {'budget', 'max_tokens'} end
  local tz, ts = p .. 'tok:' .. tkey, p .. 'tokstart:' .. tkey
  redis.call('ZREMRANGEBYSCORE', tz, '-inf', now)
  local maxs = tonumber(ARGV[10])
  local excess = maxs > 0 and (redis.call('ZCARD', tz) - maxs + 1) or 0
  if excess > 0 then
    if ARGV[11] ~= '1' then return {'budget', 'max_sessions'} end
    for _, v in ipairs(redis.call('ZRANGE', ts, 0, -1)) do
      if not redis.call('ZSCORE', tz, v) then
        redis.call('ZREM', ts, v)
      elseif excess > 0 then
        excess = excess - 1
        redis.call('ZREM', tz, v); redis.call('ZREM', ts, v)
        local owner = redis.call('GET', p .. 'o:' .. v)
        if owner then
          redis.call('RPUSH', p .. 'kill:' .. owner, v .. '|replaced')
          redis.call('PEXPIRE', p .. 'kill:' .. owner, 60000)
        end
        out[#out + 1] = v
      end
    end
  end
  redis.call('ZADD', tz, exp, sid); redis.call('PEXPIRE', tz, lease * 2)
  redis.call('ZADD', ts, now, sid); redis.call('PEXPIRE', ts, lease * 2)
end
redis.call('ZADD', p .. 'live', exp, sid)
redis.call('ZADD', ipkey, exp, sid); redis.call('PEXPIRE', ipkey, lease * 2)
redis.call('SET', p .. 'o:' .. sid, inst, 'PX', lease)
redis.call('SET', p .. 's:' .. sid, ARGV[15], 'PX', lease)
return out
"""


def _refusal(verdict: str, result: list[Any]) -> Rejection:
    """The rejection the ADMIT script's verdict stands for."""
    if verdict == "revoked":
        return REVOKED
    if verdict == "budget":
        return budget_rejection(result[1])
    if verdict == "ip_rate":
        return Rejection(429, "ip_rate", "Too many new sessions from this address", retry_after=max(1, int(result[1])))
    if verdict == "ip_sessions":
        return Rejection(429, "ip_sessions", "Too many sessions from this address", retry_after=5)
    return Rejection(503, "global_sessions", "The gateway is at its session limit", retry_after=5)


class RedisStore(LocalStore):
    """Counts, registry, spending and revocations in Redis; this process's own view (the
    LocalStore it extends) answers while Redis is away with `--redis-failure open`."""

    shared = True

    def __init__(self, server: Supervisor) -> None:
        super().__init__(server)
        cfg = server.config
        self.instance = cfg.instance_id
        self.lease_ms = int(cfg.redis_lease * 1000)
        self.client = redis.Redis.from_url(
            cfg.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True,
        )
        self.script = self.client.register_script(ADMIT)
        self.up = True
        self.resync = True  # write every local lease in full (start, and after an outage)
        self.pending: dict[str, list[float]] = {}  # token key -> [audio, tokens] not yet flushed
        self.pending_totals: dict[str, float] = {}
        self.shared_spent: dict[str, Spent] = {}
        self.released: list[tuple[str, str, str | None]] = []  # (sid, ip, token key)
        self._wake = trio.Event()

    # -- calls -------------------------------------------------------------------------

    async def _call(self, fn: Any) -> Any:
        """Run a blocking redis-py call in a thread; RedisError marks Redis down."""
        try:
            return await trio.to_thread.run_sync(fn)
        except redis.RedisError as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: Exception) -> None:
        self.server.metrics.redis_errors.inc()
        if self.up:
            self.up = False
            policy = self.server.config.redis_failure
            self.server.log.warning(
                "redis unavailable", error=exc.__class__.__name__, policy=policy,
                effect="per-instance limits" if policy == "open" else "new sessions get 503",
            )

    # -- admission ---------------------------------------------------------------------

    async def admit(self, ticket: Ticket, now: float) -> Rejection | None:
        if self.up:
            try:
                return await self._admit_shared(ticket)
            except redis.RedisError:
                pass
        if self.server.config.redis_failure == "closed":
            return Rejection(503, "redis_unavailable", "Shared limits are unavailable, retry shortly", retry_after=2)
        return self.admit_locally(ticket, now)

    def _admit_args(self, ticket: Ticket) -> list[Any]:
        """The ADMIT script's arguments: caps, the token's budget, and the registry entry."""
        cfg = self.server.config
        token = ticket.token
        budget = token.budget if token else Budget()
        ref = SessionRef(ticket.ip, ticket.route, ticket.provider, ticket.sid, origin=ticket.origin, token=token,
                         trace=ticket.trace, started_at=ticket.started_at)
        entry = orjson.dumps({**ref.describe(), "instance": self.instance}).decode()
        return [
            int(time.time() * 1000), self.lease_ms, ticket.sid, self.instance, ticket.ip,
            cfg.max_sessions or 0, cfg.max_sessions_per_ip or 0, cfg.max_new_sessions_per_ip_per_minute or 0,
            token.key if token else "", budget.max_sessions or 0,
            "1" if cfg.on_session_limit == "replace-oldest" else "0",
            "" if budget.max_audio_seconds is None else budget.max_audio_seconds,
            "" if budget.max_tokens is None else budget.max_tokens,
            (token_id(token) or "") if token else "", entry,
        ]

    async def _admit_shared(self, ticket: Ticket) -> Rejection | None:
        args = self._admit_args(ticket)
        if ticket.token is not None and self.is_revoked(ticket.token):
            return REVOKED
        result = await self._call(lambda: self.script(args=args))
        verdict = result[0]
        if verdict == "ok":
            if len(result) > 1:
                self.server.log.info("replacing sessions", sid=ticket.sid, replaced=len(result) - 1)
                self._wake.set()
            return None
        return _refusal(verdict, result)

    def ended(self, ref: SessionRef) -> None:
        self.released.append((ref.sid, ref.ip, ref.token.key if ref.token else None))
        self._wake.set()

    def abandoned(self, ticket: Ticket) -> None:
        self.released.append((ticket.sid, ticket.ip, ticket.token.key if ticket.token else None))
        self._wake.set()

    # -- usage -------------------------------------------------------------------------

    def record(self, ref: SessionRef, delta: dict[str, float]) -> None:
        for name, value in delta.items():
            if value:
                self.pending_totals[name] = self.pending_totals.get(name, 0) + value
        if ref.token is not None:
            batch = self.pending.setdefault(ref.token.key, [0.0, 0])
            batch[0] += delta["audio_up"] + delta["audio_down"]
            batch[1] += delta["tokens"]

    def combined(self, key: str, local: Spent) -> Spent:
        shared = self.shared_spent.get(key, Spent())
        batch = self.pending.get(key, [0.0, 0])
        return Spent(shared.audio_seconds + batch[0], int(shared.tokens + batch[1]))

    async def usage(self) -> dict[str, Any]:
        if self.up:
            try:
                stored = await self._call(lambda: self.client.hgetall(P + "usage"))
            except redis.RedisError:
                return {**self.totals.describe("instance"), "redis": "down"}
            totals = {k: float(v) for k, v in stored.items()}
            for name, value in self.pending_totals.items():
                totals[name] = totals.get(name, 0.0) + value
            return {
                "scope": "shared",
                "audio_seconds": {"up": round(totals.get("audio_up", 0.0), 6),
                                  "down": round(totals.get("audio_down", 0.0), 6)},
                "tokens": int(totals.get("tokens", 0)), "characters": int(totals.get("characters", 0)),
            }
        return {**self.totals.describe("instance"), "redis": "down"}

    # -- registry, kills, revocation -----------------------------------------------------

    async def sessions(self) -> list[dict[str, Any]]:
        local = await super().sessions()
        if not self.up:
            return local
        now = int(time.time() * 1000)

        def fetch() -> list[str | None]:
            sids = self.client.zrangebyscore(P + "live", now, "+inf")
            return self.client.mget([P + "s:" + sid for sid in sids]) if sids else []

        try:
            stored = await self._call(fetch)
        except redis.RedisError:
            return local
        mine = {e["id"] for e in local}
        others = []
        for raw in stored:
            if raw:
                entry = orjson.loads(raw)
                if entry.get("id") not in mine and entry.get("instance") != self.instance:
                    others.append(entry)
        return sorted(local + others, key=lambda e: e.get("started_at", ""))

    async def stop(self, entries: list[dict[str, Any]], reason: str) -> None:
        await super().stop([e for e in entries if e.get("instance") == self.instance], reason)
        remote = [e for e in entries if e.get("instance") != self.instance]
        if remote:
            def push() -> None:
                pipe = self.client.pipeline(transaction=False)
                for e in remote:
                    key = P + "kill:" + e["instance"]
                    pipe.rpush(key, f"{e['id']}|{reason}")
                    pipe.pexpire(key, KILL_TTL_MS)
                pipe.execute()

            try:
                await self._call(push)
            except redis.RedisError:
                pass

    async def revoke(self, ident: str, until: float) -> int:
        ended = await super().revoke(ident, until)
        key = P + "tok:minted:" + ident
        now = int(time.time() * 1000)

        def push() -> int:
            self.client.set(P + "revoked:" + ident, "1", ex=REVOKE_TTL_S)
            count = 0
            for sid in self.client.zrangebyscore(key, now, "+inf"):
                owner = self.client.get(P + "o:" + sid)
                if owner and owner != self.instance:
                    self.client.rpush(P + "kill:" + owner, f"{sid}|terminated")
                    self.client.pexpire(P + "kill:" + owner, KILL_TTL_MS)
                    count += 1
            return count

        try:
            ended += await self._call(push)
        except redis.RedisError:
            pass
        return ended

    # -- background --------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        return {"backend": "redis", "redis": "up" if self.up else "down",
                "failure_policy": self.server.config.redis_failure, "instance": self.instance,
                "lease_s": self.lease_ms / 1000}

    async def run(self) -> None:
        """Kill list every tick; leases and usage every few seconds; reconnect when down.
        On shutdown the last releases and usage are written (bounded, best effort)."""
        try:
            await self._loop()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                if self.up:
                    try:
                        await self._refresh(False)
                        await self._flush()
                    except redis.RedisError:
                        pass

    async def _loop(self) -> None:
        refresh_every = max(TICK, min(self.lease_ms / 3000, 5.0))
        last_refresh = last_flush = -math.inf
        backoff = TICK
        while True:
            with trio.move_on_after(TICK if self.up else backoff):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            if not self.up:
                try:
                    await trio.to_thread.run_sync(self.client.ping)
                except redis.RedisError:
                    self.server.metrics.redis_errors.inc()
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
                self.up, self.resync, backoff = True, True, TICK
                self.server.log.info("redis available again")
            try:
                await self._poll_kills()
                renew = self.resync or now - last_refresh >= refresh_every
                if renew or self.released:
                    await self._refresh(renew)
                    if renew:
                        last_refresh = now
                if self.released or now - last_flush >= FLUSH_EVERY:
                    await self._flush()
                    last_flush = now
            except redis.RedisError:
                continue

    async def _poll_kills(self) -> None:
        key = P + "kill:" + self.instance

        def pop() -> list[str]:
            pipe = self.client.pipeline(transaction=True)
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            return pipe.execute()[0]

        orders = await self._call(pop)
        if not orders:
            return
        wanted: dict[str, str] = {}
        for order in orders:
            sid, _, reason = order.partition("|")
            wanted[sid] = reason or "terminated"
        for ref in self.server.live_sessions():
            if ref.sid in wanted:
                self.server.stop_sessions([ref], wanted[ref.sid])

    async def _refresh(self, renew: bool) -> None:
        """Drop ended sessions and (when due) renew every local lease: one pipeline."""
        released, self.released = self.released, []
        full, self.resync = self.resync, False
        live = [r for r in self.server.live_sessions() if not r.stopping] if renew else []
        now = int(time.time() * 1000)
        exp, lease = now + self.lease_ms, self.lease_ms

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for sid, ip, key in released:
                pipe.zrem(P + "live", sid)
                pipe.zrem(P + "ip:" + ip, sid)
                if key:
                    pipe.zrem(P + "tok:" + key, sid)
                    pipe.zrem(P + "tokstart:" + key, sid)
                pipe.delete(P + "o:" + sid, P + "s:" + sid)
            for ref in live:
                pipe.zadd(P + "live", {ref.sid: exp})
                pipe.zadd(P + "ip:" + ref.ip, {ref.sid: exp})
                pipe.pexpire(P + "ip:" + ref.ip, lease * 2)
                if ref.token is not None:
                    # replaced sessions left the token's set in the admission script: only
                    # a resync after an outage (Redis may have lost everything) adds back
                    pipe.zadd(P + "tok:" + ref.token.key, {ref.sid: exp}, xx=not full)
                    pipe.pexpire(P + "tok:" + ref.token.key, lease * 2)
                    if full:
                        pipe.zadd(P + "tokstart:" + ref.token.key, {ref.sid: int(ref.started_at * 1000)}, nx=True)
                        pipe.pexpire(P + "tokstart:" + ref.token.key, lease * 2)
                pipe.set(P + "o:" + ref.sid, self.instance, px=lease)
                pipe.set(P + "s:" + ref.sid, orjson.dumps({**ref.describe(), "instance": self.instance}), px=lease)
            pipe.execute()

        try:
            await self._call(write)
        except redis.RedisError:
            self.released = released + self.released
            self.resync = True
            raise

    async def _flush(self) -> None:
        """Add this instance's usage since the last flush; learn every live token's total."""
        batch, self.pending = self.pending, {}
        totals, self.pending_totals = self.pending_totals, {}
        keys = sorted(set(batch) | {r.token.key for r in self.server.live_sessions() if r.token})

        def write() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for name, value in totals.items():
                pipe.hincrbyfloat(P + "usage", name, value)
            for key in keys:
                audio, tokens = batch.get(key, (0.0, 0))
                pipe.hincrbyfloat(P + "spent:" + key, "audio", audio)
                pipe.hincrbyfloat(P + "spent:" + key, "tokens", tokens)
                pipe.expire(P + "spent:" + key, REVOKE_TTL_S * 24)
            return pipe.execute()[len(totals):]

        try:
            results = await self._call(write)
        except redis.RedisError:
            for key, (audio, tokens) in batch.items():
                again = self.pending.setdefault(key, [0.0, 0])
                again[0] += audio
                again[1] += tokens
            for name, value in totals.items():
                self.pending_totals[name] = self.pending_totals.get(name, 0) + value
            raise
        for index, key in enumerate(keys):
            audio, tokens = results[3 * index], results[3 * index + 1]
            self.shared_spent[key] = Spent(float(audio), int(float(tokens)))
        live_tokens = {r.token.key: r.token for r in self.server.live_sessions() if r.token}
        for key, token in live_tokens.items():
            self.server.enforce_budget(token, self.spent(key))
