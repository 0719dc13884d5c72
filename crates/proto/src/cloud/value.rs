//! Cloud variable values and the per-profile rules for them.

use std::fmt;

use thiserror::Error;

/// Which value rules apply.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ValueProfile {
    /// scratch.mit.edu: digits only (as a string, or a number literal made of digits).
    Scratch,
    /// TurboWarp's cloud-server: any finite number, or a decimal string
    /// (optional `-`, digits, at most one `.`).
    #[default]
    #[serde(alias = "tw")]
    TurboWarp,
}

impl ValueProfile {
    /// The default maximum value length for this profile, in characters.
    pub const fn default_max_len(self) -> usize {
        match self {
            ValueProfile::Scratch => 256,
            ValueProfile::TurboWarp => 100_000,
        }
    }
}

/// A cloud variable's value, keeping its JSON type.
///
/// Numbers are kept as the literal that was received (after validation), so
/// `1.0` is forwarded as `1.0` and a 300-digit integer loses no precision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CloudValue {
    /// A JSON number, held as its literal text.
    Number(String),
    /// A JSON string (unescaped).
    String(String),
}

impl CloudValue {
    /// The JSON fragment for this value (`42` or `"42"`).
    pub fn to_json(&self) -> String {
        match self {
            CloudValue::Number(lit) => lit.clone(),
            CloudValue::String(s) => json_string(s),
        }
    }

    /// Append the JSON fragment to `out`.
    pub fn write_json(&self, out: &mut String) {
        match self {
            CloudValue::Number(lit) => out.push_str(lit),
            CloudValue::String(s) => out.push_str(&json_string(s)),
        }
    }

    /// The text of the value (a number's literal, or the string).
    pub fn as_str(&self) -> &str {
        match self {
            CloudValue::Number(s) | CloudValue::String(s) => s,
        }
    }

    /// Parse a JSON fragment (a number literal or a string) into a value.
    /// Anything else (`true`, `null`, arrays, objects, invalid JSON) is refused.
    pub fn from_json(raw: &str) -> Result<CloudValue, ValueError> {
        let raw = raw.trim();
        match raw.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(raw)
                .map(CloudValue::String)
                .map_err(|_| ValueError::NotNumberOrString),
            Some(b'-' | b'0'..=b'9') => {
                // Validate it is one JSON number and nothing else.
                match serde_json::from_str::<serde_json::Number>(raw) {
                    Ok(_) => Ok(CloudValue::Number(raw.to_owned())),
                    Err(_) => Err(ValueError::NotNumberOrString),
                }
            }
            _ => Err(ValueError::NotNumberOrString),
        }
    }

    /// Check this value against a profile and a length limit (in characters).
    pub fn validate(&self, profile: ValueProfile, max_len: usize) -> Result<(), ValueError> {
        let text = self.as_str();
        let len = text.len(); // every accepted value is ASCII; a non-ASCII one fails below anyway
        if len > max_len {
            return Err(ValueError::TooLong { len, max: max_len });
        }
        match (profile, self) {
            (ValueProfile::Scratch, _) => {
                if text.bytes().all(|b| b.is_ascii_digit()) {
                    if matches!(self, CloudValue::Number(_)) && text.is_empty() {
                        return Err(ValueError::NotANumber(text.to_owned()));
                    }
                    Ok(())
                } else {
                    Err(ValueError::NotDigits(text.to_owned()))
                }
            }
            (ValueProfile::TurboWarp, CloudValue::Number(lit)) => match lit.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(()),
                _ => Err(ValueError::NotFinite(lit.clone())),
            },
            (ValueProfile::TurboWarp, CloudValue::String(s)) => {
                if is_turbowarp_numeric(s) {
                    Ok(())
                } else {
                    Err(ValueError::NotANumber(s.clone()))
                }
            }
        }
    }
}

impl fmt::Display for CloudValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<i64> for CloudValue {
    fn from(v: i64) -> Self {
        CloudValue::Number(v.to_string())
    }
}

impl From<u64> for CloudValue {
    fn from(v: u64) -> Self {
        CloudValue::Number(v.to_string())
    }
}

impl From<i32> for CloudValue {
    fn from(v: i32) -> Self {
        CloudValue::Number(v.to_string())
    }
}

impl From<u32> for CloudValue {
    fn from(v: u32) -> Self {
        CloudValue::Number(v.to_string())
    }
}

