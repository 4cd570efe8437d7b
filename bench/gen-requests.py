#!/usr/bin/env python3
"""Writes a request log for `kss policy eval` benchmarks: one JSON request per line.

The mix is meant to look like a few weeks of a keyserver's audit log replayed:

* 2,000 profiles whose traffic follows a shifted Zipf law (weight 1/(rank + 10)), so a
  few hundred heavy users exceed the example policy's 30 decrypts a day and fall through
  to rule set 1 (or are denied), while most stay within quota;
* request types: decrypt 70 %, search 20 %, start_session 3 %, create_profile 2 %,
  rename 2 %, secure_export 1 %, change_profile 1 %, create_location 1 %;
* decrypt requests carry 1 (80 %), 2 (15 %) or 3 (5 %) metadata entries under
  public/ finance/ hr/ engineering/ legal/ home/<user>/, 0-2 sub-directories deep,
  85 % of them complete;
* every request carries the profile's 12 verification words; one profile in ten has
  words beginning `humble busy much cactus` (approved for search by the example policy);
* instants are in order (a log is chronological; the quota store denies a request whose
  clock runs behind its counters) over 28 days from Monday 2022-03-07T00:00:00Z, ten
  times denser in office hours on weekdays than at night and on weekends.

Everything derives from a SplitMix64 generator with integer arithmetic only, so the
output depends only on the seed and the line count, and the in-memory log that
keyserver/server/benches/policy_eval.rs builds (a port of this file) is byte-identical
for the same arguments.

Usage: bench/gen-requests.py [--lines N] [--seed S] [-o FILE]
"""

import argparse
import bisect
import sys
from datetime import datetime, timezone

MASK = (1 << 64) - 1

WORDS = [
    "humble", "busy", "much", "cactus", "apple", "bridge", "candle", "desert",
    "eagle", "forest", "garden", "harbor", "island", "jungle", "kettle", "ladder",
    "meadow", "needle", "orange", "pepper", "quartz", "river", "saddle", "timber",
    "umbrella", "valley", "walnut", "yellow", "zipper", "anchor", "basket", "cobalt",
    "dragon", "ember", "falcon", "glacier", "hollow", "indigo", "jasmine", "kernel",
    "lantern", "marble", "nectar", "oyster", "pillow", "quiver", "ribbon", "silver",
    "tunnel", "velvet", "willow", "xenon", "yonder", "zephyr", "report", "budget",
    "invoice", "contract", "payroll", "roadmap", "design", "minutes", "summary", "draft",
]
PHRASE = ["humble", "busy", "much", "cactus"]
PROFILES = 2000
PROFILE_WORDS = 12

TYPES = [
    ("decrypt", 700), ("search", 200), ("start_session", 30), ("create_profile", 20),
    ("rename", 20), ("secure_export", 10), ("change_profile", 10), ("create_location", 10),
]
META_COUNTS = [(1, 80), (2, 15), (3, 5)]
TOPS = [("public", 30), ("finance", 20), ("hr", 10), ("engineering", 25), ("legal", 5), ("home", 10)]
EXTS = ["pdf", "docx", "xlsx", "txt", "png"]
COMPLETE_PERCENT = 85

START = 1646611200  # 2022-03-07T00:00:00Z, a Monday
DAYS = 28
WEEKDAY_HOURS = [1, 1, 1, 1, 1, 1, 2, 5, 10, 10, 10, 10, 8, 10, 10, 10, 10, 8, 5, 3, 2, 2, 1, 1]
WEEKEND_HOURS = [1] * 24

SEED = 0x6B7373  # "kss"


class Rng:
    """SplitMix64."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n

    def hex(self, nbytes):
        return "".join("%016x" % self.next() for _ in range(nbytes // 8))

    def pick(self, cumulative):
        """Index drawn with the weights whose running sums are `cumulative`."""
        return bisect.bisect_right(cumulative, self.below(cumulative[-1]))


def running(weights):
    out, total = [], 0
    for w in weights:
        total += w
        out.append(total)
    return out


def profiles(seed):
    out = []
    for i in range(PROFILES):
        rng = Rng(seed ^ (0x5EED0000 + i))
        profile_id = rng.hex(16)
        device_id = rng.hex(16)
        words = [WORDS[rng.below(len(WORDS))] for _ in range(PROFILE_WORDS)]
        if i % 10 == 3:
            words[: len(PHRASE)] = PHRASE
        out.append((profile_id, device_id, words))
    return out


class Clock:
    """The instant of line n of `lines`: in order, denser in office hours."""

    def __init__(self, lines):
        self.lines = lines
        self.weights = []
        for day in range(DAYS):
            self.weights.extend(WEEKDAY_HOURS if day % 7 < 5 else WEEKEND_HOURS)
        self.cumulative = running(w * 3600 for w in self.weights)

    def at(self, n):
        position = n * self.cumulative[-1] // self.lines
        slot = bisect.bisect_right(self.cumulative, position)
        before = self.cumulative[slot - 1] if slot > 0 else 0
        return START + slot * 3600 + (position - before) // self.weights[slot]


def rfc3339(seconds):
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lines(count, seed):
    people = profiles(seed)
    zipf = running(1_000_000 // (rank + 10) for rank in range(PROFILES))
    types = running(w for _, w in TYPES)
    meta_counts = running(w for _, w in META_COUNTS)
    tops = running(w for _, w in TOPS)
    clock = Clock(count)
    rng = Rng(seed)
    for n in range(count):
        profile_id, device_id, words = people[rng.pick(zipf)]
        request_type = TYPES[rng.pick(types)][0]
        parts = [
            '{"type":"%s","profile_id":"%s","profile_words":[%s],"device_id":"%s"'
            % (request_type, profile_id, ",".join('"%s"' % w for w in words), device_id)
        ]
        if request_type == "decrypt":
            metas = []
            for _ in range(META_COUNTS[rng.pick(meta_counts)][0]):
                path = [TOPS[rng.pick(tops)][0]]
                if path[0] == "home":
                    path.append(WORDS[rng.below(len(WORDS))])
                for _ in range(rng.below(3)):
                    path.append(WORDS[rng.below(len(WORDS))])
                name = WORDS[rng.below(len(WORDS))]
                path.append("%s.%s" % (name, EXTS[rng.below(len(EXTS))]))
                complete = rng.below(100) < COMPLETE_PERCENT
                metas.append(
                    '{"meta":"%s","complete":%s}' % ("/".join(path), "true" if complete else "false")
                )
            parts.append(',"auth_meta":[%s],"cryptographic_id":"%s"' % (",".join(metas), rng.hex(32)))
        parts.append(',"at":"%s"}\n' % rfc3339(clock.at(n)))
        yield "".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="number of requests (default 1000000)")
    parser.add_argument("--seed", type=lambda s: int(s, 0), default=SEED, help="generator seed")
    parser.add_argument("-o", "--output", help="file to write (default: standard output)")
    args = parser.parse_args()
    out = open(args.output, "w", encoding="ascii", newline="\n") if args.output else sys.stdout
    with out:
        buffer = []
        for line in lines(args.lines, args.seed):
            buffer.append(line)
            if len(buffer) >= 10_000:
                out.write("".join(buffer))
                buffer.clear()
        out.write("".join(buffer))


if __name__ == "__main__":
    main()
