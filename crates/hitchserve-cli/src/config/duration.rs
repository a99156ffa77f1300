//! Durations, as the file and the command line write them: jiff's friendly format (`15s`,
//! `1h30m`, `5 minutes`) or a bare number of seconds, bounded to 100 years either way.
//!
//! Owns [`duration`] (timeouts and intervals: more than zero), [`signed_duration`] (time
//! travel: may point back), [`from_seconds`] (a number from a control request) and the
//! file's duration values. Invariant: every error names the text given and says what is
//! accepted.

use std::time::Duration;

use hitchserve::jiff::{self, SignedDuration, Span, SpanRelativeTo};

use super::text::Text;

/// A duration as written in the file: a string (`"15s"`), or a bare number of seconds.
/// Anything else (a boolean, an array, a date) is an error saying what is accepted (an
/// untagged enum said only "data did not match any variant").
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a duration: {ACCEPTED}")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        // As every string of the file: no NUL byte (see `Text`).
        Text::checked(v.to_owned()).map(|t| t.0).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

pub(super) fn checked_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let text = d.deserialize_any(DurationVisitor)?;
    duration(&text).map(Some).map_err(serde::de::Error::custom)
}

/// The longest duration accepted anywhere: past it, a timeout or an interval is a typo.
const LONGEST_DAYS: i64 = 36_500;

/// What a duration may look like, for error messages.
const ACCEPTED: &str = "a number and a unit, such as 500ms, 15s, 2m, 1h30m, 2d, 1w or \
                        \"5 minutes\" (a bare number is seconds)";

/// A timeout or an interval: more than zero, at most 100 years. `15s`, `500ms`, `2m`,
/// `1h30m`, `1.5h`, `2d`, `5 minutes`, or a bare number of seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    let d = signed_duration(text)?;
    if d.is_negative() || d.is_zero() {
        return Err(format!(
            "`{text}` is not a duration: it must be more than 0"
        ));
    }
    Duration::try_from(d).map_err(|e| format!("`{text}` is not a duration: {e}"))
}

/// A length of time that may point back (`-3h`, `3h ago`), as time travel takes; at most
/// 100 years either way.
pub fn signed_duration(text: &str) -> Result<SignedDuration, String> {
    let t = text.trim();
    let bad = |why: &str| format!("`{text}` is not a duration{why}: write {ACCEPTED}");
    // Jiff's friendly format wants a unit; ours has always taken plain seconds.
    let seconds;
    let t = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        seconds = format!("{t}s");
        seconds.as_str()
    } else {
        t
    };
    // Jiff's own words name units (years) and formats (ISO 8601) we don't take here.
    let too_long = || format!("`{text}` is too long: at most {LONGEST_DAYS}d (100 years)");
    let span: Span = t.parse().map_err(|e: jiff::Error| {
        // A number past what a span holds is still a length of time: a too long one.
        let e = e.to_string();
        match e.contains("not in the required range") || e.contains("number too big") {
            true => too_long(),
            false => bad(""),
        }
    })?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(bad(" (months and years have no fixed length)"));
    }
    let d = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| bad(&format!(" ({e})")))?;
    if d.abs() > SignedDuration::from_hours(24 * LONGEST_DAYS) {
        return Err(too_long());
    }
    Ok(d)
}

/// A number of seconds from a control request, held to [`signed_duration`]'s bounds.
pub fn from_seconds(secs: f64) -> Result<SignedDuration, String> {
    let longest = SignedDuration::from_hours(24 * LONGEST_DAYS);
    match SignedDuration::try_from_secs_f64(secs) {
        Ok(d) if d.abs() <= longest => Ok(d),
        _ => Err(format!(
            "{secs} s is not a usable length of time: at most {} s either way",
            longest.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(duration("1w").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(duration("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(duration("5 minutes").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("+30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(duration("5m3").is_err());
        let err = duration("3 fortnights").unwrap_err();
        assert!(
            err.contains("not a duration") && err.contains("15s"),
            "{err}"
        );
        // Past what a span holds (it was "not a duration"), and past our 100 years.
        for text in [
            "99999999d",
            "+99999999999d",
            "99999999999999999999s",
            "36501d",
        ] {
            let err = signed_duration(text).unwrap_err();
            assert!(err.contains("too long: at most 36500d"), "{text}: {err}");
        }
    }

    #[test]
    fn absurd_durations_are_errors_that_say_what_is_accepted() {
        for text in [
            "inf",
            "1e300",
            "",
            " ",
            "-5",
            "+",
            "+nan",
            "nan",
            "-3h",
            "0",
            "0s",
            "1 month",
            "2 years",
            "1.5d",
            "99999999999h",
            "100000d",
            "1..2",
            "10000000000000000000s",
        ] {
            let err = duration(text).unwrap_err();
            assert!(err.contains(&format!("`{text}`")), "{text:?}: {err}");
            assert!(
                err.contains("e.g.")
                    || err.contains("such as")
                    || err.contains("more than 0")
                    || err.contains("at most"),
                "{text:?}: {err}"
            );
        }
        // Time travel may go back, and no further than a timeout may.
        assert_eq!(
            signed_duration("-3h").unwrap(),
            SignedDuration::from_hours(-3)
        );
        assert_eq!(
            signed_duration("3h ago").unwrap(),
            SignedDuration::from_hours(-3)
        );
        for text in ["inf", "1e300", "", "-5", "+", "+nan", "-", "-100000d"] {
            assert!(signed_duration(text).is_err(), "{text:?}");
        }
        for secs in [f64::INFINITY, f64::NAN, -1e300, 1e300, 4e9] {
            assert!(from_seconds(secs).is_err(), "{secs}");
        }
        assert_eq!(
            from_seconds(-1.5).unwrap(),
            SignedDuration::from_millis(-1500)
        );
    }
}
