//! User names, passwords, device names and kinds, parsed at the edge (REST
//! bodies, CLI arguments) so the rest of the code only sees valid ones.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name, password or kind was refused; the text is shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("username must be 3 to 64 characters long")]
    UsernameLength,
    #[error("username may contain only letters, digits, '_', '.' and '-'")]
    UsernameCharacters,
    #[error("password must be at least {} characters long", Password::MIN_CHARS)]
    PasswordTooShort,
    #[error("password must be at most {} bytes long", Password::MAX_BYTES)]
    PasswordTooLong,
    #[error("device name must be 1 to 100 characters long and not blank")]
    DeviceNameLength,
    #[error("device name must not contain control characters")]
    DeviceNameCharacters,
    #[error("device kind must be \"car\" or \"phone\"")]
    DeviceKind,
    #[error("visibility must be \"public\" or \"private\"")]
    Visibility,
}

/// A user name: 3–64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(s: impl Into<String>) -> Result<Self, AccountError> {
        let s = s.into();
        if !(3..=64).contains(&s.len()) {
            return Err(AccountError::UsernameLength);
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(AccountError::UsernameCharacters);
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new password: at least 8 characters, at most 1024 bytes (argon2 hashes
/// whatever it is given; the bound keeps a request from buying seconds of
/// CPU). Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_BYTES: usize = 1024;

    pub fn parse(s: impl Into<String>) -> Result<Self, AccountError> {
        let s = s.into();
        if s.chars().count() < Self::MIN_CHARS {
            return Err(AccountError::PasswordTooShort);
        }
        if s.len() > Self::MAX_BYTES {
            return Err(AccountError::PasswordTooLong);
        }
        Ok(Self(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

/// A device's display name: 1–100 characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DeviceName(String);

impl DeviceName {
    pub fn parse(s: impl Into<String>) -> Result<Self, AccountError> {
        let s = s.into();
        if s.trim().is_empty() || s.chars().count() > 100 {
            return Err(AccountError::DeviceNameLength);
        }
        if s.chars().any(char::is_control) {
            return Err(AccountError::DeviceNameCharacters);
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a device is: a car (an embedded MQTT client) or a phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Car,
    Phone,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Car => "car",
            Self::Phone => "phone",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceKind {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, AccountError> {
        match s {
            "car" => Ok(Self::Car),
            "phone" => Ok(Self::Phone),
            _ => Err(AccountError::DeviceKind),
        }
    }
}

/// Who sees a device's position on the shared map (`map/snapshot`,
/// `GET /api/v1/map`): everyone who may read the map, or only its owner and
/// admins (through `GET /api/v1/map/mine` and the device's own topics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
        }
    }

    /// The other one.
    pub fn flipped(self) -> Self {
        match self {
            Self::Public => Self::Private,
            Self::Private => Self::Public,
        }
    }
}

impl FromStr for Visibility {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, AccountError> {
        match s {
            "public" => Ok(Self::Public),
            "private" => Ok(Self::Private),
            _ => Err(AccountError::Visibility),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["ann", "Ann.B-c_9", &"x".repeat(64)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(Username::parse("ab"), Err(AccountError::UsernameLength));
        assert_eq!(Username::parse("x".repeat(65)), Err(AccountError::UsernameLength));
        for bad in ["a b", "ann/1", "ann#", "ann+", "änn", "ann\n"] {
            assert_eq!(Username::parse(bad), Err(AccountError::UsernameCharacters), "{bad:?}");
        }
    }

    #[test]
    fn passwords() {
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse("äöüäöüäö").is_ok(), "characters, not bytes");
        assert_eq!(Password::parse("1234567").unwrap_err(), AccountError::PasswordTooShort);
        assert_eq!(Password::parse("x".repeat(1025)).unwrap_err(), AccountError::PasswordTooLong);
        assert_eq!(format!("{:?}", Password::parse("hunter22").unwrap()), "\"[redacted]\"");
    }

    #[test]
    fn device_names_and_kinds() {
        assert!(DeviceName::parse("Anna's car").is_ok());
        assert!(DeviceName::parse("x".repeat(100)).is_ok());
        assert_eq!(DeviceName::parse(""), Err(AccountError::DeviceNameLength));
        assert_eq!(DeviceName::parse("   "), Err(AccountError::DeviceNameLength));
        assert_eq!(DeviceName::parse("x".repeat(101)), Err(AccountError::DeviceNameLength));
        assert_eq!(DeviceName::parse("a\u{7}b"), Err(AccountError::DeviceNameCharacters));
        assert_eq!("car".parse(), Ok(DeviceKind::Car));
        assert_eq!("phone".parse(), Ok(DeviceKind::Phone));
        assert_eq!("bike".parse::<DeviceKind>(), Err(AccountError::DeviceKind));
    }
}
