//! Read-only, bounded SQL: the one authorizer and the one set of limits
//! that the store's ad-hoc queries and the detection rules run under, so a
//! statement from a user or a rule file can read and nothing else, call
//! only the functions reading needs, and stay within sizes that keep each
//! step short.
//!
//! - [`read_only_authorizer`]: no writes, `ATTACH`, `PRAGMA` (nor the
//!   `pragma_*` table-valued functions), transactions or schema changes,
//!   and only the functions of [`ALLOWED_FUNCTIONS`].
//! - [`limit`]: `sqlite3_limit` on the connection: values of at most
//!   [`MAX_VALUE_BYTES`], statements of at most [`MAX_SQL_BYTES`], few
//!   columns, shallow expressions, short `LIKE` patterns, no attachments.
//! - [`cap_heap`]: SQLite's hard heap limit (process-wide).
//! - [`install_functions`]: `REGEXP` (Rust's linear-time `regex`) and
//!   `cidr_match(address, network)`, which SQLite does not have.
//!
//! Install both on a connection before it sees any user SQL: SQLite runs
//! some pragmas while preparing, so a statement prepared without the
//! authorizer may already have done its harm.

use std::sync::{Arc, Mutex, PoisonError};
// The watchdog keeps real time, as SQLite runs in it: a paused tokio clock
// (in tests) must not stop, or hasten, an interrupt.
use std::time::Duration;
#[allow(clippy::disallowed_types)]
use std::time::Instant;

use collector_core::lock;
use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Batch, Connection, Statement};

/// Denials recorded by the authorizer, for a clear refusal message.
pub type Denied = Arc<Mutex<Option<String>>>;

/// The functions user SQL may call (lowercase): scalar string, number,
/// date and JSON functions, the aggregates and the window functions. Not
/// in it, so refused: `randomblob`, `zeroblob`, `random`, `load_extension`,
/// `sqlite_*`, `fts3_tokenizer`, `changes`, `last_insert_rowid` and any
/// other function (an extension's included).
pub const ALLOWED_FUNCTIONS: &[&str] = &[
    // Core scalar functions.
    "abs",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "format",
    "glob",
    "hex",
    "if",
    "ifnull",
    "iif",
    "instr",
    "length",
    "like",
    "likelihood",
    "likely",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "octet_length",
    "printf",
    "quote",
    // Added by this module (see `install_functions`).
    "regexp",
    "cidr_match",
    "replace",
    "round",
    "rtrim",
    "sign",
    "soundex",
    "substr",
    "substring",
    "trim",
    "typeof",
    "unhex",
    "unicode",
    "unlikely",
    "upper",
    // Math.
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "ceil",
    "ceiling",
    "cos",
    "cosh",
    "degrees",
    "exp",
    "floor",
    "ln",
    "log",
    "log10",
    "log2",
    "mod",
    "pi",
    "pow",
    "power",
    "radians",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
    // Dates and times.
    "date",
    "datetime",
    "julianday",
    "strftime",
    "time",
    "timediff",
    "unixepoch",
    // Aggregates.
    "avg",
    "count",
    "group_concat",
    "string_agg",
    "sum",
    "total",
    // Window functions.
    "cume_dist",
    "dense_rank",
    "first_value",
    "lag",
    "last_value",
    "lead",
    "nth_value",
    "ntile",
    "percent_rank",
    "rank",
    "row_number",
    // JSON (text and JSONB), the `->` and `->>` operators included.
    "->",
    "->>",
    "json",
    "json_array",
    "json_array_length",
    "json_error_position",
    "json_extract",
    "json_group_array",
    "json_group_object",
    "json_insert",
    "json_object",
    "json_patch",
    "json_pretty",
    "json_quote",
    "json_remove",
    "json_replace",
    "json_set",
    "json_type",
    "json_valid",
    "jsonb",
    "jsonb_array",
    "jsonb_extract",
    "jsonb_group_array",
    "jsonb_group_object",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_patch",
    "jsonb_remove",
    "jsonb_replace",
    "jsonb_set",
];

