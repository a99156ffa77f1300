//! Reading a `hitchserve.toml`: parse it, run the checks across keys, and place every error
//! at the file, line and column it is about.
//!
//! Owns only the reading and the placing (the shape is `schema`'s, the rules `check`'s).
//! Invariant: an error names the file, as `path:line:column: why`.

use std::path::Path;

use super::check::restart_policy;
use super::schema::Config;

/// Read and parse a config file; errors carry the file, line and column.
pub fn load(path: &Path) -> Result<Config, String> {
    if path.is_dir() {
        return Err(format!(
            "`{}` is a directory, not a file: give --file the bundle's TOML file",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        let whole = std::env::current_dir().map_or_else(|_| path.to_path_buf(), |d| d.join(path));
        match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "cannot read `{}`: there is no such file: write the bundle's services there \
                 (see the README's \"The bundle file\"), or give another with --file",
                whole.display()
            ),
            _ => format!("cannot read `{}`: {e}", whole.display()),
        }
    })?;
    let config: Config = toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
        format!(
            "{}:{line}:{col}: {}",
            path.display(),
            e.message().trim_end()
        )
    })?;
    if config.services.is_empty() {
        return Err(format!(
            "`{}` defines no services: add one as a [services.NAME] table (see the README)",
            path.display()
        ));
    }
    // Checks across keys, placed as a parse error is.
    for (name, s) in &config.services {
        if let Err((why, at)) = restart_policy(name.as_str(), s) {
            let (line, col) = line_col(&text, at);
            return Err(format!("{}:{line}:{col}: {why}", path.display()));
        }
    }
    Ok(config)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_said_with_its_whole_path_and_what_to_do() {
        let dir = crate::config::test_dir("missing");
        let e = load(&dir.join("hitchserve.toml")).unwrap_err();
        assert!(
            e.contains(&format!("`{}/hitchserve.toml`", dir.display())) && e.contains("--file"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_without_services_is_an_error() {
        let dir = crate::config::test_dir("empty");
        let f = dir.join("hitchserve.toml");
        for text in ["", "[bundle]\nstartup_timeout = \"30s\"\n"] {
            std::fs::write(&f, text).unwrap();
            let e = load(&f).unwrap_err();
            assert!(e.contains("defines no services"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_line_and_column() {
        let dir = crate::config::test_dir("load");
        let f = dir.join("hitchserve.toml");
        std::fs::write(&f, "[services.App]\ncommand = [\"true\"]\nneeds = 3\n").unwrap();
        let e = load(&f).unwrap_err();
        assert!(e.contains("hitchserve.toml:3:9"), "{e}");
        std::fs::write(&f, "[services.App]\ncomand = [\"true\"]\n").unwrap();
        let e = load(&f).unwrap_err();
        assert!(e.contains(":2:1") && e.contains("comand"), "{e}");
        // Bad values, not only bad types, are placed.
        for (toml, place, words) in [
            (
                "[bundle]\nstartup_timeout = \"soon\"\n",
                ":2:19",
                "not a duration",
            ),
            (
                "[services.C]\nkind = \"cron\"\nevery = \"5 fortnights\"\n",
                ":3:9",
                "`5 fortnights` is not a duration: write a number and a unit",
            ),
            (
                "[services.D]\nkind = \"mysql\"\n",
                ":2:8",
                "unknown kind `mysql`",
            ),
            (
                "[services.A]\ncommand = [\"true\"]\nstop_signal = \"SIGFOO\"\n",
                ":3:15",
                "SIGFOO",
            ),
        ] {
            std::fs::write(&f, toml).unwrap();
            let e = load(&f).unwrap_err();
            assert!(e.contains(place) && e.contains(words), "{toml}: {e}");
        }
    }
}
