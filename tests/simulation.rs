//! The deterministic simulation (`tests/support/sim/`): accounts of stored devices, a lossy and
//! malicious relay, crashes, restores from old backups and retries, with every invariant checked
//! as it runs and every message accounted for at the end.
//!
//! - `simulation_seeds`: seeds `0..SEEDS` (1,000) on two threads, part of `cargo test`.
//! - `simulation_long_run` (ignored): the long run, `SIM_SEEDS` seeds (default 100,000) from
//!   `SIM_FIRST_SEED` (default 0), on every core:
//!   `SIM_SEEDS=100000 cargo test --release --test simulation simulation_long_run -- --ignored --nocapture`
//! - `replay_seed`: one seed with every event traced:
//!   `SIM_SEED=1234 cargo test --test simulation replay_seed -- --nocapture`
//! - `simulation_proptest`: proptest-generated event lists through the same model, shrunk by
//!   events on failure.
//!
//! A failing seed prints the command that replays it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/sim/mod.rs"]
mod sim;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use proptest::prelude::*;
use sim::{Options, Stats, script};

/// Seeds `cargo test` runs.
const SEEDS: u64 = 1_000;
/// Events per seed (before the quiescence phase).
const EVENTS: usize = 60;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

fn events_per_seed() -> usize {
    env_u64("SIM_EVENTS").map_or(EVENTS, |e| usize::try_from(e).unwrap())
}

/// Runs `seeds` on `threads` threads; panics naming every failing seed and how to replay it.
fn run_seeds(seeds: std::ops::Range<u64>, threads: u64, options: Options) -> Stats {
    let events = events_per_seed();
    let started = Instant::now();
    let results: Vec<(Stats, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    let mut stats = Stats::default();
                    let mut failed = Vec::new();
                    for seed in seeds.filter(|seed| seed % threads == thread) {
                        let input = sim::seed_input(seed, events);
                        match catch_unwind(AssertUnwindSafe(|| sim::run(&input, &options))) {
                            Ok(run) => stats.add(&run),
                            Err(_) => {
                                eprintln!(
                                    "seed {seed} failed; replay it with:\n  SIM_SEED={seed} \
                                     SIM_EVENTS={events} cargo test --test simulation \
                                     replay_seed -- --nocapture"
                                );
                                failed.push(seed);
                            }
                        }
                    }
                    (stats, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut stats = Stats::default();
    let mut failed = Vec::new();
    for (run, seeds) in results {
        stats.add(&run);
        failed.extend(seeds);
    }
    failed.sort_unstable();
    println!(
        "{stats}\n{:.1} s on {threads} thread(s), {events} events per seed",
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?} (replay commands above)");
    assert_eq!(stats.losses, 0);
    assert_eq!(stats.unauthorized, 0);
    stats
}

#[test]
fn simulation_seeds() {
    let options = Options { sqlite: true, bounds_every_step: true, trace: false };
    let stats = run_seeds(0..SEEDS, 2, options);
    // The seeds exercise what they are for.
    assert!(stats.deliveries > 0 && stats.retries_answered > 0 && stats.restores > 0);
    assert!(stats.sqlite_runs > 0 && stats.crashes > 0 && stats.primary_offline > 0);
}

#[test]
#[ignore = "the long run: SIM_SEEDS seeds (default 100,000), release mode"]
fn simulation_long_run() {
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let seeds = env_u64("SIM_SEEDS").unwrap_or(100_000);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let bounds = std::env::var("SIM_BOUNDS").map_or(true, |v| v != "0");
    let options = Options { sqlite: true, bounds_every_step: bounds, trace: false };
    run_seeds(first..first + seeds, threads, options);
}

/// One seed (`SIM_SEED`, default 0), every event traced.
#[test]
fn replay_seed() {
    let seed = env_u64("SIM_SEED").unwrap_or(0);
    let trace = std::env::var("SIM_SEED").is_ok();
    let options = Options { sqlite: true, bounds_every_step: true, trace };
    let stats = sim::run(&sim::seed_input(seed, events_per_seed()), &options);
    println!("seed {seed}:\n{stats}");
    assert_eq!(stats.runs, 1);
    assert_eq!(stats.losses, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Event lists proptest generates (and shrinks event by event) run through the same model.
    #[test]
    fn simulation_proptest(
        header in any::<[u8; script::HEADER_LEN]>(),
        events in proptest::collection::vec(any::<[u8; script::EVENT_LEN]>(), 0..80),
    ) {
        let mut input = header.to_vec();
        input.extend(events.iter().flatten());
        let options = Options { sqlite: false, bounds_every_step: true, trace: false };
        let stats = sim::run(&input, &options);
        prop_assert_eq!(stats.losses, 0);
        prop_assert_eq!(stats.unauthorized, 0);
    }
}
