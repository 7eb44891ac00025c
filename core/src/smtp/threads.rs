//! Session threads: SMTP sessions run on a few threads of their own, one
//! per core, each with a single-threaded tokio runtime, and a session stays
//! on the thread it was given when its connection was accepted (the one
//! running the fewest sessions). On the shared work-stealing runtime a
//! session moved to whichever worker polled its socket, so its state, and
//! the plugin instances it used, kept moving between the cores' caches.
//! Measured at 1 KB / 100 sessions reusing their connections
//! (benches/plugin-ab.sh): the five-plugin pipeline accepted 14-20% more
//! messages a second and plain Weir 7-11% more. With one message per
//! connection the hand-off of each accepted socket to its thread costs
//! the pipeline 3-6%. What it gives up is work stealing: a session's long
//! CPU-bound step (a plugin that once ran for a whole epoch tick yields to
//! the thread's other sessions every 10 ms tick) holds up the sessions on
//! its thread while another core may idle. `server.session_threads: 0`
//! keeps sessions on the shared runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

/// The session threads; dropping this does not stop them, `stop` does.
pub struct SessionThreads {
    threads: Vec<SessionThread>,
    stop: CancellationToken,
}

struct SessionThread {
    handle: tokio::runtime::Handle,
    /// Sessions running on it now.
    sessions: Arc<AtomicUsize>,
}

/// Counts a session out of its thread when the session ends.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SessionThreads {
    /// Starts `n` threads (at least one). If one cannot start, those
    /// already started stop again.
    pub fn start(n: usize) -> Result<SessionThreads> {
        let mut all = SessionThreads { threads: Vec::new(), stop: CancellationToken::new() };
        for i in 0..n.max(1) {
            match Self::start_one(i, &all.stop) {
                Ok(t) => all.threads.push(t),
                Err(e) => {
                    all.stop();
                    return Err(e);
                }
            }
        }
        Ok(all)
    }

    fn start_one(i: usize, stop: &CancellationToken) -> Result<SessionThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a session thread's runtime")?;
        let handle = rt.handle().clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("weir-sessions-{i}"))
            // Dropping the runtime at the end cancels what still runs on it.
            .spawn(move || rt.block_on(stopped.cancelled()))
            .context("starting a session thread")?;
        Ok(SessionThread { handle, sessions: Arc::new(AtomicUsize::new(0)) })
    }

    /// Runs a session made by `make` (on its thread, so that its socket is
    /// registered with that thread's runtime) on the thread running the
    /// fewest sessions.
    pub fn spawn<F>(&self, make: impl FnOnce() -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(t) = self.threads.iter().min_by_key(|t| t.sessions.load(Ordering::Relaxed)) else {
            return;
        };
        t.sessions.fetch_add(1, Ordering::Relaxed);
        let running = Running(t.sessions.clone());
        t.handle.spawn(async move {
            let _running = running;
            make().await;
        });
    }

    /// How many sessions each thread runs now.
    pub fn load(&self) -> Vec<usize> {
        self.threads.iter().map(|t| t.sessions.load(Ordering::Relaxed)).collect()
    }

    /// Stops the threads; sessions still running on them are cut off.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_for(threads: &SessionThreads, load: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads.load() != load {
            assert!(Instant::now() < deadline, "load {:?}, expected {load:?}", threads.load());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn sessions_go_to_the_least_loaded_thread_and_are_counted_out_when_they_end() {
        let threads = SessionThreads::start(2).unwrap();
        let mut ends = Vec::new();
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
            ends.push(end_tx);
            let ran = ran_tx.clone();
            threads.spawn(move || async move {
                let _ = ran.send(std::thread::current().name().map(str::to_string));
                let _ = end_rx.await;
            });
        }
        // Two sessions on one thread, one on the other; each on a session thread.
        let mut on: Vec<String> = (0..3).map(|_| ran_rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap()).collect();
        on.sort();
        assert!(on.iter().all(|n| n.starts_with("weir-sessions-")), "{on:?}");
        let mut load = threads.load();
        load.sort();
        assert_eq!(load, [1, 2]);
        for e in ends {
            let _ = e.send(());
        }
        wait_for(&threads, &[0, 0]);
        threads.stop();
    }
}