/// Whether user SQL may call the function `name` (any case).
pub fn function_allowed(name: &str) -> bool {
    ALLOWED_FUNCTIONS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

/// The longest string or blob a statement may read or make: 16 MiB, above
/// any command line a process can have (the kernel caps a process's
/// arguments at 6 MiB), so no process can make a rule fail by its size,
/// while one step of a statement stays short (making or scanning 16 MiB
/// takes milliseconds).
pub const MAX_VALUE_BYTES: i32 = 16 << 20;

/// The longest statement: 100 kB.
pub const MAX_SQL_BYTES: i32 = 100_000;

/// The `sqlite3_limit`s of a connection that runs user SQL, beyond
/// [`MAX_VALUE_BYTES`] and [`MAX_SQL_BYTES`].
const LIMITS: [(Limit, i32); 10] = [
    (Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES),
    (Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES),
    // Result columns, ORDER BY and GROUP BY terms (tables have fewer).
    (Limit::SQLITE_LIMIT_COLUMN, 200),
    (Limit::SQLITE_LIMIT_EXPR_DEPTH, 500),
    (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 50),
    (Limit::SQLITE_LIMIT_VDBE_OP, 100_000),
    (Limit::SQLITE_LIMIT_FUNCTION_ARG, 64),
    (Limit::SQLITE_LIMIT_ATTACHED, 0),
    (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000),
    (Limit::SQLITE_LIMIT_WORKER_THREADS, 0),
];

/// The limits a connection had before [`limit`], for [`restore`].
#[derive(Debug)]
pub struct Previous(Vec<(Limit, i32)>);

/// Sets the `sqlite3_limit`s user SQL runs under on `conn` (see the
/// [module docs](self)), returning those it had.
///
/// # Errors
/// When SQLite refuses a limit.
pub fn limit(conn: &Connection) -> Result<Previous, rusqlite::Error> {
    let mut before = Vec::with_capacity(LIMITS.len());
    for (which, value) in LIMITS {
        before.push((which, conn.set_limit(which, value)?));
    }
    Ok(Previous(before))
}

/// Gives `conn` back the limits it had before [`limit`].
///
/// # Errors
/// When SQLite refuses a limit.
pub fn restore(conn: &Connection, previous: &Previous) -> Result<(), rusqlite::Error> {
    for &(which, value) in &previous.0 {
        conn.set_limit(which, value)?;
    }
    Ok(())
}

/// Caps the heap of every SQLite connection of this process at `bytes`
/// (`PRAGMA hard_heap_limit`): past it, allocations fail and the statement
/// that asked fails with "out of memory". The cap is process-wide (SQLite
/// has no per-connection heap) and only ever lowered: a lower cap already
/// set stays.
///
/// # Errors
/// When SQLite cannot open an in-memory connection to set it.
pub fn cap_heap(bytes: i64) -> Result<(), rusqlite::Error> {
    let conn = Connection::open_in_memory()?;
    conn.pragma_update(None, "hard_heap_limit", bytes)
}

/// An SQLite authorizer that allows reading only: no writes, `ATTACH`,
/// `PRAGMA` or `pragma_*` tables, transactions, schema changes, and no
/// function outside [`ALLOWED_FUNCTIONS`]. What it refused last is left in
/// `denied`. It judges at prepare time only: a prepared statement runs
/// without calling it again.
pub fn read_only_authorizer(
    denied: Denied,
) -> impl for<'r> FnMut(AuthContext<'r>) -> Authorization + Send + 'static {
    move |ctx: AuthContext<'_>| {
        let verdict = match ctx.action {
            AuthAction::Select | AuthAction::Recursive => None,
            // The `pragma_*` table-valued functions run their pragma when
            // the statement runs, where this authorizer refuses it: refuse
            // them here, so what prepares also runs.
            AuthAction::Read { table_name, .. } => starts_with_ignore_case(table_name, "pragma_")
                .then(|| format!("table {table_name}")),
            AuthAction::Function { function_name } => {
                (!function_allowed(function_name)).then(|| format!("function {function_name}()"))
            }
            AuthAction::Attach { .. } => Some("ATTACH".to_owned()),
            AuthAction::Pragma { pragma_name, .. } => Some(format!("PRAGMA {pragma_name}")),
            AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Delete { table_name } => Some(format!("writing to {table_name}")),
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
                Some("transactions".to_owned())
            }
            _ => Some("schema changes".to_owned()),
        };
        match verdict {
            None => Authorization::Allow,
            Some(what) => {
                *lock(&denied) = Some(what);
                Authorization::Deny
            }
        }
    }
}

