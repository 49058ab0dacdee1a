//! [`HashEngine`]: open safely, check the cache, stream under the budget,
//! check again.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use collector_core::lock;
use collector_core::HashAlgorithm;
use sha2::Digest as _;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::budget::Budget;
use crate::cache::{FileKey, Lru};
use crate::config::{is_checkable, Validated, MAX_CONCURRENT_PROBES};
use crate::stats::Counters;
use crate::{ConfigError, HashError, HasherConfig, HasherStats};

/// One digest of a file: the algorithm and its lowercase hex rendering
/// (as long as [`HashAlgorithm::hex_len`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    /// The algorithm.
    pub algorithm: HashAlgorithm,
    /// Lowercase hex digits.
    pub hex: String,
}

/// A file's digests and the identity of the file they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HashOutcome {
    /// The path as asked for.
    pub path: PathBuf,
    /// One digest per configured algorithm, in the configured order.
    pub digests: Arc<[Digest]>,
    /// Size in bytes when the file was opened.
    pub size: u64,
    /// Device of the opened file (`st_dev`).
    pub dev: u64,
    /// Inode of the opened file (`st_ino`).
    pub inode: u64,
    /// Modification time when the file was opened.
    pub mtime: SystemTime,
    /// Whether the digests came from the cache (nothing was read).
    pub from_cache: bool,
    /// Whether the file's size, mtime or ctime differed after hashing
    /// from when it was opened (or it grew or shrank under the reader).
    /// The digests then describe no single version of the file reliably;
    /// they are not cached.
    pub changed_during_hash: bool,
    /// Bytes read for this call (0 on a cache hit or a join).
    pub bytes_read: u64,
    /// Whether the digests came from the read another call was making of
    /// the same file (same device, inode, size, mtime and ctime: a
    /// hardlink, or the same path asked for again); this call opened
    /// nothing.
    pub joined: bool,
}

impl HashOutcome {
    /// The hex digest for `algorithm`, if it was computed.
    pub fn digest(&self, algorithm: HashAlgorithm) -> Option<&str> {
        self.digests
            .iter()
            .find(|d| d.algorithm == algorithm)
            .map(|d| d.hex.as_str())
    }
}

/// Hashes files with a cache, a size limit, a shared byte/s budget and
/// allowed roots. Cheap to clone: clones share the cache, budget and
/// counters.
///
/// # Example
/// See the [crate documentation](crate).
#[derive(Clone)]
pub struct HashEngine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Validated,
    budget: Option<Budget>,
    cache: Mutex<Lru>,
    counters: Counters,
    /// One permit per reader (`max_concurrent_hashes`): a file is opened
    /// only by a permit holder, and the permit is kept with the open file
    /// (a cancelled hash's file closes before its place is free).
    readers: Arc<Semaphore>,
    /// `lstat`s running at once ([`MAX_CONCURRENT_PROBES`]), each permit
    /// held by its blocking task: a storm of requests, or a hung
    /// filesystem, keeps at most this many of tokio's blocking threads busy
    /// besides the readers'.
    probes: Arc<Semaphore>,
    /// Requests reading, or queued for a reader: at most
    /// `max_concurrent_hashes + max_queued_hashes`.
    reading: AtomicUsize,
    /// Reads under way, by the identity probed before opening; later
    /// requests for the same identity wait for their result.
    flights: Mutex<HashMap<FileKey, Flight>>,
    next_flight: AtomicU64,
}

/// A read under way that others can join.
struct Flight {
    id: u64,
    result: watch::Receiver<Option<Done>>,
}

/// What a finished read gives the requests that joined it.
#[derive(Clone)]
struct Done {
    digests: Arc<[Digest]>,
    /// The identity of the file as opened and read.
    key: FileKey,
    changed: bool,
}

/// The most files one batch of [`HashEngine::hash_files`] probes, and
/// reads, in one blocking task.
pub(crate) const BATCH: usize = 256;

/// How many times a request probes and decides. A joined read that
/// failed, was cancelled, or turned out to be of another version of the
/// file sends the request round again; the last round reads on its own.
const ROUNDS: usize = 3;

/// What one request does, decided under the flights lock.
enum Role {
    /// Answered from the cache.
    Hit(HashOutcome),
    /// Waits for a read under way.
    Join(watch::Receiver<Option<Done>>),
    /// Reads the file: registered as a flight for others to join (or
    /// alone, on the last round), counted in [`Inner::reading`].
    Read(Option<Leader>, Reading),
}

/// Counts a request in [`Inner::reading`] until dropped.
struct Reading(Arc<Inner>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.reading.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request reading for a registered flight; dropping it (done,
/// failed or cancelled) ends the flight, so its joiners are woken.
struct Leader {
    inner: Arc<Inner>,
    key: FileKey,
    id: u64,
    tx: watch::Sender<Option<Done>>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut flights = self.inner.lock_flights();
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// Counts a file open for hashing until dropped (with the file).
struct OpenGuard(Arc<Inner>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.counters.closed();
    }
}

impl fmt::Debug for HashEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashEngine")
            .field("config", &self.inner.config)
            .field("cache_len", &self.cache_len())
            .finish_non_exhaustive()
    }
}

impl HashEngine {
    /// Validates `config` and builds the engine. Needs no runtime.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad field.
    pub fn new(config: HasherConfig) -> Result<Self, ConfigError> {
        let config = config.into_validated()?;
        let budget = (config.bytes_per_sec > 0).then(|| {
            // One chunk may pass at once after idling; the rest is paced.
            Budget::new(config.bytes_per_sec, config.chunk_size as u64)
        });
        Ok(Self {
            inner: Arc::new(Inner {
                cache: Mutex::new(Lru::new(config.cache_capacity)),
                readers: Arc::new(Semaphore::new(config.workers)),
                probes: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
                reading: AtomicUsize::new(0),
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                config,
                budget,
                counters: Counters::default(),
            }),
        })
    }

