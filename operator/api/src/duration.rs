//! Durations as users write them (`500ms`, `30s`, `5m`, `1h30m`).
//!
//! The string is stored and shown exactly as written; the CRD's CEL rules
//! check its format and range on the API server, and [`GoDuration::parse`]
//! reads it with Go's `time.ParseDuration` semantics, the same as CEL's
//! `duration()` does, so both sides agree on what a value means.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use kube::core::{Message, Rule};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The format every duration field accepts: one or more `<number><unit>`
/// with units `ms`, `s`, `m` or `h`. Go accepts more (`ns`, `us`, signs), but
/// none of those make sense for these settings.
pub const FORMAT: &str = r"^([0-9]+([.][0-9]+)?(ms|s|m|h))+$";

/// A duration string as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoDuration(String);

/// Why a duration string could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not a duration like 500ms, 30s, 5m or 1h30m")]
pub struct ParseDurationError {
    value: String,
}

impl GoDuration {
    /// The string as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration this string denotes. Fails on anything the CRD's format
    /// rule would reject, so an object that bypassed validation (or an old
    /// stored object) cannot be misread.
    pub fn parse(&self) -> Result<Duration, ParseDurationError> {
        let error = || ParseDurationError {
            value: self.0.clone(),
        };
        if !matches_format(&self.0) {
            return Err(error());
        }
        let parsed = kube::core::Duration::from_str(&self.0).map_err(|_| error())?;
        Ok(parsed.into())
    }
}

impl From<&str> for GoDuration {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            // Bounds the cost of the CEL rules below.
            "maxLength": 32,
        })
    }
}

/// Hand-rolled equivalent of [`FORMAT`], so parsing needs no regex engine.
fn matches_format(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return false;
        }
        rest = &rest[int_len..];
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            if frac_len == 0 {
                return false;
            }
            rest = &after_dot[frac_len..];
        }
        rest = if let Some(r) = rest.strip_prefix("ms") {
            r
        } else if let Some(r) = rest.strip_prefix(['s', 'm', 'h']) {
            r
        } else {
            return false;
        };
    }
    true
}

/// The CEL rule that rejects a malformed duration in field `field`.
pub fn format_rule(field: &str) -> Rule {
    Rule::new(format!("self.matches('{FORMAT}')")).message(Message::Expression(format!(
        "'{field} must be a duration like 500ms, 30s, 5m or 1h30m, not \"' + self + '\"'"
    )))
}

/// The CEL rule that rejects a well-formed duration outside `[min, max]`.
/// It passes malformed values, which [`format_rule`] reports instead, so the
/// user sees one clear message per mistake.
pub fn range_rule(field: &str, min: &str, max: &str) -> Rule {
    Rule::new(format!(
        "!self.matches('{FORMAT}') || (duration(self) >= duration('{min}') && duration(self) <= duration('{max}'))"
    ))
    .message(Message::Expression(format!(
        "'{field} must be between {min} and {max}, not ' + self"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        for (text, millis) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1.5s", 1_500),
            ("2h0m3s", 7_203_000),
        ] {
            let parsed = GoDuration::from(text).parse().expect(text);
            assert_eq!(parsed, Duration::from_millis(millis), "{text}");
        }
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for text in [
            "", "5", "m", "-5s", "5 s", "1d", "10us", "1.s", ".5s", "5sm",
        ] {
            assert!(GoDuration::from(text).parse().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn keeps_the_string_as_written() {
        let d: GoDuration = serde_json::from_str("\"90s\"").expect("deserialize");
        assert_eq!(serde_json::to_string(&d).expect("serialize"), "\"90s\"");
        assert_eq!(d.to_string(), "90s");
    }
}
