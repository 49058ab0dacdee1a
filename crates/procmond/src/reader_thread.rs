//! The one reader thread of the kernel tiers (the process connector and the
//! eBPF ring buffer): started with a name, stopped through a cancellation
//! token, joined once, and on drop stopped and joined with a warning if it
//! ended with an error.

use std::io;
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

/// What a tier's error says for the two ways its reader thread can fail
/// outside its own loop.
pub(crate) trait ReaderError: std::fmt::Display + Send + Sized + 'static {
    /// Which reader, for the warning when a dropped handle finds an error.
    const READER: &'static str;

    /// The thread panicked (a bug).
    const PANICKED: Self;

    /// The thread (or its runtime) could not be started.
    fn spawn(source: io::Error) -> Self;
}

/// A running reader thread. Dropping it stops the thread and waits for it.
#[derive(Debug)]
pub(crate) struct ReaderThread<E: ReaderError> {
    cancel: CancellationToken,
    thread: Option<JoinHandle<Result<(), E>>>,
}

impl<E: ReaderError> ReaderThread<E> {
    /// Starts thread `name` running `run` with the token that asks it to stop.
    ///
    /// # Errors
    /// [`ReaderError::spawn`] when the thread cannot be created.
    pub(crate) fn spawn(
        name: &str,
        run: impl FnOnce(CancellationToken) -> Result<(), E> + Send + 'static,
    ) -> Result<Self, E> {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(token))
            .map_err(E::spawn)?;
        Ok(Self {
            cancel,
            thread: Some(thread),
        })
    }

    /// Whether the thread has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Asks the thread to stop and waits for it.
    ///
    /// # Errors
    /// The error that ended the thread, if any.
    pub(crate) fn stop(&mut self) -> Result<(), E> {
        self.cancel.cancel();
        self.join()
    }

    /// Waits for the thread to end on its own; `Ok` once it has been joined.
    ///
    /// # Errors
    /// The error that ended the thread, if any.
    pub(crate) fn join(&mut self) -> Result<(), E> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| Err(E::PANICKED)),
            None => Ok(()),
        }
    }
}

impl<E: ReaderError> Drop for ReaderThread<E> {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
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

    #[test]
    fn stop_cancels_the_token_and_returns_what_the_thread_returned() {
        let mut thread = ReaderThread::spawn("test-reader", |cancel: CancellationToken| {
            current_thread_runtime::<TestError>()?.block_on(cancel.cancelled());
            Err(TestError::Failed)
        })
        .unwrap();
        assert!(!thread.is_finished());
        assert_eq!(thread.stop(), Err(TestError::Failed));
        assert!(thread.is_finished());
        // Joined once: later calls have nothing left to report.
        assert_eq!(thread.join(), Ok(()));
    }

    #[test]
    fn a_panic_is_the_tiers_panicked_error() {
        let mut thread: ReaderThread<TestError> =
            ReaderThread::spawn("test-reader", |_| panic!("a bug")).unwrap();
        assert_eq!(thread.join(), Err(TestError::Panicked));
    }

    #[test]
    fn drop_stops_the_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread: ReaderThread<TestError> = ReaderThread::spawn("test-reader", move |cancel| {
            current_thread_runtime::<TestError>()?.block_on(cancel.cancelled());
            tx.send(()).map_err(|_| TestError::Failed)
        })
        .unwrap();
        drop(thread);
        assert_eq!(
            rx.try_recv(),
            Ok(()),
            "the thread ended before drop returned"
        );
    }
}
