//! Picking a JSON log line: [`JsonMatch`], `field=value` or `field`, as the file's
//! `ready.json` and `logs --until-json` write it.
//!
//! Owns the syntax and the match, not the waiting (the library's tails). Invariant: a
//! match always names a field; a dotted path has no empty step.

/// `field=value` (the field, a dotted path or a JSON pointer, equals the value: a string,
/// or any JSON) or just `field` (it is present): how the file and `logs --until-json` pick
/// a JSON line.
pub struct JsonMatch {
    pointer: String,
    want: Option<String>,
}

impl JsonMatch {
    pub fn parse(expr: &str) -> Result<JsonMatch, String> {
        let (field, want) = match expr.split_once('=') {
            Some((f, v)) => (f.trim(), Some(v.trim().to_owned())),
            None => (expr.trim(), None),
        };
        // A pointer may name any key; a dotted path can't have an empty step.
        let usable = if field.starts_with('/') {
            true
        } else {
            !field.is_empty() && field.split('.').all(|step| !step.is_empty())
        };
        if !usable {
            return Err(format!(
                "`{expr}` is not a JSON match: write `field=value` or `field`, where the field \
                 is a dotted path (`user.name`) or a JSON pointer (`/user/name`)"
            ));
        }
        Ok(JsonMatch {
            pointer: pointer(field),
            want,
        })
    }

    pub fn matches(&self, v: &serde_json::Value) -> bool {
        match (&self.want, v.pointer(&self.pointer)) {
            (None, found) => found.is_some(),
            // `event=tick`, or the string as JSON writes it: `event="tick"`.
            (Some(want), Some(serde_json::Value::String(s))) => {
                s == want
                    || serde_json::from_str::<serde_json::Value>(want)
                        .is_ok_and(|w| w.as_str() == Some(s))
            }
            (Some(want), Some(other)) => {
                serde_json::from_str::<serde_json::Value>(want).is_ok_and(|w| w == *other)
            }
            (Some(_), None) => false,
        }
    }
}

/// `a.b` or `/a/b` as a JSON pointer (a dotted path's steps escaped as a pointer's are:
/// a key may hold `/` or `~`).
pub fn pointer(field: &str) -> String {
    if field.starts_with('/') {
        field.to_owned()
    } else {
        field
            .split('.')
            .map(|step| format!("/{}", step.replace('~', "~0").replace('/', "~1")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_value_matches_bare_or_quoted_and_keys_may_hold_slashes() {
        let v: serde_json::Value =
            serde_json::json!({"event": "tick", "n": 3, "a/b": {"c~d": true}});
        for expr in [
            "event=tick",
            "event=\"tick\"",
            "n=3",
            "a/b.c~d=true",
            "/a~1b/c~0d",
        ] {
            assert!(JsonMatch::parse(expr).unwrap().matches(&v), "{expr}");
        }
        for expr in ["event=tock", "event=\"tock\"", "n=\"4\"", "a/b.c~d=false"] {
            assert!(!JsonMatch::parse(expr).unwrap().matches(&v), "{expr}");
        }
    }

    #[test]
    fn json_matches_need_a_field() {
        for bad in ["", "=", "=x", "a..b", ".a", "a.", "  "] {
            let err = JsonMatch::parse(bad).err().unwrap_or_default();
            assert!(err.contains("not a JSON match"), "{bad:?}: {err}");
        }
        let m = JsonMatch::parse("user.name=ann").unwrap();
        assert!(m.matches(&serde_json::json!({"user": {"name": "ann"}})));
        assert!(
            JsonMatch::parse("/a/").is_ok(),
            "a pointer may name an empty key"
        );
    }
}
