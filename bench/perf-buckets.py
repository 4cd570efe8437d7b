#!/usr/bin/env python3
"""Where a `perf record` profile of `kss serve` spends its user-space CPU, by kind of work.

    perf record -F 499 -p PID -o FILE -- sleep SECS
    perf-buckets.py FILE [ARGS]   # one JSON object: share of the samples per bucket

ARGS go to `perf report` as they are, e.g. `--pid 12,34` to sum only some processes of a
machine-wide `perf record -a`.

Reads `perf report --no-children --sort sym` (self time per symbol) and puts each symbol in
the first bucket whose pattern it matches (kernel symbols, `[k]`, in their own); the 15
largest unmatched symbols are listed under "other_top". Run as root (or with
perf_event_paranoid ≤ 1) for the kernel's share to be sampled.
"""

import json
import re
import subprocess
import sys

BUCKETS = [
    # The pairing check, hashing to G2, decoding with subgroup checks, the share's scalar
    # multiplication: all in blst (and blsttc's SHA3 of V).
    ("kernel (system calls: network, files, fsync; scheduling)", None),
    ("bls (ciphertext verification, decryption share)", r"blst|blsttc|sha3|keccak|bls12|pairing|miller|G[12]|Fp|mult|final_exp|_38[34]|mont_|mulx|sqr_|add_mod|sub_mod|redx|ct_inverse|ct_is_sq|fp12|fp2|fp6|cyclotomic|line_|map_to|sswu|hash_to|expand_message|mul_382|vec_|inner_loop|ct_"),
    ("ed25519 (request signatures)", r"curve25519|ed25519|dalek|edwards|scalar_mul|sha512|Sha512|sha2::sha512"),
    ("TLS (rustls, ring: AES-GCM, ChaCha)", r"ring_core|ring::|rustls|aes_|gcm_|chacha|poly1305|GFp|aes_hw|ecp_nistz|x25519"),
    ("HTTP/2 and gRPC (h2, hyper, tonic, tower)", r"\bh2::|hyper|tonic|tower|http::|httparse|bytes::"),
    ("protobuf (prost)", r"prost"),
    ("SQLite (sqlite3, sqlx)", r"sqlite3|sqlx|Sqlite|wal[A-Z]|pcache|btree|Btree|vdbe|Vdbe|pager|Pager|walChecksum"),
    ("policy and decision (kss_policy, decider)", r"kss_policy|decider|fancy_regex|regex|jiff"),
    ("hashing (sha2 for digests, MACs)", r"sha2|sha256|Sha256|hmac|blake"),
    ("tokio runtime, channels, timers", r"tokio|mio|parking_lot|crossbeam|futures"),
    ("memory (malloc, free, memcpy, memmove)", r"malloc|free|memcpy|memmove|memset|cfree|_int_|alloc|realloc"),
    ("metrics, tracing, serde", r"prometheus|tracing|serde|fmt::"),
]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    report = subprocess.run(
        ["perf", "report", "-i", sys.argv[1], "--stdio", "--no-children", "--sort", "sym",
         "--percent-limit", "0", "-g", "none", *sys.argv[2:]],
        capture_output=True, text=True, check=True).stdout
    shares = {name: 0.0 for name, _ in BUCKETS}
    other = []
    samples = None
    for line in report.splitlines():
        m = re.match(r"# Samples: (\S+)", line)
        if m:
            samples = m.group(1)
        m = re.match(r"\s+([0-9.]+)%\s+\[([.k])\]\s+(.*)$", line)
        if not m:
            continue
        pct, kernel, sym = float(m.group(1)), m.group(2) == "k", m.group(3).strip()
        for name, pattern in BUCKETS:
            if (pattern is None and kernel) or (pattern is not None and not kernel and re.search(pattern, sym)):
                shares[name] += pct
                break
        else:
            other.append((pct, sym))
    other.sort(reverse=True)
    print(json.dumps({
        "samples": samples,
        "percent": {k: round(v, 1) for k, v in shares.items()},
        "other_percent": round(sum(p for p, _ in other), 1),
        "other_top": [f"{p:.1f}% {s[:100]}" for p, s in other[:15]],
    }, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
