//! Real-time deadlines for plugin calls.
//!
//! One thread ticks the engine's epoch every [`TICK`] and publishes the tick on a watch channel.
//! Wasm code checks the epoch (epoch interruption) and yields to the executor at each tick, so
//! a runaway loop is noticed within a tick; a host call that waits (HTTP, Modbus, a WASI poll)
//! is raced against [`Ticker::until`]. Both run on the wall clock (`std::time::Instant`), not on
//! tokio's clock: under a virtual controller clock (tokio paused time) a tokio timer would fire
//! at once when the runtime is idle, or never while wasm keeps it busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How often the epoch advances: the resolution of every deadline.
pub const TICK: Duration = Duration::from_millis(2);

/// The epoch ticker. Stops its thread when dropped.
#[derive(Debug)]
pub struct Ticker {
    ticks: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
}

impl Ticker {
    pub fn start(engine: wasmtime::Engine) -> std::io::Result<Self> {
        let (tx, rx) = watch::channel(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !stop_thread.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            })?;
        Ok(Ticker { ticks: rx, stop })
    }

    /// Completes once the wall clock reaches `deadline` (within a tick).
    pub async fn until(&self, deadline: Instant) {
        let mut ticks = self.ticks.clone();
        loop {
            if Instant::now() >= deadline {
                return;
            }
            if ticks.changed().await.is_err() {
                // The ticker is gone (the host is shutting down): nothing will wake us.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `fut` until it completes or `deadline` passes (`None`), whichever is first.
    pub async fn race<F: Future>(&self, deadline: Instant, fut: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = fut => Some(out),
            () = self.until(deadline) => None,
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
