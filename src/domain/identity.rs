//! Who a connection or request acts as, and who owns a session.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A secret value whose `Debug` and `Display` never show it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    #[default]
    User,
    Device,
    Anonymous,
}

impl Role {
    /// The name used in the database, the config file and the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
            Self::Device => "device",
            Self::Anonymous => "anonymous",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "admin" => Ok(Self::Admin),
            "user" => Ok(Self::User),
            "device" => Ok(Self::Device),
            "anonymous" => Ok(Self::Anonymous),
            _ => Err(UnknownRole),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown role (expected admin, user, device or anonymous)")]
pub struct UnknownRole;

/// Who a connection or request acts as, once authenticated.
///
/// A user's `owned_devices` are read when it authenticates: an MQTT session
/// that is already open does not see devices created (or deleted) after its
/// CONNECT until it reconnects; REST requests see them at once.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user name (for a device: its id); `None` when anonymous.
    pub username: Option<String>,
    pub role: Role,
    /// The id of a user stored in the database (`None` for devices, config
    /// users and anonymous callers).
    pub user_id: Option<String>,
    /// The id of the device this is (role `Device` only).
    pub device_id: Option<String>,
    /// Ids of the devices this user owns, whose topics it may read and write.
    pub owned_devices: Vec<String>,
    /// The digest of the bearer token this identity signed in with, if it
    /// did: revoking that token closes what it opened.
    pub token: Option<Arc<str>>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self {
            username: None,
            role: Role::Anonymous,
            user_id: None,
            device_id: None,
            owned_devices: Vec::new(),
            token: None,
        }
    }

    /// A user stored in the database.
    pub fn user(user_id: String, username: String, role: Role, owned_devices: Vec<String>) -> Self {
        Self {
            username: Some(username),
            role,
            user_id: Some(user_id),
            device_id: None,
            owned_devices,
            token: None,
        }
    }

    /// A device stored in the database; it signs in with its id as user name.
    pub fn device(device_id: String) -> Self {
        Self {
            username: Some(device_id.clone()),
            role: Role::Device,
            user_id: None,
            device_id: Some(device_id),
            owned_devices: Vec::new(),
            token: None,
        }
    }

    /// A user from `[[auth.users]]`; one with role `device` is the device
    /// whose id is its user name.
    pub fn configured(username: String, role: Role) -> Self {
        Self {
            device_id: (role == Role::Device).then(|| username.clone()),
            username: Some(username),
            role,
            user_id: None,
            owned_devices: Vec::new(),
            token: None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn is_anonymous(&self) -> bool {
        self.role == Role::Anonymous
    }

    /// Whether `device_id` is one of this user's devices.
    pub fn owns_device(&self, device_id: &str) -> bool {
        self.owned_devices.iter().any(|d| d == device_id)
    }
}

/// Who owns a session: the identity behind the CONNECT that opened it. Two
/// connections are the same principal when they signed in as the same stored
/// user, the same device, or the same config user; every anonymous client is
/// one principal (anonymous sessions protect nothing from each other).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    /// As stored with a persistent session.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Read back from the store.
    pub fn from_stored(s: &str) -> Self {
        Self(s.into())
    }

    /// A user stored in the database, by id.
    pub fn user(id: &str) -> Self {
        Self(format!("user:{id}").into())
    }

    /// A device, by id.
    pub fn device(id: &str) -> Self {
        Self(format!("device:{id}").into())
    }

    /// What kind of principal this is (`user`, `device`, `config` or
    /// `anonymous`), for logs: never the id itself.
    pub fn kind(&self) -> &str {
        self.0.split_once(':').map_or(&*self.0, |(kind, _)| kind)
    }
}

impl Identity {
    /// The principal this identity acts as.
    pub fn principal(&self) -> Principal {
        if let Some(id) = &self.user_id {
            Principal::user(id)
        } else if let Some(id) = &self.device_id {
            Principal::device(id)
        } else if let Some(name) = &self.username {
            Principal(format!("config:{name}").into())
        } else {
            Principal("anonymous".into())
        }
    }
}