/// Installs the [`read_only_authorizer`] (recording into `denied`) and the
/// [`limit`]s on `conn`: what a connection needs before it sees user SQL.
/// Returns the limits it had.
///
/// # Errors
/// When SQLite refuses a limit.
pub fn guard(conn: &Connection, denied: Denied) -> Result<Previous, rusqlite::Error> {
    let previous = limit(conn)?;
    install_functions(conn)?;
    conn.authorizer(Some(read_only_authorizer(denied)));
    Ok(previous)
}

/// The largest compiled program of one `REGEXP` pattern: 1 MiB. A bigger
/// one fails the statement ("regular expression too big").
pub const MAX_REGEX_BYTES: usize = 1 << 20;

/// Adds to `conn` the functions user SQL may call that SQLite lacks:
///
/// - `regexp(pattern, text)`, so `text REGEXP pattern` works: Rust's
///   `regex` syntax (linear time in the text, so no pattern can hang a
///   statement; no look-around or back-references), each pattern compiled
///   once per statement, at most [`MAX_REGEX_BYTES`]. `NULL` for a `NULL`
///   text; numbers are matched as their text.
/// - `cidr_match(address, network)`: whether the IP address is in the
///   network (`10.0.0.0/8`, `fe80::/10`; an address alone is its own
///   network), an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) counting as
///   its IPv4 address. `NULL` for a `NULL` address, false for one that is
///   not an address; a malformed network fails the statement.
///
/// [`guard`] installs them.
///
/// # Errors
/// When SQLite refuses to register a function.
pub fn install_functions(conn: &Connection) -> Result<(), rusqlite::Error> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("regexp", 2, flags, |ctx| {
        let re = ctx.get_or_create_aux(0, |pattern| -> Result<regex::bytes::Regex, BoxError> {
            let pattern = pattern.as_str()?;
            Ok(regex::bytes::RegexBuilder::new(pattern)
                .size_limit(MAX_REGEX_BYTES)
                .build()?)
        })?;
        let text = match ctx.get_raw(1) {
            ValueRef::Null => return Ok(None),
            ValueRef::Text(t) | ValueRef::Blob(t) => re.is_match(t),
            ValueRef::Integer(i) => re.is_match(i.to_string().as_bytes()),
            ValueRef::Real(r) => re.is_match(r.to_string().as_bytes()),
        };
        Ok(Some(text))
    })?;
    conn.create_scalar_function("cidr_match", 2, flags, |ctx| {
        let net = ctx.get_or_create_aux(1, |net| -> Result<Network, BoxError> {
            Ok(parse_cidr(net.as_str()?)?)
        })?;
        match ctx.get_raw(0) {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => Ok(Some(
                std::str::from_utf8(t)
                    .ok()
                    .and_then(|a| a.parse().ok())
                    .is_some_and(|a| net.contains(a)),
            )),
            _ => Ok(Some(false)),
        }
    })
}

