//! The one reader thread of the kernel tiers (the process connector and the
//! eBPF ring buffer) and its handle, [`TierReader`]: started with a name,
//! stopped through a cancellation token, joined once, its counters read at
//! any time; dropped, it stops and joins the thread and warns if the thread
//! ended with an error. [`ReaderHandle`](crate::connector::ReaderHandle) and
//! [`EbpfReaderHandle`](crate::ebpf::EbpfReaderHandle) are this type.

use std::io;
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

/// What a tier's error says for the two ways its reader thread can fail
/// outside its own loop.
pub trait ReaderError: std::fmt::Display + Send + Sized + 'static {
    /// Which reader, for the warning when a dropped handle finds an error.
    const READER: &'static str;

    /// The thread panicked (a bug).
    const PANICKED: Self;

    /// The thread (or its runtime) could not be started.
    fn spawn(source: io::Error) -> Self;
}

/// A tier's counters, shared by its reader thread and the handle.
pub trait ReaderCounts: std::fmt::Debug {
    /// What they read as.
    type Stats;

    /// The counts so far.
    fn stats(&self) -> Self::Stats;
}

/// A running reader thread and its counters. Dropping it stops the thread
/// and waits for it.
#[derive(Debug)]
pub struct TierReader<E: ReaderError, C: ReaderCounts> {
    counters: C,
    cancel: CancellationToken,
    thread: Option<JoinHandle<Result<(), E>>>,
}

impl<E: ReaderError, C: ReaderCounts> TierReader<E, C> {
    /// Starts thread `name` running `run` with the token that asks it to
    /// stop; the handle reads `counters`.
    ///
    /// # Errors
    /// [`ReaderError::spawn`] when the thread cannot be created.
    pub(crate) fn spawn(
        name: &str,
        counters: C,
        run: impl FnOnce(CancellationToken) -> Result<(), E> + Send + 'static,
    ) -> Result<Self, E> {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(token))
            .map_err(E::spawn)?;
        Ok(Self {
            counters,
            cancel,
            thread: Some(thread),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> C::Stats {
        self.counters.stats()
    }

    /// Whether the thread has ended (stopped, `tx` closed, or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Tells the thread to stop, waits for it (about one poll interval: the
    /// connector unsubscribes, the eBPF tier detaches its programs and
    /// drains its ring buffer first) and returns its final counters.
    ///
    /// This blocks the calling thread; from async code call it through
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// The error that ended the thread, if any.
    pub fn stop(mut self) -> Result<C::Stats, E> {
        self.cancel.cancel();
        self.wait()
    }

    /// Waits for the thread to end on its own (when `tx` is closed or
    /// reading fails) and returns its final counters.
    ///
    /// # Errors
    /// The error that ended the thread, if any.
    pub fn join(mut self) -> Result<C::Stats, E> {
        self.wait()
    }

    fn wait(&mut self) -> Result<C::Stats, E> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| Err(E::PANICKED)),
            None => Ok(()),
        }
        .map(|()| self.counters.stats())
    }
}

impl<E: ReaderError, C: ReaderCounts> Drop for TierReader<E, C> {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Err(err) = self.wait() {
            tracing::warn!(error = %err, "{} reader ended with an error", E::READER);
        }
    }
}

/// The reader thread's runtime: no drivers, only to wait on a full channel
/// and on the stop signal at once.
///
/// # Errors
/// [`ReaderError::spawn`] when it cannot be built.
pub(crate) fn current_thread_runtime<E: ReaderError>() -> Result<tokio::runtime::Runtime, E> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(E::spawn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    #[derive(Debug, PartialEq)]
    enum TestError {
        Spawn,
        Panicked,
        Failed,
    }

    impl std::fmt::Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl ReaderError for TestError {
        const READER: &'static str = "test";
        const PANICKED: Self = Self::Panicked;
        fn spawn(_: io::Error) -> Self {
            Self::Spawn
        }
    }

    #[derive(Debug, Default, Clone)]
    struct Count(Arc<AtomicU64>);

    impl ReaderCounts for Count {
        type Stats = u64;
        fn stats(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    type Reader = TierReader<TestError, Count>;

    /// Counts once, then waits to be stopped and ends with `end`.
    fn start(end: Result<(), TestError>) -> Reader {
        let count = Count::default();
        let counted = count.clone();
        Reader::spawn("test-reader", count, move |cancel| {
            counted.0.fetch_add(1, Ordering::Relaxed);
            current_thread_runtime::<TestError>()?.block_on(cancel.cancelled());
            end
        })
        .unwrap()
    }

    #[test]
    fn stop_cancels_the_token_and_returns_the_final_counts() {
        let reader = start(Ok(()));
        assert!(!reader.is_finished());
        assert_eq!(reader.stop(), Ok(1));
    }

    #[test]
    fn stop_returns_the_error_that_ended_the_thread() {
        assert_eq!(start(Err(TestError::Failed)).stop(), Err(TestError::Failed));
    }

    #[test]
    fn a_panic_is_the_tiers_panicked_error() {
        let reader = Reader::spawn("test-reader", Count::default(), |_| panic!("a bug")).unwrap();
        assert_eq!(reader.join(), Err(TestError::Panicked));
    }

    #[test]
    fn drop_stops_the_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = Reader::spawn("test-reader", Count::default(), move |cancel| {
            current_thread_runtime::<TestError>()?.block_on(cancel.cancelled());
            tx.send(()).map_err(|_| TestError::Failed)
        })
        .unwrap();
        drop(reader);
        assert_eq!(
            rx.try_recv(),
            Ok(()),
            "the thread ended before drop returned"
        );
    }
}
