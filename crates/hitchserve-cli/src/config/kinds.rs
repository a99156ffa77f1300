//! The kinds of ready-made service a file may name (`kind = "postgres"`, ...), and the
//! check that a `kind` is one of them.
//!
//! Owns the list only: what each kind takes is checked in `check`, and each is built in
//! `build`. Invariant: a kind added here is built there too.

use serde::Deserialize;

/// The kinds of ready-made service.
const KINDS: [&str; 9] = [
    "postgres",
    "mariadb",
    "rabbitmq",
    "redis",
    "smtp",
    "cron",
    "memcached",
    "nginx",
    "chromium",
];

/// `a, b or c`, for messages.
pub(super) fn kinds_list() -> String {
    let (last, rest) = KINDS.split_last().unwrap_or((&"", &[]));
    format!("{} or {last}", rest.join(", "))
}

pub(super) fn checked_kind<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    if !KINDS.contains(&text.as_str()) {
        return Err(serde::de::Error::custom(format!(
            "unknown kind `{text}` ({})",
            kinds_list()
        )));
    }
    Ok(Some(text))
}
