//! The one definition of a user id, shared by token verification, the publish API and routing.
//!
//! A user id becomes part of a Redis channel name (`notifications:{user}`) and of log fields, so
//! it must be 1 to [`MAX_USER_ID_BYTES`] bytes of UTF-8 without whitespace or control
//! characters. Every place that accepts a user id from outside goes through [`UserId::new`].

use std::{fmt, ops::Deref};

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Why a string is not a user id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserIdError {
    /// The string is empty.
    Empty,
    /// The string is longer than [`MAX_USER_ID_BYTES`].
    TooLong,
    /// The string holds whitespace or a control character.
    BadCharacter,
}

impl UserIdError {
    /// The broken rule, as the end of a sentence ("invalid user id: <reason>").
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Empty => "must not be empty",
            Self::TooLong => "must be at most 256 bytes",
            Self::BadCharacter => "must not contain whitespace or control characters",
        }
    }
}

impl fmt::Display for UserIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for UserIdError {}

/// A valid user id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Box<str>);

impl UserId {
    /// Checks `id` against the rules without allocating.
    ///
    /// # Errors
    ///
    /// The first rule `id` breaks.
    pub fn check(id: &str) -> Result<(), UserIdError> {
        if id.is_empty() {
            Err(UserIdError::Empty)
        } else if id.len() > MAX_USER_ID_BYTES {
            Err(UserIdError::TooLong)
        } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(UserIdError::BadCharacter)
        } else {
            Ok(())
        }
    }

    /// A user id from a string that follows the rules.
    ///
    /// # Errors
    ///
    /// The first rule `id` breaks.
    pub fn new(id: impl Into<Box<str>>) -> Result<Self, UserIdError> {
        let id = id.into();
        Self::check(&id).map(|()| Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string slice.
    pub fn into_boxed_str(self) -> Box<str> {
        self.0
    }
}

impl Deref for UserId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for UserId {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for UserId {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses_by_the_rules() {
        assert_eq!(UserId::new("alice").unwrap().as_str(), "alice");
        assert!(UserId::new("é".repeat(MAX_USER_ID_BYTES / 2)).is_ok());
        assert_eq!(
            MAX_USER_ID_BYTES.to_string(),
            "256",
            "the TooLong reason names 256"
        );
        assert_eq!(UserId::new(""), Err(UserIdError::Empty));
        assert_eq!(
            UserId::new("x".repeat(MAX_USER_ID_BYTES + 1)),
            Err(UserIdError::TooLong)
        );
        for bad in ["a b", "a\tb", "a\u{0}", "a\u{85}", "a\u{2003}b"] {
            assert_eq!(UserId::new(bad), Err(UserIdError::BadCharacter), "{bad:?}");
        }
    }
}
