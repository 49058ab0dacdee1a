//! What the crate's public types share: `with_*` setters written once
//! ([`with_setters!`]), the handles on a running component
//! ([`shared_handle!`]), a `Debug` that shows a few fields
//! ([`debug_fields!`](crate::debug_fields), exported for the other crates
//! too), fieldless enums with lowercase names ([`names!`]), the "no field may be zero" check of the `validate` methods
//! ([`first_zero`]) and the poison-tolerant [`lock`], [`read`] and
//! [`write`].

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Builder methods that consume `self`, change one field and return `self`,
/// each `#[must_use]` and `pub`. The braces hold what is done to the field
/// (`self.` is put in front):
///
/// ```ignore
/// impl Config {
///     with_setters! {
///         /// Sets the size.
///         with_size(n: usize) { size = n }
///         /// Sets the name.
///         with_name(name: impl Into<String>) { name = name.into() }
///         /// Adds a tag.
///         with_tag(tag: impl Into<String>) { tags.push(tag.into()) }
///     }
/// }
/// ```
macro_rules! with_setters {
    ($(
        $(#[$attr:meta])*
        $name:ident($arg:ident: $ty:ty) { $($change:tt)* }
    )*) => {$(
        $(#[$attr])*
        #[must_use]
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$($change)*;
            self
        }
    )*};
}

/// A cheap, cloneable handle on a component's `Arc<$shared>`, whose
/// `shutdown` field (a `CancellationToken`) stops the component: the struct,
/// a `Debug` that shows only its name, and `shutdown()`, documented with the
/// doc comments given after the struct.
///
/// ```ignore
/// shared_handle! {
///     /// A handle to a running server.
///     pub struct ServerHandle(Shared);
///     /// Stops the server.
/// }
/// ```
macro_rules! shared_handle {
    (
        $(#[$attr:meta])*
        pub struct $name:ident($shared:ty);
        $(#[$shutdown_attr:meta])*
    ) => {
        $(#[$attr])*
        #[derive(Clone)]
        pub struct $name {
            shared: Arc<$shared>,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            $(#[$shutdown_attr])*
            pub fn shutdown(&self) {
                self.shared.shutdown.cancel();
            }
        }
    };
}

/// Implements `Debug` for a struct that shows only the fields named (the
/// rest may hold things without a `Debug`, or secrets) and ends
/// non-exhaustive, as `Name { a: .., b: .., .. }`. A field may be shown
/// from a path below `self`: `name = path.to.it`.
///
/// ```
/// struct Sink {
///     name: &'static str,
///     inner: Inner,
///     _on_alert: Box<dyn Fn()>,
/// }
/// struct Inner {
///     url: String,
/// }
/// collector_core::debug_fields!(Sink { name, url = inner.url });
///
/// let sink = Sink {
///     name: "hook",
///     inner: Inner { url: "http://x".into() },
///     _on_alert: Box::new(|| {}),
/// };
/// assert_eq!(format!("{sink:?}"), r#"Sink { name: "hook", url: "http://x", .. }"#);
/// ```
#[macro_export]
macro_rules! debug_fields {
    ($ty:ident $(<$param:ident>)? { $($field:ident $(= $($path:ident).+)?),* $(,)? }) => {
        impl $(<$param>)? ::std::fmt::Debug for $ty $(<$param>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &$crate::debug_fields!(@get self $field $(= $($path).+)?)))*
                    .finish_non_exhaustive()
            }
        }
    };
    (@get $self:ident $field:ident) => {
        $self.$field
    };
    (@get $self:ident $field:ident = $($path:ident).+) => {
        $self.$($path).+
    };
}

/// A value a config field must not be zero.
pub(crate) trait IsZero: Copy {
    fn is_zero(self) -> bool;
}

impl IsZero for usize {
    fn is_zero(self) -> bool {
        self == 0
    }
}

impl IsZero for Duration {
    fn is_zero(self) -> bool {
        Duration::is_zero(&self)
    }
}

/// The name of the first of `fields` whose value is zero.
pub(crate) fn first_zero<T: IsZero>(
    fields: impl IntoIterator<Item = (&'static str, T)>,
) -> Option<&'static str> {
    fields
        .into_iter()
        .find_map(|(field, value)| value.is_zero().then_some(field))
}

/// Locks `m`, also after a holder panicked: what the crate keeps behind a
/// lock is consistent between statements, so a poisoned lock is still good.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, also after a holder panicked (as [`lock`]).
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, also after a holder panicked (as [`lock`]).
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// A fieldless public enum whose values have lowercase names: the enum
/// (serde with those names, `non_exhaustive`), `ALL`, `as_str` and
/// `from_name` and `Display`, from one list of `Variant = "name",`.
/// Exported so that collectors outside this crate name their metrics the
/// same way (the crate using it needs `serde`).
#[macro_export]
macro_rules! names {
    ($(#[$meta:meta])* $ty:ident { $($(#[$vmeta:meta])* $variant:ident = $name:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum $ty {
            $($(#[$vmeta])* $variant,)+
        }

        impl $ty {
            /// Every value.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The lowercase name, as in JSON and on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            /// The value named `name` (as [`as_str`](Self::as_str) gives it).
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Built {
        size: usize,
        name: String,
        tags: Vec<String>,
    }

    #[allow(unreachable_pub)]
    impl Built {
        with_setters! {
            /// Sets the size.
            with_size(n: usize) { size = n }
            /// Sets the name.
            with_name(name: impl Into<String>) { name = name.into() }
            /// Adds a tag.
            with_tag(tag: &str) { tags.push(tag.to_owned()) }
        }
    }

    #[test]
    fn setters_set_and_push() {
        let b = Built::default()
            .with_size(3)
            .with_name("n")
            .with_tag("a")
            .with_tag("b");
        assert_eq!(b.size, 3);
        assert_eq!(b.name, "n");
        assert_eq!(b.tags, ["a", "b"]);
    }

    #[test]
    fn first_zero_names_the_first_zero_field() {
        assert_eq!(first_zero([("a", 1usize), ("b", 0), ("c", 0)]), Some("b"));
        assert_eq!(first_zero([("a", Duration::from_secs(1))]), None);
        assert_eq!(
            first_zero([("a", Duration::from_secs(1)), ("b", Duration::ZERO)]),
            Some("b")
        );
    }
}
