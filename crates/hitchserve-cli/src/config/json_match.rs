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
            (Some(want), Some(serde_json::Value::String(s))) => s == want,
            (Some(want), Some(other)) => {
                serde_json::from_str::<serde_json::Value>(want).is_ok_and(|w| w == *other)
            }
            (Some(_), None) => false,
        }
    }
}

/// `a.b` or `/a/b` as a JSON pointer.
pub fn pointer(field: &str) -> String {
    if field.starts_with('/') {
        field.to_owned()
    } else {
        format!("/{}", field.replace('.', "/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
