//! Variable names and usernames.

use thiserror::Error;

/// The cloud prefix Scratch puts in front of every cloud variable: U+2601 U+0020.
pub const CLOUD_PREFIX: &str = "\u{2601} ";
/// The prefix cloud-server also accepts: `":cloud: "`.
pub const CLOUD_PREFIX_ALT: &str = ":cloud: ";
/// The emoji presentation form the seed docs show: U+2601 U+FE0F U+0020.
/// Accepted from users of our client, never sent.
pub const CLOUD_PREFIX_EMOJI: &str = "\u{2601}\u{fe0f} ";

/// Why a variable name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name does not start with `"☁ "` or `":cloud: "`.
    #[error("variable name {0:?} does not start with the cloud prefix \"☁ \"")]
    MissingPrefix(String),
    /// Nothing follows the prefix.
    #[error("variable name is only the cloud prefix")]
    Empty,
    /// Longer than the limit (in characters).
    #[error("variable name is {len} characters long, the limit is {max}")]
    TooLong {
        /// Length of the refused name, in characters.
        len: usize,
        /// The configured limit.
        max: usize,
    },
}

/// Check a variable name as the server does: at most `max_len` characters, an
/// accepted prefix, and something after it. Names are never normalised.
pub fn validate_name(name: &str, max_len: usize) -> Result<(), NameError> {
    let len = name.chars().count();
    if len > max_len {
        return Err(NameError::TooLong { len, max: max_len });
    }
    let rest = name
        .strip_prefix(CLOUD_PREFIX)
        .or_else(|| name.strip_prefix(CLOUD_PREFIX_ALT))
        .ok_or_else(|| NameError::MissingPrefix(name.to_owned()))?;
    if rest.is_empty() {
        return Err(NameError::Empty);
    }
    Ok(())
}

/// The name without its cloud prefix (any accepted form), for display and for
/// client-side lookups. A name without a prefix is returned unchanged.
pub fn bare_name(name: &str) -> &str {
    name.strip_prefix(CLOUD_PREFIX_EMOJI)
        .or_else(|| name.strip_prefix(CLOUD_PREFIX))
        .or_else(|| name.strip_prefix(CLOUD_PREFIX_ALT))
        .unwrap_or(name)
}

/// Normalise user input to the wire form: strip a leading `"☁ "` or `"☁️ "`
/// (or `":cloud: "`) and put `"☁ "` in front.
///
/// ```
/// use nimbus_proto::cloud::normalize_name;
/// assert_eq!(normalize_name("High score"), "☁ High score");
/// assert_eq!(normalize_name("☁ High score"), "☁ High score");
/// assert_eq!(normalize_name("☁\u{fe0f} High score"), "☁ High score");
/// ```
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(CLOUD_PREFIX.len() + name.len());
    out.push_str(CLOUD_PREFIX);
    out.push_str(bare_name(name));
    out
}

/// Why a username was refused (close code 4002).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UsernameError {
    /// Missing, not a string, or empty.
    #[error("username is missing or empty")]
    Missing,
    /// More than the limit.
    #[error("username is {len} characters long, the limit is {max}")]
    TooLong {
        /// Length of the refused name.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("username contains {0:?}; only letters, digits, '_' and '-' are allowed")]
    BadCharacter(char),
}

/// Check a username: 1..=`max_len` characters from `[A-Za-z0-9_-]`.
pub fn validate_username(user: &str, max_len: usize) -> Result<(), UsernameError> {
    if user.is_empty() {
        return Err(UsernameError::Missing);
    }
    if let Some(c) = user
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(UsernameError::BadCharacter(c));
    }
    // All ASCII from here, so bytes == characters.
    if user.len() > max_len {
        return Err(UsernameError::TooLong {
            len: user.len(),
            max: max_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_a_prefix_and_a_body() {
        assert!(validate_name("☁ a", 1024).is_ok());
        assert!(validate_name(":cloud: a", 1024).is_ok());
        assert_eq!(validate_name("☁ ", 1024), Err(NameError::Empty));
        assert!(matches!(
            validate_name("a", 1024),
            Err(NameError::MissingPrefix(_))
        ));
        assert!(matches!(
            validate_name("☁a", 1024),
            Err(NameError::MissingPrefix(_))
        ));
    }

    #[test]
    fn name_length_counts_characters_not_bytes() {
        let name = format!("☁ {}", "é".repeat(8));
        assert!(validate_name(&name, 10).is_ok());
        assert_eq!(
            validate_name(&name, 9),
            Err(NameError::TooLong { len: 10, max: 9 })
        );
    }

    #[test]
    fn normalize_strips_every_prefix_form() {
        assert_eq!(normalize_name("x"), "☁ x");
        assert_eq!(normalize_name("☁ x"), "☁ x");
        assert_eq!(normalize_name("☁️ x"), "☁ x");
        assert_eq!(normalize_name(":cloud: x"), "☁ x");
        assert_eq!(bare_name("☁ x"), "x");
        assert_eq!(bare_name("x"), "x");
    }

    #[test]
    fn usernames_follow_the_turbowarp_charset() {
        assert!(validate_username("player1234", 20).is_ok());
        assert!(validate_username("a_b-C", 20).is_ok());
        assert_eq!(validate_username("", 20), Err(UsernameError::Missing));
        assert_eq!(
            validate_username("a b", 20),
            Err(UsernameError::BadCharacter(' '))
        );
        assert_eq!(
            validate_username("ä", 20),
            Err(UsernameError::BadCharacter('ä'))
        );
        assert_eq!(
            validate_username(&"a".repeat(21), 20),
            Err(UsernameError::TooLong { len: 21, max: 20 })
        );
    }
}
