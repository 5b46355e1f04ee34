"""ChangeFeed's interface (runtime/channel.py) for jobs on nodes reached through a runner (SSH test nodes,
cloud VMs, SSH node pools), whose files cannot be stat-ed from here: the node's agent stats them itself and
pushes a line per change over one long-lived command (`watch`, AgentClient.watch).

One stream per node of a watched cluster (a reader thread each; over the cluster's runtime, so a session on
the connection its polls use) for every watched job on it. `changed(key, job_id, source, min_gap)` is True
- the first time a key is seen (the caller looks once);
- when an event of the job arrived since the last look: a status change at once, log growth at most once per
  `min_gap` seconds, a change of the `also` path (under the node's home) at most once per `also_gap`;
- at once when a node's stream ended or failed (the job ended there, the node was lost, the connection
  dropped) or its beats stopped for `misses` beats. The cluster's streams are then stopped and opened again
  `retry` seconds later; `lost(key)` says (once) that it was a connection that dropped.
`watching(key)`: every node's stream of the key's cluster is up, so the caller may push its regular look far
out; while not (opening, ended, an agent older than `watch`: AgentOutdated), the caller polls on its interval.
`source()` gives (cluster name, one AgentClient per node), or None; it is called when streams are (re)opened.
`forget(keep)` drops the keys not in `keep` and stops the streams no key uses.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from .agent_client import AgentOutdated
from .channel import gated_change
from .runner import NodeUnreachable

OUTDATED_RETRY = 600.0  # an agent without `watch` is asked again this much later (the cluster may be relaunched)


class _Stopped(Exception):
    pass


class _Stream:
    def __init__(self, now: float):
        self.started, self.last, self.up, self.end, self.stop = now, now, False, None, False
        self.state: dict[int, int] = {}  # job id → status changes seen since the first beat
        self.out: dict[int, int] = {}  # job id → log growths seen since the first beat
        self.also = 0
        self.dropped = self.outdated = False


class _Group:
    def __init__(self, name, jobs: Iterable[int], n: int, now: float):
        self.name, self.jobs = name, frozenset(jobs)
        self.streams = [_Stream(now) for _ in range(n)]
        self.dead: str | None = None

    def counts(self, job_id: int) -> tuple[int, int, int]:
        return (sum(s.state.get(job_id, 0) for s in self.streams), sum(s.out.get(job_id, 0) for s in self.streams),
                sum(s.also for s in self.streams))


class _Key:
    def __init__(self, job_id: int, now: float):
        self.job_id, self.group, self.seen, self.told, self.retry_at = job_id, None, (0, 0, 0), [now, now], 0.0
        self.lost = False


class StreamFeed:
    def __init__(self, every: float = 0.3, beat: float = 2.0, misses: int = 3, retry: float = 5.0,
                 open_timeout: float = 20.0, also: str | None = None, also_gap: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.every, self.beat, self.misses, self.retry, self.open_timeout = every, beat, misses, retry, open_timeout
        self.also, self.also_gap, self.clock = also, also_gap, clock
        self._keys: dict[object, _Key] = {}
        self._groups: dict[object, _Group] = {}
        self._lock = threading.Lock()
        self._forget_at = 0.0

    # -- the caller's side -------------------------------------------------------------------------
    def changed(self, key, job_id: int | None, source: Callable[[], tuple | None], min_gap: float = 0.0) -> bool:
        if job_id is None:
            return False
        now = self.clock()
        with self._lock:
            k = self._keys.get(key)
            first = k is None or k.job_id != job_id
            if first:
                k = self._keys[key] = _Key(job_id, now)
            g = k.group
            if g is not None:
                why = self._health(g, now)
                if why is None:
                    return self._moved(k, g.counts(job_id), now, min_gap) or first
                k.group, k.retry_at = None, now + (OUTDATED_RETRY if why == "outdated" else self.retry)
                k.lost = any(s.dropped for s in g.streams)
                return why != "outdated" or first
            if now < k.retry_at:
                return first
        self._open(k, source, now)
        return first

    def watching(self, key) -> bool:
        with self._lock:
            k = self._keys.get(key)
            g = k.group if k is not None else None
            return g is not None and g.dead is None and all(s.up and s.end is None for s in g.streams)

    def lost(self, key) -> bool:
        """Whether the key's last stream ended because a node's connection dropped (told once)."""
        with self._lock:
            k = self._keys.get(key)
            was = k is not None and k.lost
            if was:
                k.lost = False
            return was

    def forget(self, keep: Iterable) -> None:
        now = self.clock()
        if now < self._forget_at:
            return
        self._forget_at = now + 5.0
        keep = set(keep)
        with self._lock:
            for key in [key for key in self._keys if key not in keep]:
                del self._keys[key]
            used = {k.group.name for k in self._keys.values() if k.group is not None}
            for name in [n for n in self._groups if n not in used]:
                self._stop(self._groups.pop(name), "no job watched")

    def close(self) -> None:
        with self._lock:
            for g in list(self._groups.values()):
                self._stop(g, "closed")

    # -- rules (under the lock) ----------------------------------------------------------------------
    def _moved(self, k: _Key, now_counts: tuple[int, int, int], now: float, min_gap: float) -> bool:
        moved, k.seen, k.told = gated_change(k.seen, now_counts, k.told, now, min_gap, self.also_gap)
        return moved

    def _health(self, g: _Group, now: float) -> str | None:
        if g.dead is None:
            for s in g.streams:
                if s.outdated:
                    g.dead = "outdated"
                elif s.end is not None:
                    g.dead = s.end
                elif s.up and now - s.last > self.misses * self.beat:
                    g.dead = f"no beat for {now - s.last:.1f} s"
                elif not s.up and now - s.started > self.open_timeout:
                    g.dead = f"not up after {self.open_timeout:g} s"
                if g.dead is not None:
                    self._stop(g, g.dead)
                    break
        return g.dead

    def _stop(self, g: _Group, why: str) -> None:
        g.dead = g.dead or why
        for s in g.streams:
            s.stop = True
        if self._groups.get(g.name) is g:
            del self._groups[g.name]

    # -- streams -------------------------------------------------------------------------------------
    def _open(self, k: _Key, source, now: float) -> None:
        src = source()
        with self._lock:
            if src is None:
                k.retry_at = now + self.retry
                return
            name, agents = src
            g = self._groups.get(name)
            if g is not None and self._health(g, now) is None and k.job_id in g.jobs and len(agents) == len(g.streams):
                k.group, k.seen = g, g.counts(k.job_id)
                return
            members = [o for o in self._keys.values() if o.group is not None and o.group.name == name]
            new = _Group(name, {o.job_id for o in members} | {k.job_id}, len(agents), now)
            if g is not None:
                self._stop(g, "replaced")
            for o in members + [k]:
                o.group, o.seen = new, (0, 0, 0)
            self._groups[name] = new
        for i, (agent, s) in enumerate(zip(agents, new.streams)):
            threading.Thread(target=self._read, args=(new, s, agent), daemon=True, name=f"watch-{name}-{i}").start()

    def _read(self, g: _Group, s: _Stream, agent) -> None:
        end = "the node's stream ended"
        try:
            agent.watch(sorted(g.jobs), lambda doc: self._on(s, doc), every=self.every, beat=self.beat, also=self.also)
        except _Stopped:
            end = "stopped"
        except AgentOutdated:
            s.outdated = True
        except NodeUnreachable as exc:
            s.dropped, end = True, exc.message
        except Exception as exc:  # noqa: BLE001 - whatever ended the stream, the caller looks at the job
            end = str(exc) or type(exc).__name__
        with self._lock:
            s.end = end

    def _on(self, s: _Stream, doc: dict) -> None:
        with self._lock:
            if s.stop:
                raise _Stopped()
            s.last = self.clock()
            if "beat" in doc:
                s.up = True
            elif not s.up:  # the first lines: the state the stream starts from
                return
            elif "job" in doc:
                d = s.state if "row" in doc else s.out
                d[doc["job"]] = d.get(doc["job"], 0) + 1
            elif "also" in doc:
                s.also += 1
