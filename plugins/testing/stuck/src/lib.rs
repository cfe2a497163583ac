//! Test plugin `stuck`: fails every event, slowly.
//!
//! Each call spins until the host's time budget (`[limits] time_ms`) interrupts it,
//! so every event costs the whole budget and ends in a timeout: the worst neighbour
//! a healthy plugin can have, for the isolation, quarantine and reload tests.

use oplet_sdk::{handler, Effect, Event, Result};

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    spin(event.seq)
}

/// Runs until the host stops it; the volatile read keeps the optimizer from
/// proving the loop empty (and so from removing it).
fn spin(seed: u64) -> ! {
    let turns = seed;
    loop {
        // SAFETY: reads a live local.
        let t = unsafe { std::ptr::read_volatile(&turns) };
        std::hint::black_box(t);
    }
}
