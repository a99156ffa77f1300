//! The users and databases a ready-made database server makes (PostgreSQL, MariaDB): what
//! the two check alike before anything starts.

/// A user or database given twice, said (the later one's settings would silently win: a
/// password the test doesn't expect).
pub(super) fn given_twice<'a>(
    users: impl IntoIterator<Item = &'a str>,
    databases: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    for (what, names) in [
        ("user", users.into_iter().collect::<Vec<_>>()),
        ("database", databases.into_iter().collect()),
    ] {
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = names.into_iter().find(|n| !seen.insert(*n)) {
            return Some(format!(
                "{what} `{}` is given twice: give each {what} once",
                twice.escape_debug()
            ));
        }
    }
    None
}