/// An IP network: an address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `addr` is in the network.
    pub fn contains(&self, addr: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        let (a, n, bits) = match (addr, self.addr) {
            (IpAddr::V4(a), IpAddr::V4(n)) => (
                u128::from(a.to_bits()) << 96,
                u128::from(n.to_bits()) << 96,
                self.prefix,
            ),
            (IpAddr::V6(a), IpAddr::V6(n)) => (a.to_bits(), n.to_bits(), self.prefix),
            _ => return false,
        };
        let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
        a & mask == n & mask
    }
}

/// Parses `10.0.0.0/8`, `fe80::/10` or a lone address (its own network).
///
/// # Errors
/// What is wrong with it.
pub fn parse_cidr(text: &str) -> Result<Network, String> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = if prefix.is_empty() {
        max
    } else {
        prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("prefix {prefix:?} is not 0 to {max}"))?
    };
    Ok(Network { addr, prefix })
}

/// Prepares `sql` on `conn`, which must be [`guard`]ed with `denied`, as one
/// read-only statement: each statement of `sql` is compiled on its own
/// under the authorizer, so nothing of it runs, not even a pragma.
///
/// # Errors
/// Why the statement is refused: more than one statement (or none), a
/// refusal of the authorizer, invalid SQL, or a statement that would write.
pub fn prepare<'c>(
    conn: &'c Connection,
    sql: &str,
    denied: &Denied,
) -> Result<Statement<'c>, String> {
    let take = || lock(denied).take();
    take();
    let mut batch = Batch::new(conn, sql);
    let stmt = match batch.next() {
        Ok(Some(stmt)) => stmt,
        Ok(None) => return Err("no statement".to_owned()),
        Err(e) => {
            return Err(match take() {
                Some(what) => format!("only reading is allowed; refused: {what}"),
                None => format!("invalid SQL: {e}"),
            })
        }
    };
    if !matches!(batch.next(), Ok(None)) {
        take();
        return Err("more than one statement".to_owned());
    }
    if !stmt.readonly() {
        return Err("only reading is allowed".to_owned());
    }
    Ok(stmt)
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Interrupts statements that overrun their time, from a thread of its
/// own: `sqlite3_interrupt` takes effect at the next step of the statement,
/// however few steps it runs (a progress handler counts steps, and one step
/// may take long), so a statement stops within one step of its deadline.
///
/// Each connection watched has a slot; [`arm`](Self::arm) it before a
/// statement and [`disarm`](Self::disarm) it after. The thread sleeps until
/// the nearest deadline (or, with none, until armed) and stops when the
/// watchdog is dropped.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<WatchState>,
    wake: std::sync::Condvar,
}

#[allow(clippy::disallowed_types)] // real time: see the import
struct WatchState {
    slots: Vec<(rusqlite::InterruptHandle, Option<Instant>)>,
    /// The thread waits with no deadline to wake it: arming must notify.
    idle: bool,
    stop: bool,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

#[allow(clippy::disallowed_types)] // real time: see the import
impl Watchdog {
    /// A watchdog over `conns` (slot `i` is `conns[i]`).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn new(conns: &[&Connection]) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(WatchState {
                slots: conns
                    .iter()
                    .map(|c| (c.get_interrupt_handle(), None))
                    .collect(),
                idle: false,
                stop: false,
            }),
            wake: std::sync::Condvar::new(),
        });
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("daemoneye-sql-watchdog".to_owned())
            .spawn(move || watched.watch())?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The statement about to run on slot `slot` is interrupted once `limit`
    /// has passed (unless [`disarm`](Self::disarm)ed first).
    pub fn arm(&self, slot: usize, limit: Duration) {
        let mut state = self.shared.lock();
        if let Some(s) = state.slots.get_mut(slot) {
            s.1 = Some(Instant::now() + limit);
        }
        if state.idle {
            state.idle = false;
            self.shared.wake.notify_one();
        }
    }

    /// The statement of slot `slot` is done: no interrupt for it.
    pub fn disarm(&self, slot: usize) {
        if let Some(s) = self.shared.lock().slots.get_mut(slot) {
            s.1 = None;
        }
    }
}

