"""The serving process is SIGKILLed in the middle of an event burst: after a restart (whose start-up
recovery applies what was logged and not applied) every acknowledged event is in the users' state,
none twice; clients then retry what was not acknowledged, with the same ids, and every event sent is
applied exactly once. The server is the HTTP app over the real write path and a SQLite store (no Ray):
a separate process on a loopback port, killed for real."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from rayrec.realtime import EVENTS_LOG, UserStats
from rayrec.store import open_store

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
SERVER = """
import sys, uvicorn
from realtime_doubles import item_rows, toy_movies
from rayrec.realtime import Realtime, RealtimeConfig
from rayrec.retrieval.catalog import ItemCatalog
from rayrec.serving import create_app
from rayrec.serving.security import SecurityConfig
from rayrec.serving.testing import EventsBackend
from rayrec.store import open_store

url, port = sys.argv[1], int(sys.argv[2])
store = open_store(url)
rt = Realtime(store, RealtimeConfig(user_embedding="none"), catalog=ItemCatalog.from_frame(item_rows(toy_movies())))
print("recovered", rt.recover(grace_s=0), flush=True)  # what a replica does on start-up
uvicorn.run(create_app(EventsBackend(rt), security=SecurityConfig()), host="127.0.0.1", port=port, log_level="error")
"""
THREADS, USERS_PER_THREAD, EVENTS_PER_USER = 4, 4, 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT), str(TESTS)])}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, url, str(port)], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, "the server exited at start-up"
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not answer within 60 s")


def post(port: int, body: dict, timeout: float = 10) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/events", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0  # the connection died with the server: not acknowledged


@pytest.mark.slow
def test_sigkill_mid_burst_loses_no_acknowledged_event_and_applies_none_twice(tmp_path) -> None:
    from realtime_doubles import item_rows, toy_movies

    url = f"sqlite://{tmp_path}/store.db"
    movies = toy_movies()
    setup = open_store(url)
    setup.load("item", item_rows(movies), key="movieId")
    movie = int(movies["movieId"].iloc[0])
    port = free_port()
    server = start(url, port)
    events = {t: [{"kind": "click", "user_id": 100 + t * USERS_PER_THREAD + i % USERS_PER_THREAD, "movie_id": movie,
                   "event_id": f"t{t}-{i}"} for i in range(USERS_PER_THREAD * EVENTS_PER_USER)] for t in range(THREADS)}  # fmt: skip
    acked: set[str] = set()
    answered: Counter[int] = Counter()
    lock = threading.Lock()

    def client(t: int) -> None:
        for e in events[t]:
            status = post(port, e)
            with lock:
                answered[status] += 1
                if status == 200:
                    acked.add(e["event_id"])

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    total = THREADS * USERS_PER_THREAD * EVENTS_PER_USER
    deadline = time.monotonic() + 60
    while len(acked) < total // 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(server.pid, signal.SIGKILL)  # mid-burst: some events acknowledged, some in flight
    server.wait(10)
    for th in threads:
        th.join(60)
    assert 0 < len(acked) < total, f"the kill did not land mid-burst ({len(acked)} of {total} acknowledged)"
    assert answered.keys() <= {0, 200}, f"answers other than 200 or a dropped connection: {answered}"

    server = start(url, port)  # start-up recovery runs here
    try:
        store = open_store(url)
        logged = {r["event_id"]: (o, r) for o, r in store.read_log(EVENTS_LOG)}
        assert len(logged) == store.log_length(EVENTS_LOG), "an event id was logged twice"
        per_user = Counter(r["user_id"] for _, r in logged.values())
        states = {u: UserStats.of_row(store.get("user", [u])[0]) for u in per_user}
        lost = [i for i in acked if i not in logged or not states[logged[i][1]["user_id"]].applied(logged[i][0])]
        twice = {u: s.clicks - per_user[u] for u, s in states.items() if s.clicks != per_user[u]}
        assert not lost, f"acknowledged events missing from the state: {lost[:5]}"
        assert not twice, f"users whose clicks differ from their logged events (state - log): {twice}"

        retried = [e for t in range(THREADS) for e in events[t] if e["event_id"] not in acked]
        statuses = Counter(post(port, e) for e in retried)  # the clients' retries, same ids
        assert statuses == Counter({200: len(retried)}), statuses
        sent = Counter(e["user_id"] for t in range(THREADS) for e in events[t])
        final = {u: UserStats.of_row(store.get("user", [u])[0]).clicks for u in sent}
        assert final == dict(sent), "after the retries each event sent must be applied exactly once"
        assert store.log_length(EVENTS_LOG) == total
        print(f"\nSIGKILL mid-burst: {total} events, {len(acked)} acknowledged before the kill, "
              f"{len(logged) - len(acked)} logged but unacknowledged (recovered), {len(retried)} retried; "
              f"lost 0, applied twice 0, 5xx {sum(n for s, n in statuses.items() if s >= 500)}")  # fmt: skip
        store.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
        setup.close()