    /// The algorithms every outcome carries, in order.
    pub fn algorithms(&self) -> &[HashAlgorithm] {
        &self.inner.config.algorithms
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> HasherStats {
        self.inner.counters.snapshot()
    }

    /// Registers the engine's counters in `registry` (stage `hasher`:
    /// `daemoneye_files_hashed_total`, `daemoneye_hashes_refused_total{reason}`,
    /// ...). Call it once per registry; clones share the counters.
    pub fn register_metrics(&self, registry: &collector_core::metrics::Registry) {
        self.inner.counters.register(registry);
    }

    /// How many files' digests are cached now.
    pub fn cache_len(&self) -> usize {
        self.inner.lock_cache().len()
    }

    /// Hashes the regular file at `path` with every configured algorithm.
    ///
    /// The path must be absolute, free of `..` and under an allowed root
    /// (checked on the path as given). A symlink as the last component is
    /// refused (`lstat`, then `O_NOFOLLOW`), while symlinks in the
    /// directories above it (merged `/usr`) are followed.
    ///
    /// The path is first `lstat`ed, without opening it: what is not a
    /// regular file, or too large, is refused there, and an unchanged file
    /// (same device, inode, size, mtime and ctime: any hardlink of it) is
    /// answered from the cache. A request for a file that another request
    /// is reading waits for that read (joins it) instead of opening the
    /// file again. Only then does a request queue for one of the
    /// `max_concurrent_hashes` readers (refused with [`HashError::Busy`]
    /// when `max_queued_hashes` already wait), wait for the budget to
    /// allow its first chunk, and open the file. From there everything is
    /// decided on the descriptor (`fstat`), never the path again, so a
    /// file swapped in after the check is not what gets read. So whatever
    /// the number of callers, the engine holds at most
    /// `max_concurrent_hashes` files open and as many chunk buffers.
    ///
    /// All file I/O runs on tokio's blocking pool, one chunk per task, and
    /// the wait for the byte/s budget between chunks is an async sleep: the
    /// caller's runtime thread never blocks.
    ///
    /// # Errors
    /// A [`HashError`] for each reason a file is not hashed; each is also
    /// counted in [`HasherStats::refused`].
    ///
    /// # Cancel safety
    /// Dropping the future stops the hash after the chunk being read; the
    /// file is closed, nothing is cached, and the budget already reserved
    /// stays spent. Requests that had joined it probe again.
    ///
    /// # Panics
    /// Like tokio's own functions, panics when polled outside a tokio
    /// runtime, or (with a budget) in one without the time driver.
    pub async fn hash_file(&self, path: &Path) -> Result<HashOutcome, HashError> {
        let result = self.hash_checked(path).await;
        match &result {
            Err(err) => {
                self.inner.counters.refused(err);
                tracing::debug!(path = %path.display(), reason = err.reason(), error = %err, "file not hashed");
            }
            Ok(outcome) if outcome.changed_during_hash => {
                tracing::debug!(path = %path.display(), "file changed while hashed");
            }
            Ok(_) => {}
        }
        result
    }

    /// The digests of the file at `path` when the cache holds them for the
    /// file there now, looked up on the caller's thread: one `lstat`, no
    /// read, no task, no wait. For a caller already on a blocking thread
    /// (a `/proc` reader), whose lookups of the same few executables would
    /// otherwise each be a hand-off to the runtime and back.
    ///
    /// `None` for anything else (not cached, not a regular file, a
    /// symlink, outside the allowed roots, gone): [`hash_file`] then
    /// decides, and counts what it refuses. A hit is counted as a cache
    /// hit; a miss is not counted here, since `hash_file` counts it.
    ///
    /// Blocking: one system call.
    ///
    /// [`hash_file`]: Self::hash_file
    pub fn cached(&self, path: &Path) -> Option<HashOutcome> {
        if !self.inner.is_allowed(path) {
            return None;
        }
        let meta = std::fs::symlink_metadata(path).ok()?;
        // Not followed: a symlink is no regular file here.
        if !meta.file_type().is_file() {
            return None;
        }
        let key = key_of(&meta);
        let digests = self.inner.lock_cache().get(&key)?;
        self.inner.counters.cache_hits.inc();
        Some(outcome(path.to_path_buf(), digests, &key, 0, true, false))
    }

    async fn hash_checked(&self, path: &Path) -> Result<HashOutcome, HashError> {
        if !self.inner.is_allowed(path) {
            return Err(HashError::OutsideAllowedRoots {
                path: path.to_path_buf(),
            });
        }
        let mut round = 0;
        loop {
            round += 1;
            // Never closed; without a permit the probe would be unbounded.
            let Ok(probe) = Arc::clone(&self.inner.probes).acquire_owned().await else {
                return Err(HashError::Busy {
                    path: path.to_path_buf(),
                });
            };
            let key = self
                .blocking(path, {
                    let (inner, owned) = (Arc::clone(&self.inner), path.to_path_buf());
                    move || {
                        let key = inner.probe(owned);
                        drop(probe);
                        key
                    }
                })
                .await?;
            match self.inner.decide(path, key, round < ROUNDS)? {
                Role::Hit(outcome) => return Ok(outcome),
                Role::Read(leader, reading) => return self.read(path, key, leader, reading).await,
                Role::Join(mut result) => {
                    let done = match result.wait_for(Option::is_some).await {
                        Ok(done) => done.clone(),
                        // The read failed or was cancelled.
                        Err(_) => None,
                    };
                    // A read of what the path held when probed, or round again.
                    if let Some(done) = done.filter(|d| d.key == key) {
                        self.inner.counters.joined.inc();
                        let mut out = outcome(
                            path.to_path_buf(),
                            done.digests,
                            &done.key,
                            0,
                            false,
                            done.changed,
                        );
                        out.joined = true;
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// Reads the file as a reader: waits for a reader and the budget for
    /// the first chunk, then opens the file and streams it.
    async fn read(
        &self,
        path: &Path,
        probed: FileKey,
        leader: Option<Leader>,
        _reading: Reading,
    ) -> Result<HashOutcome, HashError> {
        let reader = Arc::clone(&self.inner.readers).acquire_owned().await;
        // The semaphore is never closed; refuse rather than panic anyway.
        let Ok(reader) = reader else {
            return Err(HashError::Busy {
                path: path.to_path_buf(),
            });
        };
        let chunk = self.inner.config.chunk_size as u64;
        // The budget is taken before the file is opened: a paced request
        // waits without holding a descriptor.
        let first = chunk.min(probed.size);
        self.pace(first).await;
        let opened = self
            .blocking(path, {
                let (inner, owned) = (Arc::clone(&self.inner), path.to_path_buf());
                move || inner.open(owned, first, Some(reader))
            })
            .await?;
        let mut job = match opened {
            Opened::Hit(outcome) => return Ok(outcome),
            Opened::Miss(job) => job,
        };
        while !job.done {
            let want = chunk.min(job.key.size.saturating_sub(job.bytes_read));
            self.pace(want).await;
            let inner = Arc::clone(&self.inner);
            job = self
                .blocking(path, move || {
                    let before = job.bytes_read;
                    let job = job.step(want)?;
                    inner.counters.bytes_hashed.add(job.bytes_read - before);
                    Ok(job)
                })
                .await?;
        }
        let key = job.key;
        let out = self.inner.finish(*job);
        if let Some(leader) = leader {
            leader.tx.send_replace(Some(Done {
                digests: Arc::clone(&out.digests),
                key,
                changed: out.changed_during_hash,
            }));
        }
        Ok(out)
    }

    /// Hashes each of `paths` as [`hash_file`](Self::hash_file) would
    /// (same checks, cache, budget and counters), in far fewer hand-offs
    /// to the blocking pool: a batch of up to 256 paths is probed in
    /// one blocking task, and those of at most one chunk (most files a
    /// file monitor sees), not being read by another request, are then
    /// opened and read one after another by a second task holding one
    /// reader's place, the budget paid for all of them first. Larger files
    /// and those already being read go through `hash_file`. A file
    /// monitor's bursts (an untar: thousands of small files) cost two
    /// thread wake-ups a batch rather than two a file.
    ///
    /// The results are in the order of `paths`.
    ///
    /// # Panics
    /// As [`hash_file`](Self::hash_file).
    pub async fn hash_files(&self, paths: &[PathBuf]) -> Vec<Result<HashOutcome, HashError>> {
        let mut out = Vec::with_capacity(paths.len());
        for batch in paths.chunks(BATCH) {
            let inner = Arc::clone(&self.inner);
            let owned = batch.to_vec();
            let probed = tokio::task::spawn_blocking(move || {
                owned
                    .into_iter()
                    .map(|path| {
                        if !inner.is_allowed(&path) {
                            return Err(HashError::OutsideAllowedRoots { path });
                        }
                        let key = inner.probe(path.clone())?;
                        Ok((path, key))
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            match probed {
                Ok(probed) => out.extend(self.hash_batch(batch, probed).await),
                // The task panicked (it does not) or the runtime is going away.
                Err(_) => {
                    for path in batch {
                        out.push(self.hash_checked(path).await);
                    }
                }
            }
        }
        self.count_refused(&out);
        out
    }

    /// [`hash_files`](Self::hash_files) of files the caller has just
    /// `lstat`ed (`symlink_metadata`: a file monitor looking at what
    /// changed): the metadata given stands for the engine's own probe,
    /// which saves a system call a file and a hand-off a batch. A file
    /// replaced since is still caught, on its descriptor, as always.
    pub async fn hash_files_probed(
        &self,
        files: Vec<(PathBuf, Metadata)>,
    ) -> Vec<Result<HashOutcome, HashError>> {
        let mut out = Vec::with_capacity(files.len());
        let mut files = files.into_iter().peekable();
        while files.peek().is_some() {
            let batch: Vec<(PathBuf, Metadata)> = files.by_ref().take(BATCH).collect();
            let paths: Vec<PathBuf> = batch.iter().map(|(p, _)| p.clone()).collect();
            let probed = batch
                .into_iter()
                .map(|(path, meta)| {
                    if !self.inner.is_allowed(&path) {
                        return Err(HashError::OutsideAllowedRoots { path });
                    }
                    if meta.file_type().is_symlink() {
                        return Err(HashError::IsSymlink { path });
                    }
                    let key = self.inner.check(path.clone(), &meta)?;
                    Ok((path, key))
                })
                .collect();
            out.extend(self.hash_batch(&paths, probed).await);
        }
        self.count_refused(&out);
        out
    }

    /// Counts (and logs at debug) the refusals of a batch.
    fn count_refused(&self, results: &[Result<HashOutcome, HashError>]) {
        for result in results {
            if let Err(err) = result {
                self.inner.counters.refused(err);
                tracing::debug!(path = %err.path().display(), reason = err.reason(), error = %err, "file not hashed");
            }
        }
    }

    /// One batch of [`hash_files`](Self::hash_files), probed (errors not
    /// counted yet).
    async fn hash_batch(
        &self,
        paths: &[PathBuf],
        probed: Vec<Result<(PathBuf, FileKey), HashError>>,
    ) -> Vec<Result<HashOutcome, HashError>> {
        let chunk = self.inner.config.chunk_size as u64;
        let mut out: Vec<Option<Result<HashOutcome, HashError>>> = Vec::with_capacity(paths.len());
        let mut small = Vec::new();
        for (i, probe) in probed.into_iter().enumerate() {
            let (path, key) = match probe {
                Ok(pk) => pk,
                Err(err) => {
                    out.push(Some(Err(err)));
                    continue;
                }
            };
            let cached = {
                let flights = self.inner.lock_flights();
                let cached = self.inner.lock_cache().get(&key);
                if cached.is_none() && (key.size > chunk || flights.contains_key(&key)) {
                    out.push(None);
                    continue;
                }
                cached
            };
            match cached {
                Some(digests) => {
                    self.inner.counters.cache_hits.inc();
                    out.push(Some(Ok(outcome(path, digests, &key, 0, true, false))));
                }
                None => {
                    self.inner.counters.cache_misses.inc();
                    small.push((i, path, key.size));
                    out.push(None);
                }
            }
        }
        if !small.is_empty() {
            self.pace(small.iter().map(|(_, _, size)| size).sum()).await;
            let reader = Arc::clone(&self.inner.readers).acquire_owned().await;
            let inner = Arc::clone(&self.inner);
            let files: Vec<(usize, PathBuf, u64)> = small;
            let read = tokio::task::spawn_blocking(move || {
                let _reader = reader;
                files
                    .into_iter()
                    .map(|(i, path, size)| (i, inner.read_small(path, size)))
                    .collect::<Vec<_>>()
            })
            .await;
            // A failed task leaves its files to `hash_checked` below.
            if let Ok(read) = read {
                for (i, result) in read {
                    out[i] = Some(result);
                }
            }
        }
        for (slot, path) in out.iter_mut().zip(paths) {
            if slot.is_none() {
                // Large, being read by another request, or a failed batch.
                *slot = Some(self.hash_checked(path).await);
            }
        }
        out.into_iter()
            .zip(paths)
            .map(|(r, path)| r.unwrap_or_else(|| Err(HashError::Busy { path: path.clone() })))
            .collect()
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        path: &Path,
        f: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|source| HashError::TaskFailed {
                path: path.to_path_buf(),
                source,
            })?
    }

    /// Waits until the budget allows reading `bytes`.
    async fn pace(&self, bytes: u64) {
        let Some(budget) = &self.inner.budget else {
            return;
        };
        if bytes == 0 {
            return;
        }
        if let Some(ready) = budget.reserve(bytes) {
            let start = Instant::now();
            tokio::time::sleep_until(ready).await;
            self.inner.counters.waited(start.elapsed());
        }
    }
}

enum Opened {
    Hit(HashOutcome),
    Miss(Box<Job>),
}

impl Inner {
    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Nothing panics while the lock is held; recover from poisoning anyway.
        lock(&self.cache)
    }

    fn is_allowed(&self, path: &Path) -> bool {
        is_checkable(path)
            && self
                .config
                .allowed_roots
                .iter()
                .any(|r| path.starts_with(r))
    }

    fn lock_flights(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, Flight>> {
        // Nothing panics while the lock is held; recover from poisoning anyway.
        lock(&self.flights)
    }

    /// The identity of the file at `path` (`lstat`: the last component is
    /// not followed), refusing what is no regular file or is too large.
    /// Opens nothing. Blocking.
    fn probe(&self, path: PathBuf) -> Result<FileKey, HashError> {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) => return Err(HashError::from_io(path, err)),
        };
        if meta.file_type().is_symlink() {
            return Err(HashError::IsSymlink { path });
        }
        self.check(path, &meta)
    }

    /// The key of a regular file small enough to hash.
    fn check(&self, path: PathBuf, meta: &Metadata) -> Result<FileKey, HashError> {
        if !meta.file_type().is_file() {
            return Err(HashError::NotRegularFile { path });
        }
        let key = key_of(meta);
        let max = self.config.max_file_size_bytes;
        if key.size > max {
            return Err(HashError::TooLarge {
                path,
                size: key.size,
                max,
            });
        }
        Ok(key)
    }

    /// Decides what the request for `key` does: the cache and the flights
    /// are looked at under one lock, so a read finishing meanwhile is seen
    /// in one or the other.
    fn decide(
        self: &Arc<Self>,
        path: &Path,
        key: FileKey,
        may_join: bool,
    ) -> Result<Role, HashError> {
        let mut flights = self.lock_flights();
        let cached = self.lock_cache().get(&key);
        if let Some(digests) = cached {
            self.counters.cache_hits.inc();
            return Ok(Role::Hit(outcome(
                path.to_path_buf(),
                digests,
                &key,
                0,
                true,
                false,
            )));
        }
        let running = flights.contains_key(&key);
        if running && may_join {
            if let Some(f) = flights.get(&key) {
                return Ok(Role::Join(f.result.clone()));
            }
        }
        let ahead = self.reading.fetch_add(1, Ordering::Relaxed);
        let reading = Reading(Arc::clone(self));
        if ahead >= self.config.workers + self.config.max_queued {
            return Err(HashError::Busy {
                path: path.to_path_buf(),
            });
        }
        self.counters.cache_misses.inc();
        if running {
            return Ok(Role::Read(None, reading));
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (tx, result) = watch::channel(None);
        flights.insert(key, Flight { id, result });
        let leader = Leader {
            inner: Arc::clone(self),
            key,
            id,
            tx,
        };
        Ok(Role::Read(Some(leader), reading))
    }

    /// Opens `path`, decides on the descriptor (type, size, cache) and
    /// reads up to `first` bytes. Blocking.
    fn open(
        self: &Arc<Self>,
        path: PathBuf,
        first: u64,
        reader: Option<OwnedSemaphorePermit>,
    ) -> Result<Opened, HashError> {
        let file = match OpenOptions::new()
            .read(true)
            // O_NONBLOCK so a FIFO cannot block the open (regular files
            // ignore the flag on Linux); O_NOCTTY so a terminal never
            // becomes ours.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) => return Err(classify_open_error(path, err)),
        };
        self.counters.opened();
        let open = OpenGuard(Arc::clone(self));
        let meta = match file.metadata() {
            Ok(meta) => meta,
            Err(err) => return Err(HashError::from_io(path, err)),
        };
        let key = self.check(path.clone(), &meta)?;
        // Replaced since the probe by a file that is cached.
        let cached = self.lock_cache().get(&key);
        if let Some(digests) = cached {
            self.counters.cache_hits.inc();
            return Ok(Opened::Hit(outcome(path, digests, &key, 0, true, false)));
        }
        let job = Box::new(Job {
            path,
            file,
            _open: open,
            _reader: reader,
            key,
            state: State::new(&self.config.algorithms),
            // No larger than the file: a small file's read does not zero
            // (and fault in) a whole chunk.
            buf: vec![
                0;
                usize::try_from(key.size).map_or(self.config.chunk_size, |size| size
                    .min(self.config.chunk_size))
            ],
            bytes_read: 0,
            changed: false,
            done: false,
        });
        let job = job.step(first.min(key.size))?;
        self.counters.bytes_hashed.add(job.bytes_read);
        Ok(Opened::Miss(job))
    }

    /// Opens and reads a file probed at `size` (at most a chunk, its
    /// budget paid) in the calling blocking task; a file grown since is
    /// read to its end all the same, its extra bytes charged to the budget
    /// afterwards. Blocking.
    fn read_small(self: &Arc<Self>, path: PathBuf, size: u64) -> Result<HashOutcome, HashError> {
        let mut job = match self.open(path, size, None)? {
            Opened::Hit(outcome) => return Ok(outcome),
            Opened::Miss(job) => job,
        };
        let chunk = self.config.chunk_size as u64;
        while !job.done {
            let want = chunk.min(job.key.size.saturating_sub(job.bytes_read));
            if let Some(budget) = &self.budget {
                // Paid by whoever reads next; this read is not held up.
                let _ = budget.reserve(want);
            }
            let before = job.bytes_read;
            job = job.step(want)?;
            self.counters.bytes_hashed.add(job.bytes_read - before);
        }
        Ok(self.finish(*job))
    }

    fn finish(&self, job: Job) -> HashOutcome {
        let digests: Arc<[Digest]> = job.state.finish(&self.config.algorithms).into();
        self.counters.files_hashed.inc();
        if job.changed {
            self.counters.changed_during_hash.inc();
        } else {
            let evicted = self.lock_cache().insert(job.key, Arc::clone(&digests));
            self.counters.cache_evictions.add(evicted);
        }
        outcome(
            job.path,
            digests,
            &job.key,
            job.bytes_read,
            false,
            job.changed,
        )
    }
}

fn outcome(
    path: PathBuf,
    digests: Arc<[Digest]>,
    key: &FileKey,
    bytes_read: u64,
    from_cache: bool,
    changed_during_hash: bool,
) -> HashOutcome {
    HashOutcome {
        path,
        digests,
        size: key.size,
        dev: key.dev,
        inode: key.ino,
        mtime: system_time(key.mtime.0, key.mtime.1),
        from_cache,
        changed_during_hash,
        bytes_read,
        joined: false,
    }
}

/// `ELOOP` under `O_NOFOLLOW` usually means the last component is a
/// symlink; confirm with `lstat` (too many links higher up also gives
/// `ELOOP`).
fn classify_open_error(path: PathBuf, err: io::Error) -> HashError {
    if err.raw_os_error() == Some(libc::ELOOP) {
        let last_is_link =
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if !last_is_link {
            return HashError::Io { path, source: err };
        }
    }
    HashError::from_open(path, err)
}

fn key_of(meta: &Metadata) -> FileKey {
    FileKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    }
}

fn system_time(sec: i64, nsec: i64) -> SystemTime {
    let nanos = u32::try_from(nsec.clamp(0, 999_999_999)).unwrap_or(0);
    let at = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    at.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        .unwrap_or(UNIX_EPOCH)
}

/// A hash in progress, moved into each blocking step and back.
struct Job {
    path: PathBuf,
    file: File,
    /// Dropped after `file` (fields drop in order): the count of open
    /// files, then the reader's place.
    _open: OpenGuard,
    /// `None` in a batch ([`HashEngine::hash_files`]), whose one place
    /// is held around all its files.
    _reader: Option<OwnedSemaphorePermit>,
    key: FileKey,
    state: State,
    buf: Vec<u8>,
    bytes_read: u64,
    changed: bool,
    done: bool,
}

impl Job {
    /// Reads and digests up to `want` bytes (at most one chunk). Once the
    /// size seen at open has been read, or the file ends early, checks
    /// that it ends there and that `fstat` still agrees, and marks the job
    /// done. Blocking.
    fn step(mut self: Box<Self>, want: u64) -> Result<Box<Self>, HashError> {
        let want = usize::try_from(want)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        let n = read_full(&mut self.file, &mut self.buf[..want])
            .map_err(|err| HashError::from_io(self.path.clone(), err))?;
        self.state.update(&self.buf[..n]);
        self.bytes_read += n as u64;
        if n < want {
            // Shrank under us.
            self.changed = true;
        } else if self.bytes_read < self.key.size {
            return Ok(self);
        } else {
            // Exactly the size seen at open has been read: anything more
            // means it grew.
            let mut probe = [0u8; 1];
            let more = read_full(&mut self.file, &mut probe)
                .map_err(|err| HashError::from_io(self.path.clone(), err))?;
            self.changed |= more > 0;
        }
        let after = self
            .file
            .metadata()
            .map_err(|err| HashError::from_io(self.path.clone(), err))?;
        let after = key_of(&after);
        self.changed |= after != self.key;
        self.done = true;
        Ok(self)
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// The running digests.
struct State {
    sha256: Option<sha2::Sha256>,
    // Boxed: the BLAKE3 hasher is about 2 KiB and the job moves per chunk.
    blake3: Option<Box<blake3::Hasher>>,
}

impl State {
    fn new(algorithms: &[HashAlgorithm]) -> Self {
        Self {
            sha256: algorithms
                .contains(&HashAlgorithm::Sha256)
                .then(sha2::Sha256::new),
            blake3: algorithms
                .contains(&HashAlgorithm::Blake3)
                .then(|| Box::new(blake3::Hasher::new())),
        }
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.blake3 {
            h.update(data);
        }
    }

    fn finish(self, algorithms: &[HashAlgorithm]) -> Vec<Digest> {
        let mut sha256 = self.sha256.map(|h| hex(&h.finalize()));
        let mut blake3 = self.blake3.map(|h| hex(h.finalize().as_bytes()));
        algorithms
            .iter()
            .filter_map(|&algorithm| {
                let hex = match algorithm {
                    HashAlgorithm::Sha256 => sha256.take(),
                    HashAlgorithm::Blake3 => blake3.take(),
                    // Validation admits only the algorithms above.
                    _ => None,
                }?;
                Some(Digest { algorithm, hex })
            })
            .collect()
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::fs::FileTimes;
    use std::io::{Seek as _, SeekFrom, Write as _};

    use super::*;

    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const BLAKE3_ABC: &str = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";
    const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const BLAKE3_EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    /// `sha256sum` (and Python's hashlib) of [`pattern`]`(PATTERN_LEN)`.
    const SHA256_PATTERN: &str = "016dda9740d1ce7161d4e53fd1f5eea4558b0a1c8429ac4961dc11338f2bc348";
    const PATTERN_LEN: usize = (1 << 20) + 17;
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 31 + 7) % 251).unwrap())
            .collect()
    }

    fn both() -> Vec<HashAlgorithm> {
        vec![HashAlgorithm::Sha256, HashAlgorithm::Blake3]
    }

    fn engine(config: HasherConfig) -> HashEngine {
        HashEngine::new(config).unwrap()
    }

    fn unlimited() -> HashEngine {
        engine(HasherConfig {
            algorithms: both(),
            bytes_per_sec: 0,
            ..HasherConfig::default()
        })
    }

    fn write(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn set_mtime(path: &Path, secs: u64) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.set_times(FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(secs)))
            .unwrap();
    }

    #[tokio::test]
    async fn known_digests_of_small_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = unlimited();
        for (content, sha, b3) in [
            (&b"abc"[..], SHA256_ABC, BLAKE3_ABC),
            (&b""[..], SHA256_EMPTY, BLAKE3_EMPTY),
        ] {
            let path = write(&dir, &format!("f{}", content.len()), content);
            let out = e.hash_file(&path).await.unwrap();
            assert_eq!(out.digest(HashAlgorithm::Sha256), Some(sha));
            assert_eq!(out.digest(HashAlgorithm::Blake3), Some(b3));
            assert_eq!(b3, blake3::hash(content).to_hex().as_str());
            assert_eq!(
                out.digests[0].algorithm,
                HashAlgorithm::Sha256,
                "configured order"
            );
            assert_eq!(out.bytes_read, content.len() as u64);
            assert_eq!(out.size, content.len() as u64);
            assert!(!out.from_cache && !out.changed_during_hash);
            for d in out.digests.iter() {
                assert_eq!(d.hex.len(), d.algorithm.hex_len());
            }
        }
    }

    #[tokio::test]
    async fn multi_chunk_file_matches_reference_digests() {
        let dir = tempfile::tempdir().unwrap();
        let content = pattern(PATTERN_LEN);
        let path = write(&dir, "pattern", &content);
        // Smallest chunk: 257 reads, the last one partial.
        let e = engine(HasherConfig {
            algorithms: both(),
            bytes_per_sec: 0,
            chunk_size_bytes: 4 * KIB,
            ..HasherConfig::default()
        });
        let out = e.hash_file(&path).await.unwrap();
        assert_eq!(out.digest(HashAlgorithm::Sha256), Some(SHA256_PATTERN));
        assert_eq!(
            out.digest(HashAlgorithm::Blake3),
            Some(blake3::hash(&content).to_hex().as_str())
        );
        assert_eq!(out.bytes_read, PATTERN_LEN as u64);
        assert_eq!(e.stats().bytes_hashed, PATTERN_LEN as u64);
    }

    /// A batch gives what one call a path would, in order: small files
    /// read, a multi-chunk one, a cached one, the refusals; it counts as
    /// the calls would.
    #[tokio::test]
    async fn a_batch_gives_each_path_what_hash_file_would() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(HasherConfig {
            algorithms: both(),
            bytes_per_sec: 0,
            chunk_size_bytes: 4 * KIB,
            ..HasherConfig::default()
        });
        let abc = write(&dir, "abc", b"abc");
        let empty = write(&dir, "empty", b"");
        let big = write(&dir, "pattern", &pattern(PATTERN_LEN));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&abc, &link).unwrap();
        let missing = dir.path().join("missing");
        let cached = write(&dir, "cached", b"abc ");
        let first = e.hash_file(&cached).await.unwrap();
        let paths = [abc.clone(), empty, big, link, missing, cached, abc];
        let out = e.hash_files(&paths).await;
        assert_eq!(out.len(), paths.len());
        let ok = |i: usize| out[i].as_ref().unwrap();
        assert_eq!(ok(0).digest(HashAlgorithm::Sha256), Some(SHA256_ABC));
        assert_eq!(ok(0).digest(HashAlgorithm::Blake3), Some(BLAKE3_ABC));
        assert_eq!(ok(1).digest(HashAlgorithm::Sha256), Some(SHA256_EMPTY));
        assert_eq!(ok(2).digest(HashAlgorithm::Sha256), Some(SHA256_PATTERN));
        assert!(matches!(out[3], Err(HashError::IsSymlink { .. })));
        assert!(matches!(out[4], Err(HashError::NotFound { .. })));
        assert!(ok(5).from_cache);
        assert_eq!(ok(5).digests, first.digests);
        // The same file twice: read once, the second from the cache.
        assert_eq!(ok(6).digests, ok(0).digests);
        assert!(ok(6).from_cache);
        let stats = e.stats();
        assert_eq!(stats.bytes_hashed, 4 + 3 + PATTERN_LEN as u64);
        assert_eq!((stats.refused.is_symlink, stats.refused.not_found), (1, 1));
        assert_eq!(stats.files_hashed, 4);
        // And once more: every file now from the cache.
        let again = e.hash_files(&paths[..3]).await;
        assert!(again.iter().all(|r| r.as_ref().unwrap().from_cache));

        // Given their `lstat` (a monitor that looked already): the same,
        // a symlink refused on what it was given.
        let fresh = unlimited();
        let given: Vec<(PathBuf, Metadata)> = [&paths[0], &paths[2], &paths[3]]
            .into_iter()
            .map(|p| ((*p).clone(), std::fs::symlink_metadata(p).unwrap()))
            .collect();
        let probed = fresh.hash_files_probed(given).await;
        assert_eq!(probed[0].as_ref().unwrap().digests, ok(0).digests);
        assert_eq!(
            probed[1].as_ref().unwrap().digest(HashAlgorithm::Sha256),
            Some(SHA256_PATTERN)
        );
        assert!(matches!(probed[2], Err(HashError::IsSymlink { .. })));
        assert_eq!(fresh.stats().refused.is_symlink, 1);
    }

    #[tokio::test]
    async fn only_configured_algorithms_are_computed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "abc", b"abc");
        let e = engine(HasherConfig {
            algorithms: vec![HashAlgorithm::Blake3],
            ..HasherConfig::default()
        });
        let out = e.hash_file(&path).await.unwrap();
        assert_eq!(out.digests.len(), 1);
        assert_eq!(out.digest(HashAlgorithm::Blake3), Some(BLAKE3_ABC));
        assert_eq!(out.digest(HashAlgorithm::Sha256), None);
    }

    #[tokio::test]
    async fn unchanged_file_is_a_cache_hit_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bin", &pattern(10_000));
        let e = unlimited();
        let first = e.hash_file(&path).await.unwrap();
        let second = e.hash_file(&path).await.unwrap();
        assert!(second.from_cache);
        assert_eq!(second.bytes_read, 0);
        assert_eq!(second.digests, first.digests);
        assert_eq!(
            (second.dev, second.inode, second.size, second.mtime),
            (first.dev, first.inode, first.size, first.mtime)
        );
        // A clone shares the cache.
        assert!(e.clone().hash_file(&path).await.unwrap().from_cache);
        let s = e.stats();
        assert_eq!((s.files_hashed, s.cache_hits, s.cache_misses), (1, 2, 1));
        assert_eq!(s.bytes_hashed, 10_000);
        assert_eq!(e.cache_len(), 1);
        // The registry reads the same counters, by name.
        let registry = collector_core::metrics::Registry::new();
        e.register_metrics(&registry);
        let stage = [("stage", "hasher")];
        assert_eq!(
            registry.value("daemoneye_files_hashed_total", &stage),
            Some(1)
        );
        assert_eq!(
            registry.value("daemoneye_hash_cache_hits_total", &stage),
            Some(2)
        );
        assert_eq!(
            registry.value("daemoneye_bytes_hashed_total", &stage),
            Some(10_000)
        );
        assert_eq!(
            registry.value(
                "daemoneye_hashes_refused_total",
                &[("stage", "hasher"), ("reason", "too_large")]
            ),
            Some(0)
        );
    }

    #[tokio::test]
    async fn new_mtime_or_size_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bin", b"abc");
        let e = unlimited();
        set_mtime(&path, 1_000_000);
        let first = e.hash_file(&path).await.unwrap();
        assert!(e.hash_file(&path).await.unwrap().from_cache);

        // Same content, new mtime ("touch").
        set_mtime(&path, 2_000_000);
        let touched = e.hash_file(&path).await.unwrap();
        assert!(!touched.from_cache);
        assert_eq!(touched.digests, first.digests);
        assert_eq!(touched.mtime, UNIX_EPOCH + Duration::from_secs(2_000_000));

        // Rewritten with a new size, mtime forced back to the old one.
        std::fs::write(&path, b"abcd").unwrap();
        set_mtime(&path, 2_000_000);
        let rewritten = e.hash_file(&path).await.unwrap();
        assert!(!rewritten.from_cache);
        assert_ne!(rewritten.digests, first.digests);
        assert_eq!(e.stats().files_hashed, 3);
    }

    #[tokio::test]
    async fn the_cache_alone_answers_only_for_the_file_at_the_path_now() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bin", b"abc");
        set_mtime(&path, 1_000_000);
        // Made first: a new link changes the inode's ctime.
        let link = dir.path().join("hardlink");
        std::fs::hard_link(&path, &link).unwrap();
        let e = unlimited();
        // Nothing is read on the caller's thread: unknown is unknown.
        assert_eq!(e.cached(&path), None);
        assert_eq!(e.stats().cache_misses, 0);
        let hashed = e.hash_file(&path).await.unwrap();
        let hit = e.cached(&path).unwrap();
        assert!(hit.from_cache);
        assert_eq!(hit.digests, hashed.digests);
        assert_eq!(hit.digest(HashAlgorithm::Blake3), Some(BLAKE3_ABC));
        let s = e.stats();
        assert_eq!((s.files_hashed, s.cache_hits, s.cache_misses), (1, 1, 1));

        // A hardlink is the same file; a symlink to it is refused as always.
        assert_eq!(e.cached(&link).map(|o| o.digests), Some(hashed.digests));
        let sym = dir.path().join("symlink");
        std::os::unix::fs::symlink(&path, &sym).unwrap();
        assert_eq!(e.cached(&sym), None);

        // Touched, rewritten or gone: no longer the file that was hashed.
        set_mtime(&path, 2_000_000);
        assert_eq!(e.cached(&path), None);
        std::fs::write(&path, b"abd").unwrap();
        assert_eq!(e.cached(&path), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e.cached(&path), None);
    }

    #[tokio::test]
    async fn same_size_rewrite_with_forged_mtime_misses() {
        // Guards the ctime in the cache key: `touch -r` cannot forge ctime.
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bin", b"abc");
        set_mtime(&path, 1_000_000);
        let e = unlimited();
        e.hash_file(&path).await.unwrap();
        let ctime = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.ctime(), m.ctime_nsec())
        };
        let before = ctime(&path);
        // ctime has tick granularity: rewrite until it has moved on.
        loop {
            std::fs::write(&path, b"xyz").unwrap();
            set_mtime(&path, 1_000_000);
            if ctime(&path) != before {
                break;
            }
            tokio::task::yield_now().await;
        }
        let out = e.hash_file(&path).await.unwrap();
        assert!(!out.from_cache);
        assert_eq!(out.digest(HashAlgorithm::Sha256).unwrap().len(), 64);
        assert_ne!(out.digest(HashAlgorithm::Sha256), Some(SHA256_ABC));
    }

    #[tokio::test]
    async fn evictions_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir, "a", b"a");
        let b = write(&dir, "b", b"b");
        let e = engine(HasherConfig {
            cache_capacity_entries: 1,
            ..HasherConfig::default()
        });
        e.hash_file(&a).await.unwrap();
        e.hash_file(&b).await.unwrap();
        assert!(!e.hash_file(&a).await.unwrap().from_cache);
        let s = e.stats();
        assert_eq!(
            (s.cache_evictions, s.cache_misses, e.cache_len()),
            (2, 3, 1)
        );
    }

    #[tokio::test]
    async fn zero_capacity_never_caches() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "a", b"a");
        let e = engine(HasherConfig {
            cache_capacity_entries: 0,
            ..HasherConfig::default()
        });
        for _ in 0..3 {
            assert!(!e.hash_file(&path).await.unwrap().from_cache);
        }
        assert_eq!(e.stats().cache_evictions, 0);
    }

    #[tokio::test]
    async fn final_symlink_refused_but_directory_symlinks_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let target = real.join("tool");
        std::fs::write(&target, b"abc").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dir_link = dir.path().join("bin");
        std::os::unix::fs::symlink(&real, &dir_link).unwrap();

        let e = unlimited();
        let err = e.hash_file(&link).await.unwrap_err();
        assert!(
            matches!(&err, HashError::IsSymlink { path } if *path == link),
            "{err}"
        );
        // A dangling link is still a link, not "not found".
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
        assert!(matches!(
            e.hash_file(&dangling).await,
            Err(HashError::IsSymlink { .. })
        ));

        let via_dir = e.hash_file(&dir_link.join("tool")).await.unwrap();
        assert_eq!(via_dir.digest(HashAlgorithm::Sha256), Some(SHA256_ABC));
        assert_eq!(e.stats().refused.is_symlink, 2);
    }

    #[tokio::test]
    async fn fifo_directory_and_device_refused_as_not_regular() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success(), "mkfifo failed");
        let e = unlimited();
        // No writer: a blocking open would hang here; the timeout turns that
        // into a failure instead.
        let fifo_result = tokio::time::timeout(Duration::from_secs(10), e.hash_file(&fifo))
            .await
            .expect("hashing a FIFO must not block");
        assert!(
            matches!(fifo_result, Err(HashError::NotRegularFile { .. })),
            "{fifo_result:?}"
        );
        assert!(matches!(
            e.hash_file(dir.path()).await,
            Err(HashError::NotRegularFile { .. })
        ));
        assert!(matches!(
            e.hash_file(Path::new("/dev/null")).await,
            Err(HashError::NotRegularFile { .. })
        ));
        assert_eq!(e.stats().refused.not_regular_file, 3);
    }

    #[tokio::test]
    async fn paths_outside_allowed_roots_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "tool", b"abc");
        let e = engine(HasherConfig {
            allowed_roots: vec![dir.path().join("sub")],
            ..HasherConfig::default()
        });
        let err = e.hash_file(&path).await.unwrap_err();
        assert!(
            matches!(&err, HashError::OutsideAllowedRoots { path: p } if *p == path),
            "{err}"
        );
        // `..` cannot climb out of a root, and relative paths mean nothing.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let climbing = dir.path().join("sub").join("..").join("tool");
        assert!(matches!(
            e.hash_file(&climbing).await,
            Err(HashError::OutsideAllowedRoots { .. })
        ));
        assert!(matches!(
            e.hash_file(Path::new("tool")).await,
            Err(HashError::OutsideAllowedRoots { .. })
        ));
        // A sibling sharing the root's name as a prefix is not inside it.
        let sibling = write(&dir, "subx", b"abc");
        assert!(matches!(
            e.hash_file(&sibling).await,
            Err(HashError::OutsideAllowedRoots { .. })
        ));
        let inside = dir.path().join("sub").join("ok");
        std::fs::write(&inside, b"abc").unwrap();
        e.hash_file(&inside).await.unwrap();
        let s = e.stats();
        assert_eq!((s.refused.outside_allowed_roots, s.files_hashed), (4, 1));
    }

    #[tokio::test]
    async fn oversized_file_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let big = write(&dir, "big", &[7; 2049]);
        let edge = write(&dir, "edge", &[7; 2048]);
        let e = engine(HasherConfig {
            max_file_size_bytes: 2048,
            ..HasherConfig::default()
        });
        let err = e.hash_file(&big).await.unwrap_err();
        assert!(
            matches!(
                err,
                HashError::TooLarge {
                    size: 2049,
                    max: 2048,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(e.hash_file(&edge).await.unwrap().bytes_read, 2048);
        let s = e.stats();
        assert_eq!(
            (s.refused.too_large, s.bytes_hashed, s.cache_misses),
            (1, 2048, 1)
        );
    }

    #[tokio::test]
    async fn missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let e = unlimited();
        let missing = dir.path().join("gone");
        let err = e.hash_file(&missing).await.unwrap_err();
        assert!(
            matches!(&err, HashError::NotFound { path } if *path == missing),
            "{err}"
        );
        assert!(err.is_gone());
        // A regular file used as a directory (ENOTDIR) is as gone.
        let file = write(&dir, "file", b"x");
        let err = e.hash_file(&file.join("child")).await.unwrap_err();
        assert!(matches!(err, HashError::NotFound { .. }), "{err}");
        assert_eq!(e.stats().refused.not_found, 2);
        assert_eq!(e.stats().refused.total(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_paces_reads_in_virtual_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "four_mib",
            &pattern(usize::try_from(4 * MIB).unwrap()),
        );
        let e = engine(HasherConfig {
            bytes_per_sec: MIB,
            chunk_size_bytes: 256 * KIB,
            ..HasherConfig::default()
        });
        let start = Instant::now();
        let out = e.hash_file(&path).await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(out.bytes_read, 4 * MIB);
        // 4 MiB at 1 MiB/s, the first chunk (a quarter second) being the
        // burst: 3.75 s of virtual time.
        assert!(
            (Duration::from_millis(3700)..=Duration::from_millis(3800)).contains(&elapsed),
            "{elapsed:?}"
        );
        let waited = e.stats().budget_waited;
        assert!(
            (Duration::from_millis(3700)..=Duration::from_millis(3800)).contains(&waited),
            "{waited:?}"
        );
        // A cache hit is free.
        let start = Instant::now();
        assert!(e.hash_file(&path).await.unwrap().from_cache);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_is_shared_by_concurrent_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir, "a", &pattern(usize::try_from(MIB).unwrap()));
        let b = write(&dir, "b", &vec![1; 1 << 20]);
        let e = engine(HasherConfig {
            bytes_per_sec: MIB,
            chunk_size_bytes: 256 * KIB,
            ..HasherConfig::default()
        });
        let start = Instant::now();
        let (ra, rb) = tokio::join!(e.hash_file(&a), e.hash_file(&b));
        let elapsed = start.elapsed();
        assert_eq!(ra.unwrap().bytes_read + rb.unwrap().bytes_read, 2 * MIB);
        // 2 MiB through one 1 MiB/s budget, less the burst.
        assert!(
            (Duration::from_millis(1700)..=Duration::from_millis(1800)).contains(&elapsed),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_budget_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "f", &pattern(usize::try_from(MIB).unwrap()));
        let e = unlimited();
        let start = Instant::now();
        e.hash_file(&path).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(e.stats().budget_waited, Duration::ZERO);
    }

    /// Hashes a 16 KiB file at 4 KiB/s in 4 KiB chunks (chunks read at
    /// t = 0, 1, 2, 3 s of paused time) and runs `modify` at t = 1.5 s.
    async fn hash_while_modifying(modify: impl FnOnce(&Path)) -> (HashEngine, HashOutcome) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "victim", &pattern(16 * 1024));
        set_mtime(&path, 1_000_000);
        let e = engine(HasherConfig {
            bytes_per_sec: 4 * KIB,
            chunk_size_bytes: 4 * KIB,
            ..HasherConfig::default()
        });
        let task = tokio::spawn({
            let e = e.clone();
            let path = path.clone();
            async move { e.hash_file(&path).await }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!task.is_finished());
        modify(&path);
        let out = task.await.unwrap().unwrap();
        (e, out)
    }

    #[tokio::test(start_paused = true)]
    async fn file_rewritten_in_place_during_hash_is_flagged_and_not_cached() {
        let (e, out) = hash_while_modifying(|path| {
            let mut f = OpenOptions::new().write(true).open(path).unwrap();
            f.seek(SeekFrom::Start(10_000)).unwrap();
            f.write_all(b"tampered").unwrap();
            // Same size; the mtime moves even on coarse-timestamp filesystems.
            f.set_times(FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(2_000_000)))
                .unwrap();
        })
        .await;
        assert!(out.changed_during_hash);
        assert_eq!(out.bytes_read, 16 * KIB);
        assert_eq!(e.cache_len(), 0);
        let s = e.stats();
        assert_eq!((s.changed_during_hash, s.files_hashed), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn file_grown_during_hash_is_flagged() {
        let (e, out) = hash_while_modifying(|path| {
            let mut f = OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(b"more").unwrap();
        })
        .await;
        assert!(out.changed_during_hash);
        // Only the size seen at open was digested.
        assert_eq!((out.size, out.bytes_read), (16 * KIB, 16 * KIB));
        assert_eq!(e.cache_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn file_truncated_during_hash_is_flagged() {
        let (e, out) = hash_while_modifying(|path| {
            OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(6 * 1024)
                .unwrap();
        })
        .await;
        assert!(out.changed_during_hash);
        // Two chunks were read before the cut; the third found the end.
        assert_eq!(out.bytes_read, 8 * KIB);
        assert_eq!(e.cache_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unmodified_budgeted_file_is_cached() {
        // The control for the tests above: same timing, no change.
        let (e, out) = hash_while_modifying(|_| {}).await;
        assert!(!out.changed_during_hash);
        assert_eq!(e.cache_len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn readers_bound_open_files_and_a_full_queue_refuses() {
        // 10 distinct 16 KiB files at 4 KiB/s: nothing finishes before
        // every request has decided. 2 read, 3 queue, 5 are refused.
        let dir = tempfile::tempdir().unwrap();
        let e = engine(HasherConfig {
            bytes_per_sec: 4 * KIB,
            chunk_size_bytes: 4 * KIB,
            max_concurrent_hashes: 2,
            max_queued_hashes: 3,
            ..HasherConfig::default()
        });
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let path = write(&dir, &format!("f{i}"), &pattern(16 * 1024 + i));
                let e = e.clone();
                tokio::spawn(async move { e.hash_file(&path).await })
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(out) => assert!(!out.from_cache && !out.joined),
                Err(HashError::Busy { .. }) => busy += 1,
                Err(other) => panic!("{other}"),
            }
        }
        let s = e.stats();
        assert_eq!((busy, s.refused.busy, s.files_hashed), (5, 5, 5));
        assert_eq!((s.files_open_peak, s.files_open), (2, 0));
        // The queue drained: a new request is served.
        let late = write(&dir, "late", b"abc");
        assert_eq!(
            e.hash_file(&late)
                .await
                .unwrap()
                .digest(HashAlgorithm::Sha256),
            Some(SHA256_ABC)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hardlinks_join_one_read_and_share_the_cache_entry() {
        let dir = tempfile::tempdir().unwrap();
        let link_a = write(&dir, "a", &pattern(16 * 1024));
        let link_b = dir.path().join("b");
        std::fs::hard_link(&link_a, &link_b).unwrap();
        let e = engine(HasherConfig {
            bytes_per_sec: 4 * KIB,
            chunk_size_bytes: 4 * KIB,
            ..HasherConfig::default()
        });
        let (ra, rb) = tokio::join!(e.hash_file(&link_a), e.hash_file(&link_b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.digests, rb.digests);
        assert_eq!(
            (ra.path.as_path(), rb.path.as_path()),
            (link_a.as_path(), link_b.as_path())
        );
        // One of them read the file, the other joined.
        assert_eq!(ra.bytes_read + rb.bytes_read, 16 * KIB);
        assert!(ra.joined != rb.joined);
        let link_c = dir.path().join("c");
        std::fs::hard_link(&link_a, &link_c).unwrap();
        // A new link moves the inode's ctime: link_a new version, read once,
        // then the entry is shared by every path to it.
        let ra2 = e.hash_file(&link_a).await.unwrap();
        assert!(!ra2.from_cache);
        let rc = e.hash_file(&link_c).await.unwrap();
        assert_eq!(ra2.digests, rc.digests);
        assert!(
            rc.from_cache,
            "the second path of one version hits the cache"
        );
        let s = e.stats();
        assert_eq!(s.joined, 1);
        assert_eq!(s.bytes_hashed, 16 * KIB * (s.files_hashed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_read_sends_its_joiners_round_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "bin", &pattern(16 * 1024));
        let e = engine(HasherConfig {
            bytes_per_sec: 4 * KIB,
            chunk_size_bytes: 4 * KIB,
            ..HasherConfig::default()
        });
        let leader = tokio::spawn({
            let (e, path) = (e.clone(), path.clone());
            async move { e.hash_file(&path).await }
        });
        // The leader has registered its read and is pacing its chunks.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let joiner = tokio::spawn({
            let (e, path) = (e.clone(), path.clone());
            async move { e.hash_file(&path).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        let out = tokio::time::timeout(Duration::from_secs(60), joiner)
            .await
            .expect("the joiner is not left waiting")
            .unwrap()
            .unwrap();
        assert!(!out.joined);
        assert_eq!(out.bytes_read, 16 * KIB);
        assert_eq!(out.digest(HashAlgorithm::Sha256).map(str::len), Some(64));
        let s = e.stats();
        assert_eq!((s.joined, s.files_hashed, s.files_open), (0, 1, 0));
    }

    #[test]
    fn system_time_handles_pre_epoch_and_bad_nanos() {
        assert_eq!(
            system_time(-1, 500),
            UNIX_EPOCH - Duration::from_secs(1) + Duration::from_nanos(500)
        );
        assert_eq!(system_time(3, -5), UNIX_EPOCH + Duration::from_secs(3));
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
