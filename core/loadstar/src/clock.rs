//! One clock for everything in `loadstar`: real, or virtual for simulations.
//!
//! Virtual time is a tokio runtime with paused time: timers auto-advance whenever every task
//! waits, so a simulated day runs in seconds. The clock maps tokio's monotonic time to UTC from a
//! configured start. Code that reads `SystemTime` or `chrono::Utc::now()` directly breaks that
//! determinism: ask the clock instead.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Real or virtual time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock {
    /// The UTC time at `origin`.
    start_utc: DateTime<Utc>,
    /// The tokio instant that corresponds to `start_utc`.
    origin: Instant,
    virtual_time: bool,
}

impl Clock {
    /// Wall-clock time.
    pub fn real() -> Self {
        Clock {
            start_utc: Utc::now(),
            origin: Instant::now(),
            virtual_time: false,
        }
    }

    /// Virtual time that starts at `start_utc` now. Use it inside a runtime with paused time
    /// (`tokio::time::pause`, or `start_paused = true`), where `Instant::now()` only moves when
    /// the runtime advances it.
    pub fn virtual_from(start_utc: DateTime<Utc>) -> Self {
        Clock {
            start_utc,
            origin: Instant::now(),
            virtual_time: true,
        }
    }

    pub fn is_virtual(&self) -> bool {
        self.virtual_time
    }

    /// The monotonic now (tokio time, which is virtual when paused).
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// The current UTC time.
    pub fn now(&self) -> DateTime<Utc> {
        self.utc_at(Instant::now())
    }

    /// The UTC time of a monotonic instant.
    pub fn utc_at(&self, at: Instant) -> DateTime<Utc> {
        if !self.virtual_time {
            // Real time follows the system clock, including NTP corrections made after start
            // (a site box without a battery-backed clock boots with a wrong time), so stations
            // are never synchronised to a stale clock.
            let now = Instant::now();
            let wall = Utc::now();
            return if at >= now {
                wall + to_chrono(at - now)
            } else {
                wall - to_chrono(now - at)
            };
        }
        self.start_utc + to_chrono(at.saturating_duration_since(self.origin))
    }

    /// Sleeps for `duration` of this clock's time.
    pub async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Runs `work` that waits on real IO (a plugin's HTTP or Modbus call) as if it took no
    /// time of this clock. Under virtual time an idle runtime jumps to its next timer, so
    /// without this the simulation would run ahead by however many timers fell due while the
    /// kernel delivered the bytes: how far would depend on the machine's speed, and a
    /// simulation would not repeat itself. A running blocking task is what stops tokio's
    /// auto-advance; one waits here until `work` is done. `work` must end by itself in real
    /// time (plugin calls have real-time deadlines).
    pub async fn hold<F: Future>(&self, work: F) -> F::Output {
        if !self.virtual_time {
            return work.await;
        }
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let holding = tokio::task::spawn_blocking(move || {
            // Returns when `done` is dropped.
            let _ = wait.recv();
        });
        let out = work.await;
        drop(done);
        // The hold ends before this task goes on, so the next idle moment advances as usual.
        let _ = holding.await;
        out
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    // chrono::Duration covers ±292 million years; a runtime never gets there.
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn virtual_clock_follows_paused_tokio_time() {
        let start = DateTime::parse_from_rfc3339("2026-03-29T00:30:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("valid time");
        let clock = Clock::virtual_from(start);
        assert_eq!(clock.now(), start);
        // A whole day passes instantly under paused time.
        clock.sleep(Duration::from_secs(86_400)).await;
        assert_eq!(clock.now(), start + chrono::Duration::days(1));
        assert!(clock.is_virtual());
    }

    /// A loopback exchange whose far end answers after 30 ms of real time, with a virtual
    /// timer pending meanwhile; returns how much virtual time passed.
    async fn exchange(clock: &Clock, held: bool) -> chrono::Duration {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().expect("accept");
            let mut b = [0u8; 4];
            s.read_exact(&mut b).expect("read");
            std::thread::sleep(Duration::from_millis(30));
            s.write_all(&b).expect("write");
        });
        let timer = tokio::spawn(tokio::time::sleep(Duration::from_secs(60)));
        let before = clock.now();
        let io = async {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"ping").await.expect("send");
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.expect("answer");
        };
        if held {
            clock.hold(io).await;
        } else {
            io.await;
        }
        let passed = clock.now() - before;
        timer.abort();
        server.join().expect("server");
        passed
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_wait_on_real_io_takes_no_virtual_time() {
        let clock = Clock::virtual_from(Utc::now());
        assert_eq!(exchange(&clock, true).await, chrono::Duration::zero());
        // Without the hold the idle runtime jumps to the pending timer meanwhile.
        assert!(exchange(&clock, false).await >= chrono::Duration::seconds(60));
    }

    #[tokio::test]
    async fn real_clock_tracks_wall_time() {
        let clock = Clock::real();
        let drift = (clock.now() - Utc::now()).num_milliseconds().abs();
        assert!(drift < 1000, "drift {drift} ms");
    }
}