impl From<&str> for CloudValue {
    fn from(v: &str) -> Self {
        CloudValue::String(v.to_owned())
    }
}

impl From<String> for CloudValue {
    fn from(v: String) -> Self {
        CloudValue::String(v)
    }
}

/// TurboWarp's string rule (`src/validators.js`): `""` is valid; otherwise an
/// optional leading `-`, then digits with at most one `.`; `"-"` and `"."`
/// alone are invalid (`"-."`, `".5"`, `"5."` are accepted, as upstream does).
fn is_turbowarp_numeric(s: &str) -> bool {
    if s == "-" || s == "." {
        return false;
    }
    let body = s.strip_prefix('-').unwrap_or(s);
    let mut seen_dot = false;
    for b in body.bytes() {
        match b {
            b'0'..=b'9' => {}
            b'.' if !seen_dot => seen_dot = true,
            _ => return false,
        }
    }
    true
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    /// `true`, `null`, an array, an object or invalid JSON.
    #[error("a cloud value must be a number or a string")]
    NotNumberOrString,
    /// Longer than the profile's limit.
    #[error("value is {len} characters long, the limit is {max}")]
    TooLong {
        /// Length of the refused value.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// Scratch profile: something other than ASCII digits.
    #[error("value {0:?} is not all digits (Scratch allows only 0-9)")]
    NotDigits(String),
    /// TurboWarp profile: a string that is not a decimal number.
    #[error("value {0:?} is not a decimal number")]
    NotANumber(String),
    /// A number literal that overflows to infinity.
    #[error("value {0} is not a finite number")]
    NotFinite(String),
}

/// Encode `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    // serde_json never fails on a &str.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> CloudValue {
        CloudValue::String(v.into())
    }
    fn n(v: &str) -> CloudValue {
        CloudValue::Number(v.into())
    }

    #[test]
    fn turbowarp_accepts_decimal_strings_and_finite_numbers() {
        for ok in ["", "0", "-1", "1.5", "-.", ".5", "5.", "0123"] {
            assert!(
                s(ok).validate(ValueProfile::TurboWarp, 100_000).is_ok(),
                "{ok:?}"
            );
        }
        for ok in ["1", "-1.5", "1e5", "1.0"] {
            assert!(
                n(ok).validate(ValueProfile::TurboWarp, 100_000).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn turbowarp_rejects_what_upstream_rejects() {
        for bad in [
            "1e5", ".", "-", " 1", "1 ", "NaN", "Infinity", "true", "1..2", "--1", "1-",
        ] {
            assert!(
                s(bad).validate(ValueProfile::TurboWarp, 100_000).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            n("1e400").validate(ValueProfile::TurboWarp, 100_000),
            Err(ValueError::NotFinite("1e400".into()))
        );
    }

    #[test]
    fn scratch_accepts_only_digits() {
        assert!(s("0123").validate(ValueProfile::Scratch, 256).is_ok());
        assert!(s("").validate(ValueProfile::Scratch, 256).is_ok());
        assert!(n("42").validate(ValueProfile::Scratch, 256).is_ok());
        for bad in [n("-1"), n("1.5"), n("1e5"), s(" 1"), s("-1"), s("1.5")] {
            assert!(bad.validate(ValueProfile::Scratch, 256).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn length_limit_is_inclusive() {
        assert!(s(&"1".repeat(256))
            .validate(ValueProfile::Scratch, 256)
            .is_ok());
        assert_eq!(
            s(&"1".repeat(257)).validate(ValueProfile::Scratch, 256),
            Err(ValueError::TooLong { len: 257, max: 256 })
        );
    }

    #[test]
    fn from_json_keeps_type_and_literal() {
        assert_eq!(CloudValue::from_json("1.0"), Ok(n("1.0")));
        assert_eq!(CloudValue::from_json("\"12\""), Ok(s("12")));
        assert_eq!(CloudValue::from_json("\"\\u0031\""), Ok(s("1")));
        for bad in [
            "true", "null", "[1]", "{}", "Infinity", "NaN", "-", "1 2", "01x",
        ] {
            assert_eq!(
                CloudValue::from_json(bad),
                Err(ValueError::NotNumberOrString),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_output_round_trips() {
        assert_eq!(n("42").to_json(), "42");
        assert_eq!(s("42").to_json(), "\"42\"");
        assert_eq!(s("a\"b").to_json(), "\"a\\\"b\"");
    }
}
