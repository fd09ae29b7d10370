#!/usr/bin/env bash
# The one-thread batch builder at a git revision (A) against the working tree (B), in one process:
# rounds of 10 batches of each, alternating, and the median over rounds of A's time / B's time
# (> 1: B is faster). On a shared machine the builder's own speed moves by 2x from one minute to
# the next; the paired ratio moves by a few percent. It also checks that A and B build the same
# bytes.
#
#     bash benches/builder_ab.sh [REV] [SAMPLING] [PACKING] [HELD]
#
# REV defaults to HEAD; SAMPLING is uniform or power (power law, alpha 0.7; the default); PACKING
# is pad (the default) or pack; HELD (default 6) is how many batches stay alive before one is
# dropped, as the stream's queue holds them (4 queued, one built, one with the consumer): with 0 a
# batch's memory comes back to the next at once, warm in the cache, which the stream never sees.
# Batches of 1024 rows of 128 tokens from a world of 10,000 individuals, as
# `cargo bench -p kadyn-core --bench core` builds them. The scratch project is
# written to a temporary directory and built into target/builder-ab (kept, so that later runs
# rebuild only the two builders).
set -euo pipefail
rev=${1:-HEAD}
sampling=${2:-power}
packing=${3:-pad}
held=${4:-6}
case "$sampling" in uniform | power) ;; *) echo "SAMPLING must be uniform or power, got $sampling" >&2; exit 2 ;; esac
case "$packing" in pad | pack) ;; *) echo "PACKING must be pad or pack, got $packing" >&2; exit 2 ;; esac
case "$held" in '' | *[!0-9]*) echo "HELD must be a count of batches, got $held" >&2; exit 2 ;; esac
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A: kadyn-core at REV, renamed so that both builders link into one binary.
mkdir -p "$work/a"
git -C "$repo" archive "$rev" rust/kadyn-core | tar -x -C "$work/a"
core_a="$work/a/rust/kadyn-core"
deps=$(awk '/^\[workspace.dependencies\]/{on=1; next} /^\[/{on=0} on && NF' "$repo/Cargo.toml")
{
    printf '[package]\nname = "kadyn-core-a"\nversion = "0.1.0"\nedition = "2021"\n\n'
    printf '[lib]\nname = "kadyn_core_a"\npath = "%s/src/lib.rs"\n\n[dependencies]\n' "$core_a"
    # Its dependencies, with the workspace's versions written in.
    awk '/^\[dependencies\]/{on=1; next} /^\[/{on=0} on && NF' "$core_a/Cargo.toml" |
        while IFS= read -r line; do
            name=${line%%.workspace*}
            if [[ "$line" == *".workspace = true"* ]]; then
                grep -E "^$name = " <<<"$deps"
            else
                echo "$line"
            fi
        done
} >"$work/a/Cargo.toml"

mkdir -p "$work/ab/src"
cat >"$work/ab/Cargo.toml" <<EOF
[package]
name = "builder-ab"
version = "0.1.0"
edition = "2021"

[dependencies]
a = { path = "$work/a", package = "kadyn-core-a" }
b = { path = "$repo/rust/kadyn-core", package = "kadyn-core" }

[profile.release]
codegen-units = 4
EOF
cat >"$work/ab/src/main.rs" <<'EOF'
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

macro_rules! builder {
    ($k:ident, $pack:expr, $uniform:expr) => {{
        use $k::*;
        let world = World::new(WorldConfig { n_individuals: 10_000, ..Default::default() });
        RowBuilder::new(
            Arc::new(world.unwrap()),
            StreamSpec {
                population: Population::Train,
                split: Split::Train,
                packing: if $pack { Packing::Pack } else { Packing::Pad },
                seq_len: 128,
                seed: 0,
                sampling: Curriculum::single(if $uniform {
                    Distribution::Uniform
                } else {
                    Distribution::PowerLaw { alpha: 0.7 }
                }),
                facts: Facts::Real,
            },
        )
        .unwrap()
    }};
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (uniform, pack) = (args[1] == "uniform", args[2] == "pack");
    let held: usize = args[3].parse().unwrap();
    // The batches alive, A's and B's alike, the oldest dropped first.
    let alive = RefCell::new(VecDeque::new());
    let keep = |batch| {
        let mut alive = alive.borrow_mut();
        alive.push_back(batch);
        while alive.len() > held {
            drop(alive.pop_front());
        }
    };
    let (a, b) = (builder!(a, pack, uniform), builder!(b, pack, uniform));
    let rows: Vec<u64> = (0..1024).collect();
    let (x, y) = (a.build_here(&rows).unwrap(), b.build_here(&rows).unwrap());
    assert_eq!(x.num_rows(), y.num_rows());
    for c in 0..x.num_columns() {
        assert_eq!(x.column(c).to_data(), y.column(c).to_data(), "column {c} differs");
    }
    let (per, mut start) = (10u64, 1024u64);
    let (mut ta, mut tb, mut ratios) = (vec![], vec![], vec![]);
    for round in 0..105 {
        let time = |build: &dyn Fn(&[u64])| {
            let t = Instant::now();
            for i in 0..per {
                let rows: Vec<u64> = (start + i * 1024..start + (i + 1) * 1024).collect();
                build(&rows);
            }
            t.elapsed().as_secs_f64() / per as f64 * 1e6
        };
        let ma = time(&|r| keep(std::hint::black_box(a.build_here(r).unwrap())));
        let mb = time(&|r| keep(std::hint::black_box(b.build_here(r).unwrap())));
        start += per * 1024;
        if round >= 5 {
            ta.push(ma);
            tb.push(mb);
            ratios.push(ma / mb);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|p, q| p.total_cmp(q));
        v[v.len() / 2]
    };
    println!(
        "A {:.1} us  B {:.1} us a batch (medians of 100 rounds)  A/B paired {:.3}  (same bytes)",
        median(&mut ta),
        median(&mut tb),
        median(&mut ratios)
    );
}
EOF
echo "building A = $rev, B = the working tree (release) in $work ..." >&2
target="$repo/target/builder-ab"
cargo build --quiet --release --manifest-path "$work/ab/Cargo.toml" --target-dir "$target"
echo "$sampling $packing, 1024 x 128 batches, one thread, $held held:"
"$target/release/builder-ab" "$sampling" "$packing" "$held"
