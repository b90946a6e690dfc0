#!/usr/bin/env bash
# Checks the declared toolchain floor: the `rust-version` of each workspace package (Cargo.toml,
# crates/xds-engine/Cargo.toml) against every package Cargo.lock resolves to, dev and build
# dependencies and other platforms' dependencies included. Fails, naming them, when a
# dependency declares a higher `rust-version` than ours, or when the workspace packages
# declare different floors. Dependencies that declare none are counted, not checked.
#
# What it cannot do: prove the code builds with that toolchain. Only the toolchain installed
# here is used (`cargo +1.91 check` needs rustup and the network); the floor is only as true as
# the dependencies' declarations and our own use of newer language or library features.
# README.md ("Build notes") says how to check with the floor's toolchain where one is available.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo metadata --format-version 1 --locked | python3 -c '
import json, sys

def version(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

m = json.load(sys.stdin)
members = set(m["workspace_members"])
resolved = {n["id"] for n in m["resolve"]["nodes"]}
packages = [p for p in m["packages"] if p["id"] in resolved]
ours = {p["name"]: p.get("rust_version") for p in packages if p["id"] in members}
missing = sorted(n for n, v in ours.items() if not v)
if missing:
    sys.exit("rust-version: not declared by " + ", ".join(missing))
if len({version(v) for v in ours.values()}) != 1:
    sys.exit("rust-version: the workspace packages disagree: " + ", ".join(f"{n} {v}" for n, v in sorted(ours.items())))
floor = next(iter(ours.values()))
above, undeclared = [], 0
for p in packages:
    if p["id"] in members:
        continue
    v = p.get("rust_version")
    if not v:
        undeclared += 1
    elif version(v) > version(floor):
        above.append("  %s %s needs Rust %s" % (p["name"], p["version"], v))
if above:
    sys.exit(f"rust-version {floor} is below what these dependencies declare (raise it in both Cargo.toml files):\n" + "\n".join(sorted(above)))
highest = max((p.get("rust_version") for p in packages if p["id"] not in members and p.get("rust_version")), key=version, default="none")
print(f"rust-version {floor}: {len(packages) - len(members)} dependencies, the highest declared floor {highest}, {undeclared} declare none")
'
