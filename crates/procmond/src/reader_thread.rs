//! The one reader thread of the kernel tiers (the process connector and the
//! eBPF ring buffer) and its handle, [`TierReader`]: started with a name,
//! stopped through a cancellation token, joined once, its counters read at
//! any time; dropped, it stops and joins the thread and warns if the thread
//! ended with an error. [`ReaderHandle`](crate::connector::ReaderHandle) and
//! [`EbpfReaderHandle`](crate::ebpf::EbpfReaderHandle) are this type.

use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// Converts a `CLOCK_MONOTONIC` kernel timestamp (either tier's) into
/// wall-clock time.
pub(crate) fn wall_time(timestamp_ns: u64) -> SystemTime {
    let now = SystemTime::now();
    let Ok(mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let mono_ns = u64::try_from(mono.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(mono.tv_nsec()).unwrap_or(0);
    now.checked_sub(Duration::from_nanos(mono_ns.saturating_sub(timestamp_ns)))
        .unwrap_or(now)
}

/// The two ways a reader thread fails outside its own loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThreadError {
    /// The thread (or its runtime) could not be started.
    #[error("failed to start the {reader} reader thread")]
    Spawn {
        /// Which reader.
        reader: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The thread panicked (a bug).
    #[error("the {reader} reader thread panicked")]
    Panicked {
        /// Which reader.
        reader: &'static str,
    },
}

/// A tier's error: it carries a [`ThreadError`] of the reader it names.
pub trait ReaderError: From<ThreadError> + std::fmt::Display + Send + 'static {
    /// Which reader (`process connector`, `eBPF`), in messages.
    const READER: &'static str;

    /// [`ThreadError::Spawn`] of this reader.
    fn spawn(source: io::Error) -> Self {
        ThreadError::Spawn {
            reader: Self::READER,
            source,
        }
        .into()
    }
}

/// A running reader thread and its counters `C`, which read as `S`.
/// Dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct TierReader<E: ReaderError, C, S> {
    counters: C,
    read: fn(&C) -> S,
    cancel: CancellationToken,
    thread: Option<JoinHandle<Result<(), E>>>,
}

impl<E: ReaderError, C, S> TierReader<E, C, S> {
    /// Starts thread `name` running `run` with the token that asks it to
    /// stop and a clone of `counters`, which the handle reads with `read`.
    ///
    /// # Errors
    /// [`ReaderError::spawn`] when the thread cannot be created.
    pub(crate) fn spawn(
        name: &str,
        counters: C,
        read: fn(&C) -> S,
        run: impl FnOnce(CancellationToken, C) -> Result<(), E> + Send + 'static,
    ) -> Result<Self, E>
    where
        C: Clone + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let (token, shared) = (cancel.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(token, shared))
            .map_err(E::spawn)?;
        Ok(Self {
            counters,
            read,
            cancel,
            thread: Some(thread),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> S {
        (self.read)(&self.counters)
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
    pub fn stop(mut self) -> Result<S, E> {
        self.cancel.cancel();
        self.wait()
    }

    /// Waits for the thread to end on its own (when `tx` is closed or
    /// reading fails) and returns its final counters.
    ///
    /// # Errors
    /// The error that ended the thread, if any.
    pub fn join(mut self) -> Result<S, E> {
        self.wait()
    }

    fn wait(&mut self) -> Result<S, E> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(ThreadError::Panicked { reader: E::READER }.into())),
            None => Ok(()),
        }
        .map(|()| self.stats())
    }
}

impl<E: ReaderError, C, S> Drop for TierReader<E, C, S> {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Err(err) = self.wait() {
            tracing::warn!(error = %err, reader = E::READER, "reader thread ended with an error");
        }
    }
}

/// The reader thread's runtime: to wait on a full channel and on the stop
/// signal at once, and (the I/O driver) on the eBPF ring buffer with them.
///
/// # Errors
/// [`ReaderError::spawn`] when it cannot be built.
pub(crate) fn current_thread_runtime<E: ReaderError>() -> Result<tokio::runtime::Runtime, E> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
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
        Panicked(String),
        Failed,
    }

    impl std::fmt::Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl From<ThreadError> for TestError {
        fn from(err: ThreadError) -> Self {
            match err {
                ThreadError::Panicked { .. } => Self::Panicked(err.to_string()),
                ThreadError::Spawn { .. } => Self::Spawn,
            }
        }
    }

    impl ReaderError for TestError {
        const READER: &'static str = "test";
    }

    type Count = Arc<AtomicU64>;
    type Reader = TierReader<TestError, Count, u64>;

    fn read(count: &Count) -> u64 {
        count.load(Ordering::Relaxed)
    }

    /// Counts once, then waits to be stopped and ends with `end`.
    fn start(end: Result<(), TestError>) -> Reader {
        Reader::spawn("test-reader", Count::default(), read, |cancel, counted| {
            counted.fetch_add(1, Ordering::Relaxed);
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
        let reader = Reader::spawn("test-reader", Count::default(), read, |_, _| {
            panic!("a bug")
        })
        .unwrap();
        assert_eq!(
            reader.join(),
            Err(TestError::Panicked(
                "the test reader thread panicked".into()
            ))
        );
    }

    #[test]
    fn drop_stops_the_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = Reader::spawn("test-reader", Count::default(), read, move |cancel, _| {
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
