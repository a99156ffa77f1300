//! Strings from the file, checked as they are parsed: [`Text`] (any string the file gives)
//! and [`EnvKey`] (an environment variable's name).
//!
//! Owns only the string types and their checks, not what a string means (the schema's).
//! Invariant: no `Text` holds a NUL byte and no `EnvKey` is empty or holds a `=`, so that
//! the OS can't refuse one once other services have started.

use std::path::PathBuf;

use serde::Deserialize;

// Values are checked while parsing, so that a bad one is reported at its line and column,
// and before anything starts.

/// A string from the file. None may hold a NUL byte: no command line, path or environment
/// can carry one, and the OS would refuse it only once other services had started.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(pub(super) String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Text {
    /// `text` as a `Text`, or why it can't be one (a NUL byte).
    pub(super) fn checked(text: String) -> Result<Text, String> {
        if text.contains('\0') {
            return Err(format!(
                "{:?} holds a NUL byte (\\u0000), which no command, path or environment \
                 variable can carry: remove it",
                text
            ));
        }
        Ok(Text(text))
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        Text::checked(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An environment variable's name: not empty, no `=` (it would end the name), no NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvKey(pub(super) Text);

impl<'de> Deserialize<'de> for EnvKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EnvKey, D::Error> {
        let key = Text::deserialize(d)?;
        if key.0.is_empty() || key.0.contains('=') {
            return Err(serde::de::Error::custom(format!(
                "`{key}` can't be an environment variable's name: a name is not empty and \
                 has no `=`"
            )));
        }
        Ok(EnvKey(key))
    }
}

pub fn strings(texts: &[Text]) -> Vec<String> {
    texts.iter().map(|t| t.0.clone()).collect()
}
