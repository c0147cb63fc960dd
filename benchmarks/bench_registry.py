"""The registry under a realistic catalogue: search latency (p50/p99) with 10,000 plugins, and
publish and download throughput, through the real server and the real client over loopback.

    .venv/bin/python benchmarks/bench_registry.py [--plugins N] [--queries N] [--publishes N]

The catalogue is seeded straight into the registry's database (10,000 real publishes would
time ``open_package`` 10,000 times, which the publish figure already shows); searches then go
over HTTP: exact ids, typos (a swapped pair, a dropped letter), prefixes and description words.
Publishes are real packages (verified, signed, look-alike-checked against the whole
catalogue). Medians and 99th percentiles; machines here are small and noisy.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from cordon.runtime._marketplace._client import RegistryClient
from cordon.runtime._marketplace._db import DB_FILE, Database
from cordon.runtime._marketplace._publish import Registry
from cordon.runtime._packages._archive import pack

CORDON = str(Path(sys.executable).parent / "cordon")
WORDS = (
    "docker",
    "kube",
    "weather",
    "git",
    "slack",
    "mail",
    "image",
    "audio",
    "video",
    "pdf",
    "json",
    "yaml",
    "sql",
    "redis",
    "cache",
    "http",
    "proxy",
    "auth",
    "token",
    "crypto",
    "log",
    "metric",
    "trace",
    "cloud",
    "azure",
    "aws",
    "storage",
    "queue",
    "kafka",
    "search",
    "index",
    "vector",
    "embed",
    "llm",
    "chat",
    "shell",
    "cron",
    "backup",
    "sync",
    "diff",
    "lint",
    "format",
    "test",
    "mock",
    "deploy",
    "build",
)


def seed(data: Path, n: int) -> list[str]:
    """``n`` plugins with one version each, straight into the database (ids are distinct by
    a number, so no two are look-alikes of each other's words alone)."""
    Registry(data)  # schema, key
    db = Database(data / DB_FILE)
    rng = random.Random(7)
    ids = []
    now = time.time()
    with db.write() as conn:
        for i in range(n):
            a, b = rng.sample(WORDS, 2)
            pid = f"{a}-{b}-{i}"
            ids.append(pid)
            desc = f"{a.title()} and {b} tools for {rng.choice(WORDS)} pipelines"
            conn.execute(
                "INSERT INTO plugins (id, name, description, author, category, keywords, "
                "homepage, repository, readme, latest, permissions, created, updated, downloads)"
                " VALUES (?, ?, ?, 'bench', ?, ?, '', '', '', '1.0.0', '[\"log\"]', ?, ?, ?)",
                (
                    pid,
                    f"{a} {b}",
                    desc,
                    rng.choice(WORDS[:8]),
                    json.dumps([a, b]),
                    now,
                    now,
                    rng.randrange(10_000),
                ),
            )
            conn.execute(
                "INSERT INTO versions (plugin_id, version, sha256, size, signature, manifest, "
                "permissions, dependencies, published) VALUES (?, '1.0.0', '', 0, '', '', "
                "'[\"log\"]', '[]', ?)",
                (pid, now),
            )
            db.refresh_fts(conn, pid)
            db.add_id_keys(conn, pid)
    return ids


def queries(ids: list[str], n: int) -> list[str]:
    rng = random.Random(11)
    out = []
    for i in range(n):
        pid = rng.choice(ids)
        word = pid.split("-")[0]
        kind = i % 4
        if kind == 0:
            out.append(pid)
        elif kind == 1 and len(word) > 3:
            j = rng.randrange(len(word) - 1)
            out.append(word[:j] + word[j + 1] + word[j] + word[j + 2 :])  # swapped pair
        elif kind == 2:
            out.append(word[:4])
        else:
            out.append(f"{word} pipelines")
    return out


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def make_packages(root: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        folder = root / "src" / f"p{i}"
        folder.mkdir(parents=True)
        (folder / "plugin.toml").write_text(
            f'[plugin]\nid = "zbench{i:05d}x"\nname = "b"\nversion = "1.0.0"\n'
            'entry = "m:plugin"\npermissions = ["log"]\n'
        )
        (folder / "m.py").write_text("from cordon.worker import Plugin\nplugin = Plugin()\n")
        out.append(pack(folder, root / "dist"))
    return out


async def measure(
    url: str, data: Path, ids: list[str], args: argparse.Namespace, packages: list[Path]
) -> None:
    async with RegistryClient(url) as reg:
        lat = []
        for q in queries(ids, args.queries):
            t = time.perf_counter()
            await reg.search(q)
            lat.append((time.perf_counter() - t) * 1000)
        print(
            f"search over HTTP, {len(ids)} plugins, {len(lat)} queries: "
            f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms"
        )
        token = Registry(data).create_token([f"zbench{i:05d}x" for i in range(len(packages))], None)
        t = time.perf_counter()
        for p in packages:
            await reg.publish(p, token)
        dt = time.perf_counter() - t
        print(
            f"publish: {len(packages)} packages in {dt:.2f} s = {len(packages) / dt:.1f}/s "
            f"(median size {statistics.median(p.stat().st_size for p in packages)} B)"
        )
        key = (await reg.well_known())["key"]
        (info,) = await reg.versions("zbench00000x")
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            for i in range(args.downloads):
                dest = Path(d) / str(i)
                dest.mkdir()
                await reg.download(info, dest, key=key)
            dt = time.perf_counter() - t
        print(f"download (verified): {args.downloads} in {dt:.2f} s = {args.downloads / dt:.1f}/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugins", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--publishes", type=int, default=50)
    ap.add_argument("--downloads", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "registry"
        t = time.perf_counter()
        ids = seed(data, args.plugins)
        print(f"seeded {len(ids)} plugins in {time.perf_counter() - t:.1f} s")
        db = Database(data / DB_FILE)
        lat = []
        for q in queries(ids, args.queries):
            t = time.perf_counter()
            db.listing(q=q, limit=20, offset=0)
            lat.append((time.perf_counter() - t) * 1000)
        print(
            f"search in-process (SQL + typo scan): p50 {pct(lat, 50):.1f} ms, "
            f"p99 {pct(lat, 99):.1f} ms"
        )
        packages = make_packages(root, args.publishes)
        proc = subprocess.Popen(
            [CORDON, "registry", "serve", "--data", str(data), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "the registry did not start"
            url = proc.stdout.readline().split()[-1]
            anyio.run(measure, url, data, ids, args, packages)
        finally:
            proc.terminate()
            proc.wait(15)
            proc.stdout.close()


if __name__ == "__main__":
    main()
