"""Benchmark: the verifiable access log (docs/transparency.md).

1. The tree's CPU an event: leaf hashing and the integrator's extension of the stored tree, in batches
   as the writer hands them over (with and without the files' writes, to split hashing from I/O).
2. Inclusion proofs on a tree of 10 million entries: read from the stored nodes directly, and through
   `GET /v1/audit/proof/inclusion` of a real gateway (bearer check, access-log event and all), p50/p99.
3. A receipt's delay: requests answered at a steady rate, each receipt polled every 50 ms from its
   answer until a signed checkpoint covers it; p50/p99 seconds (the polling, through httpx at about 3 ms
   of CPU a request, is most of the load: a faster poll measures the client).
4. A witness round trip's CPU in the gateway: the witnesses' client against a reference witness in its
   own process, once a second as the gateway does, the client's process CPU a round (the witness's own
   CPU excluded), as a share of one core.

Loopback only, bounded in count and time. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import notes
from gateway.audit.chain import CheckpointSigner
from gateway.audit.merkle import leaf_hash
from gateway.audit.origin import log_directory
from gateway.audit.segment_store import hold_writer_lock
from gateway.audit.tree import TreeStore
from gateway.audit.witness import WitnessClient, WitnessesFile
from gateway.keyfiles import load_or_create_ed25519
from gateway.metrics import Metrics
from loadtests.harness import in_scratch_dir, report
from tests.support.keys import token_form
from tests.support.realm import build_realm
from tests.support.servers import REPO, GatewayProcess, free_port, wait_until

ENTRY = orjson.dumps(
    {
        "administration": "ceni",
        "attributes_released": ["family_name"],
        "client_id": "ceni-roll",
        "decision": "permit",
        "hash": "a" * 64,
        "id": "b6f2cb66-f1d9-47dd-955f-a0da2dc22e46",
        "latency_ms": 0.8,
        "operation": "verify",
        "prev_hash": "c" * 64,
        "purpose": "voter_roll",
        "seq": 123456,
        "status": 200,
        "subject_hash": "d" * 64,
        "time": "2026-12-03T15:44:46.632632Z",
        "trace_id": "e" * 32,
    },
    option=orjson.OPT_SORT_KEYS,
)


def tree_cpu(root: Path, events: int, batch: int) -> dict[str, float]:
    entries = [ENTRY[:-2] + b"%d}" % i for i in range(batch)]
    tree = TreeStore(root / "cpu")
    tree.open()
    started = time.process_time()
    for _ in range(events // batch):
        tree.extend([leaf_hash(e) for e in entries])
    with_io = (time.process_time() - started) / events * 1e6
    started = time.process_time()
    for _ in range(events // batch):
        [leaf_hash(e) for e in entries]
    hashing = (time.process_time() - started) / events * 1e6
    tree.close()
    return {"tree_cpu_us": round(with_io, 2), "tree_leaf_hash_cpu_us": round(hashing, 2), "tree_batch": batch}


def build_tree(directory: Path, size: int) -> TreeStore:
    tree = TreeStore(directory)
    tree.open()
    chunk = 1 << 16
    for start in range(0, size, chunk):
        tree.extend([hashlib.sha256(b"%d" % i).digest() for i in range(start, min(size, start + chunk))])
    tree.sync()
    return tree


def proofs_direct(tree: TreeStore, size: int, count: int) -> dict[str, float]:
    rng = random.Random(1)  # noqa: S311 (which leaves to prove, not a secret)
    latencies = []
    for _ in range(count):
        seq = rng.randrange(size)
        started = time.perf_counter()
        tree.inclusion(seq, size)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return {
        "inclusion_direct_p50_ms": round(latencies[len(latencies) // 2], 3),
        "inclusion_direct_p99_ms": round(latencies[int(len(latencies) * 0.99)], 3),
    }


def fabricate_log(data: Path, origin: str, size: int) -> None:
    """A log directory holding a tree of `size` leaves and a checkpoint over it signed by the data dir's
    log key: what the proof endpoint reads (the entries themselves are not needed for proofs)."""
    key = load_or_create_ed25519(data / "keys" / "checkpoint-key.pem")
    directory = log_directory(data / "log", origin)
    directory.mkdir(parents=True, mode=0o700)
    tree = build_tree(directory, size)
    signer = CheckpointSigner(key)
    note = notes.sign(notes.Checkpoint(origin, size, tree.root(size)).text(), signer.note_signer(origin))
    line = {**signer.sign(size - 1, "0" * 64, "2026-12-03T00:00:00Z").__dict__, "note": note}
    (directory / "checkpoints.jsonl").write_bytes(orjson.dumps(line) + b"\n")
    (directory / "origin").write_text(origin + "\n")
    (directory / "vkey").write_text(signer.note_signer(origin).verifier.vkey() + "\n")
    tree.close()


def token(gateway: GatewayProcess, realm: Any, client_id: str) -> dict[str, str]:
    form = token_form(client_id, realm.keys[client_id], f"{gateway.base_url}/oauth2/token")
    answer = httpx.post(f"{gateway.base_url}/oauth2/token", data=form, timeout=10)
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def proofs_http(
    gateway: GatewayProcess, officer: dict[str, str], origin: str, size: int, count: int
) -> dict[str, float]:
    """Inclusion proofs served, interleaved with `GET /v1/audit/origins` (as logged, durably, as a proof
    request, with no proof to make): the difference is what the proof costs a request."""
    rng = random.Random(2)  # noqa: S311
    latencies: dict[str, list[float]] = {"inclusion": [], "origins": []}
    with httpx.Client(base_url=gateway.base_url, headers=officer, timeout=10) as client:
        for _ in range(count):
            for name in ("inclusion", "origins"):
                params = {"origin": origin, "seq": rng.randrange(size), "size": size} if name == "inclusion" else {}
                path = "/v1/audit/proof/inclusion" if name == "inclusion" else "/v1/audit/origins"
                started = time.perf_counter()
                answer = client.get(path, params=params)
                latencies[name].append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path}: {answer.status_code} {answer.text}")
    result = {}
    for name, values in latencies.items():
        values.sort()
        result[f"{name}_http_p50_ms"] = round(values[len(values) // 2], 3)
        result[f"{name}_http_p99_ms"] = round(values[int(len(values) * 0.99)], 3)
    return result


async def receipt_delays(
    gateway: GatewayProcess, elections: dict[str, str], count: int, rate: float
) -> dict[str, float]:
    delays: list[float] = []
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=elections, timeout=10) as client:

        async def one() -> None:
            answer = await client.post("/v1/probe/person", json={"nin": "120394857602914"})
            answered = time.perf_counter()
            transaction = answer.json()["transaction_id"]
            while (await client.get(f"/v1/receipts/{transaction}")).status_code != 200:  # noqa: ASYNC110 (polls HTTP)
                await asyncio.sleep(0.05)
            delays.append(time.perf_counter() - answered)

        tasks = []
        for _ in range(count):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    delays.sort()
    return {
        "receipt_delay_p50_s": round(delays[len(delays) // 2], 3),
        "receipt_delay_p99_s": round(delays[int(len(delays) * 0.99)], 3),
        "receipts": len(delays),
    }


def start_witness(state: Path, signer: notes.Signer) -> tuple[subprocess.Popen[bytes], str, str]:
    """A reference witness in its own process: (process, url, its vkey)."""
    made = subprocess.run(  # noqa: S603 (our own CLI)
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "witness",
            "init",
            "--state",
            str(state),
            "--name",
            "bench.example/witness",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    port = free_port()
    witness = subprocess.Popen(  # noqa: S603 (our own CLI)
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "witness",
            "serve",
            "--state",
            str(state),
            "--port",
            str(port),
            "--log",
            signer.verifier.vkey(),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.post(f"{url}/add-checkpoint", content="x", timeout=1).status_code == 400, 20, "witness")
    return witness, url, made.stdout.strip()


async def witness_rounds(root: Path, rounds: int) -> dict[str, float]:
    """The client's CPU a round against a real witness process, one new checkpoint a round."""
    origin = "bench.example/access-log"
    signer = notes.Signer(origin, Ed25519PrivateKey.generate())
    witness, url, vkey = await asyncio.to_thread(start_witness, root / "witness", signer)
    try:
        tree = build_tree(root / "wtree", 1 << 20)
        config = WitnessesFile.model_validate(
            {"quorum": 1, "witnesses": [{"name": "bench.example/witness", "url": url, "vkey": vkey}]}
        )
        recorded: list[int] = []
        async with httpx.AsyncClient() as http:
            client = WitnessClient(
                config, origin, tree.consistency, lambda size, _: recorded.append(size), http, Metrics()
            )
            size = 1000
            cpu = 0.0
            for _ in range(rounds):
                size += 977  # about a second of entries at a busy gateway
                note = notes.sign(notes.Checkpoint(origin, size, tree.root(size)).text(), signer)
                started = time.process_time()
                client.checkpoint_signed(note, size)
                await client.round()
                cpu += time.process_time() - started
        tree.close()
        if len(recorded) != rounds:
            raise RuntimeError(f"the witness cosigned {len(recorded)} of {rounds} checkpoints")
        per_round = cpu / rounds
        return {"witness_round_cpu_ms": round(per_round * 1000, 3), "witness_cpu_share_at_1_per_s": round(per_round, 5)}
    finally:
        witness.terminate()
        await asyncio.to_thread(witness.wait, 10)


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    return in_scratch_dir("jamu-bench-tlog-", lambda root: _measure(root, argv))