#[allow(clippy::disallowed_types)] // real time: see the import
impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        lock(&self.state)
    }

    fn watch(&self) {
        let mut state = self.lock();
        while !state.stop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for (handle, deadline) in &mut state.slots {
                match *deadline {
                    Some(d) if d <= now => {
                        // Under the lock: the slot's statement is still the
                        // one that overran (disarming takes the lock).
                        handle.interrupt();
                        *deadline = None;
                    }
                    Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                    None => {}
                }
            }
            state = match next {
                Some(d) => {
                    self.wake
                        .wait_timeout(state, d.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => {
                    state.idle = true;
                    self.wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner)
                }
            };
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn guarded() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        guard(&conn, Denied::default()).unwrap();
        conn
    }

    fn ask(conn: &Connection, sql: &str) -> Option<bool> {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn regexp_matches_text_numbers_and_null_and_refuses_a_huge_pattern() {
        let conn = guarded();
        assert_eq!(
            ask(&conn, "SELECT 'bash -i' REGEXP '^ba.h -[a-z]$'"),
            Some(true)
        );
        assert_eq!(ask(&conn, "SELECT 'BASH' REGEXP 'bash'"), Some(false));
        assert_eq!(ask(&conn, "SELECT 'BASH' REGEXP '(?i)bash'"), Some(true));
        assert_eq!(ask(&conn, "SELECT 4444 REGEXP '^44+$'"), Some(true));
        assert_eq!(ask(&conn, "SELECT NULL REGEXP 'x'"), None);
        // Compiled past the cap: the statement fails, nothing hangs.
        let huge = conn.query_row("SELECT 'a' REGEXP '(a{1000}){1000}'", [], |r| {
            r.get::<_, bool>(0)
        });
        assert!(huge.is_err(), "{huge:?}");
        let bad = conn.query_row("SELECT 'a' REGEXP '('", [], |r| r.get::<_, bool>(0));
        assert!(bad.is_err());
    }

    #[test]
    fn cidr_match_takes_both_families_and_mapped_addresses() {
        let conn = guarded();
        for (addr, net, is) in [
            ("10.1.2.3", "10.0.0.0/8", Some(true)),
            ("11.1.2.3", "10.0.0.0/8", Some(false)),
            ("172.31.255.1", "172.16.0.0/12", Some(true)),
            ("172.32.0.1", "172.16.0.0/12", Some(false)),
            ("::ffff:10.9.9.9", "10.0.0.0/8", Some(true)),
            ("fe80::1", "fe80::/10", Some(true)),
            ("fec0::1", "fe80::/10", Some(false)),
            ("10.1.2.3", "fe80::/10", Some(false)),
            ("1.2.3.4", "1.2.3.4", Some(true)),
            ("1.2.3.4", "0.0.0.0/0", Some(true)),
            ("not an address", "0.0.0.0/0", Some(false)),
        ] {
            let sql = format!("SELECT cidr_match('{addr}', '{net}')");
            assert_eq!(ask(&conn, &sql), is, "{addr} in {net}");
        }
        assert_eq!(ask(&conn, "SELECT cidr_match(NULL, '10.0.0.0/8')"), None);
        for bad in ["10.0.0.0/33", "10.0.0/8", "x"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
            let sql = format!("SELECT cidr_match('10.0.0.1', '{bad}')");
            assert!(conn.query_row(&sql, [], |r| r.get::<_, bool>(0)).is_err());
        }
    }

    #[test]
    fn the_added_functions_pass_the_authorizer() {
        let conn = guarded();
        let denied = Denied::default();
        for sql in [
            "SELECT 'a' REGEXP 'a'",
            "SELECT regexp('a', 'a')",
            "SELECT cidr_match('10.0.0.1', '10.0.0.0/8')",
        ] {
            assert!(prepare(&conn, sql, &denied).is_ok(), "{sql}");
        }
    }
}
