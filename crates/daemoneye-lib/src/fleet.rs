//! The fleet's names on NATS JetStream, shared by the agent that ships
//! (its fleet sink) and the command line that reads (`daemoneye-cli
//! fleet`): one stream, and per host the subjects
//! `<prefix>.<host>.alerts`, `<prefix>.<host>.ledger` and, for the event
//! domains a host ships, `<prefix>.<host>.events.<domain>`.
//!
//! ```
//! use daemoneye_lib::fleet;
//!
//! let alerts = fleet::subject(fleet::DEFAULT_SUBJECT_PREFIX, "web-1", fleet::ALERTS);
//! assert_eq!(alerts, "daemoneye.web-1.alerts");
//! assert_eq!(fleet::host_of(fleet::DEFAULT_SUBJECT_PREFIX, &alerts), Some("web-1"));
//! ```

/// The subjects' first token when the config names none.
pub const DEFAULT_SUBJECT_PREFIX: &str = "daemoneye";
/// The stream's name when the config names none.
pub const DEFAULT_STREAM: &str = "DAEMONEYE";
/// The last token of a host's alerts subject.
pub const ALERTS: &str = "alerts";
/// The last token of a host's ledger checkpoints subject.
pub const LEDGER: &str = "ledger";
/// The token before the domain in a host's events subjects
/// (`<prefix>.<host>.events.<domain>`).
pub const EVENTS: &str = "events";

/// What follows the host in a host's subject for events of `domain`:
/// `events.<domain>`.
pub fn events(domain: &str) -> String {
    format!("{EVENTS}.{domain}")
}

/// The servers of a `,`-separated URL list (`nats://a:4222,nats://b:4222`),
/// each trimmed, for a client that is given several to choose from and
/// fail over between.
///
/// ```
/// assert_eq!(
///     daemoneye_lib::fleet::servers("nats://a:4222, nats://b:4222"),
///     ["nats://a:4222", "nats://b:4222"]
/// );
/// ```
pub fn servers(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).collect()
}

/// The user and password (`nats://user:password@host`), or the token
/// (`nats://token@host`: no password), that the first server of `url`
/// (see [`servers`]) with any carries, percent-decoded. The client is given
/// them as options: async-nats ignores a URL's user information.
///
/// ```
/// use daemoneye_lib::fleet::credentials;
///
/// assert_eq!(credentials("nats://127.0.0.1:4222"), None);
/// assert_eq!(
///     credentials("nats://a:4222,nats://us%40r:p%3Ass@b:4222"),
///     Some(("us@r".to_owned(), Some("p:ss".to_owned())))
/// );
/// assert_eq!(credentials("tls://s3cret@host:4222"), Some(("s3cret".to_owned(), None)));
/// ```
pub fn credentials(url: &str) -> Option<(String, Option<String>)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    servers(url).into_iter().find_map(|server| {
        let (_, rest) = server.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(decode(password))),
            None => (userinfo, None),
        };
        (!user.is_empty()).then(|| (decode(user), password))
    })
}

/// `name` as one subject token: `.`, `*`, `>` and white space become `_`.
pub fn subject_token(name: &str) -> String {
    let token: String = name
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

/// `<prefix>.<host>.<what>` (`host` already a [`subject_token`]).
pub fn subject(prefix: &str, host: &str, what: &str) -> String {
    format!("{prefix}.{host}.{what}")
}

/// Every host's `what` subjects: `<prefix>.*.<what>`.
pub fn every_host(prefix: &str, what: &str) -> String {
    subject(prefix, "*", what)
}

/// The host a subject `<prefix>.<host>.<what>` names (`what` being
/// `alerts`, `ledger` or `events.<domain>`); `None` for another subject.
pub fn host_of<'s>(prefix: &str, subject: &'s str) -> Option<&'s str> {
    let (host, what) = subject
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .split_once('.')?;
    let known = what == ALERTS
        || what == LEDGER
        || what
            .strip_prefix(EVENTS)
            .and_then(|d| d.strip_prefix('.'))
            .is_some_and(|d| !d.is_empty() && !d.contains('.'));
    (!host.is_empty() && known).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_the_middle_token() {
        assert_eq!(
            host_of("daemoneye", "daemoneye.db_local.ledger"),
            Some("db_local")
        );
        assert_eq!(host_of("daemoneye", "other.x.alerts"), None);
        assert_eq!(host_of("daemoneye", "daemoneye.alerts"), None);
        assert_eq!(host_of("daemoneye", "daemoneye.a.b.alerts"), None);
        assert_eq!(every_host("p", ALERTS), "p.*.alerts");
        assert_eq!(
            host_of("daemoneye", "daemoneye.web-1.events.process"),
            Some("web-1")
        );
        assert_eq!(host_of("daemoneye", "daemoneye.web-1.events."), None);
        assert_eq!(host_of("daemoneye", "daemoneye.web-1.events.a.b"), None);
        assert_eq!(every_host("p", &events("*")), "p.*.events.*");
    }
}
