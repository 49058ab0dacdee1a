//! Read-only SQL: the authorizer that the store's ad-hoc queries and the
//! detection rules run under, so a statement from a user or a rule file can
//! read and nothing else.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Denials recorded by the authorizer, for a clear refusal message.
pub type Denied = Arc<Mutex<Option<String>>>;

/// An SQLite authorizer that allows reading only: no writes, `ATTACH`,
/// `PRAGMA`, transactions, schema changes or file and extension functions.
/// What it refused last is left in `denied`.
pub fn read_only_authorizer(
    denied: Denied,
) -> impl for<'r> FnMut(AuthContext<'r>) -> Authorization + Send + 'static {
    move |ctx: AuthContext<'_>| {
        let verdict = match ctx.action {
            AuthAction::Select | AuthAction::Read { .. } | AuthAction::Recursive => None,
            AuthAction::Function { function_name } => {
                let f = function_name.to_ascii_lowercase();
                // Everything that touches files, extensions or settings.
                (f == "load_extension" || f.starts_with("sqlite_") || f == "fts3_tokenizer")
                    .then(|| format!("function {function_name}()"))
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
                *denied.lock().unwrap_or_else(PoisonError::into_inner) = Some(what);
                Authorization::Deny
            }
        }
    }
}