def _measure(root: Path, argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree-events", type=int, default=200_000)
    parser.add_argument("--proof-tree-size", type=int, default=10_000_000)
    parser.add_argument("--proofs", type=int, default=2000)
    parser.add_argument("--receipts", type=int, default=300)
    parser.add_argument("--receipt-rate", type=float, default=20.0)
    parser.add_argument("--witness-rounds", type=int, default=200)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"bench": "tlog"}
    result.update(tree_cpu(root, args.tree_events, 64))
    result["tree_cpu_us_batch_1"] = tree_cpu(root / "one", args.tree_events // 10, 1)["tree_cpu_us"]
    result.update(asyncio.run(witness_rounds(root, args.witness_rounds)))

    realm = build_realm(root / "realm")
    origin = "bench.example/access-log/big"
    started = time.perf_counter()
    fabricate_log(realm.data_dir, origin, args.proof_tree_size)
    result["proof_tree_size"] = args.proof_tree_size
    result["proof_tree_build_s"] = round(time.perf_counter() - started, 1)
    directory = log_directory(realm.data_dir / "log", origin)
    reader = TreeStore(directory, writable=False)
    reader.open()
    result.update(proofs_direct(reader, args.proof_tree_size, args.proofs))
    reader.close()
    # Held as a running writer would hold it: the gateway leaves the log to it (it has no entries to adopt).
    lock = hold_writer_lock(directory)
    gateway = GatewayProcess(
        realm.env(GATEWAY_AUDIT_SEAL_INTERVAL_S="1"), factory="tests.support.probe_app:create_durable"
    ).start(root / "gateway.log")
    try:
        officer, elections = token(gateway, realm, "oversight-app"), token(gateway, realm, "elections-app")
        result.update(proofs_http(gateway, officer, origin, args.proof_tree_size, args.proofs))
        result.update(asyncio.run(receipt_delays(gateway, elections, args.receipts, args.receipt_rate)))
    finally:
        gateway.stop()
        if lock is not None:
            os.close(lock)
    return result


def main(argv: list[str] | None = None) -> int:
    return report(measure(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
