//! Request bodies without a server, for the fuzz target in `fuzz/`: each is
//! decoded as actix-web's `Json` extractor decodes it (`serde_json`), mapped
//! through the same error handler, and checked as its handler checks it
//! before any database call. A failure must be a 400 or 422 problem+json.

use actix_web::ResponseError;
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ntex::util::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::devices::NewDevice;
use super::sessions::SignIn;
use super::users::NewUser;
use crate::broker::PublishHook;
use crate::domain::{Message, QoS};
use crate::domain::{TopicLimits, TopicName};
use crate::http::errors::{self, ApiError, PROBLEM_JSON};
use crate::http::payload::payload_json;
use crate::locations::{HistoryTopics, LocationHook};

/// Which request the body belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `POST /api/v1/users`
    NewUser,
    /// `POST /api/v1/devices`
    NewDevice,
    /// `POST /api/v1/sessions`
    SignIn,
    /// `PUT`/`POST /api/v1/topics/devices/{id}/location`, then `GET` it back.
    LocationPublish,
}

/// Check one body; `Ok` when its handler would go on to the database or broker.
pub fn check(kind: Body, body: &[u8]) -> Result<(), ApiError> {
    let outcome = match kind {
        Body::NewUser => json::<NewUser>(body).and_then(|u| {
            u.role()?;
            u.credentials().map(drop)
        }),
        Body::NewDevice => json::<NewDevice>(body).and_then(|d| d.parse().map(drop)),
        Body::SignIn => json::<SignIn>(body).map(drop),
        Body::LocationPublish => location_publish(body),
    };
    if let Err(e) = &outcome {
        assert_is_client_problem(e);
    }
    outcome
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let err = errors::json_error(JsonPayloadError::Deserialize(e));
        let api = err.as_error::<ApiError>().expect("the JSON error handler answers with ApiError");
        // ApiError is not Clone; rebuild it from what the client sees.
        match api.status_code() {
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::UnprocessableEntity(api.to_string()),
            StatusCode::BAD_REQUEST => ApiError::BadRequest(api.to_string()),
            other => panic!("a JSON body error answered {other}"),
        }
    })
}

/// The publish hook refuses or accepts the payload as for MQTT; an accepted
/// one reads back as the JSON it was.
fn location_publish(body: &[u8]) -> Result<(), ApiError> {
    let limits = TopicLimits::default();
    let topic = TopicName::parse("devices/fuzz/location", limits).expect("a valid topic");
    let history = HistoryTopics::parse(&[], limits).expect("no filters");
    let hook = LocationHook::new(history, Default::default(), Default::default());
    let msg = Message::new(topic, Bytes::copy_from_slice(body), QoS::AtLeastOnce, false);
    hook.inspect(&msg).map_err(ApiError::from)?;
    let (value, binary) = payload_json(body);
    assert!(!binary, "an accepted location is text");
    let original: Value = serde_json::from_slice(body).expect("an accepted location is JSON");
    assert_eq!(value, original);
    Ok(())
}

fn assert_is_client_problem(e: &ApiError) {
    let status = e.status_code();
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
        "a bad body answered {status}: {e}"
    );
    let response = e.error_response();
    assert_eq!(
        response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(PROBLEM_JSON.as_bytes())
    );
    assert!(!e.problem().detail.is_empty());
}

/// Any payload reads back through `GET` as JSON, text or base64 of itself.
pub fn payload_reads_back(payload: &[u8]) {
    match payload_json(payload) {
        (Value::String(b64), true) => {
            assert_eq!(STANDARD.decode(b64).expect("base64"), payload);
        }
        (Value::String(text), false) if serde_json::from_slice::<Value>(payload).is_err() => {
            assert_eq!(text.as_bytes(), payload);
        }
        (value, false) => {
            assert_eq!(Some(&value), serde_json::from_slice::<Value>(payload).ok().as_ref());
        }
        (other, true) => panic!("binary payload shown as {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_bodies_pass_and_bad_ones_are_client_problems() {
        let sign_in = br#"{"username":"ann","password":"correct horse battery"}"#;
        assert!(check(Body::SignIn, sign_in).is_ok());
        assert!(check(Body::NewDevice, br#"{"name":"Golf","kind":"car"}"#).is_ok());
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        let location = format!(
            r#"{{"type":"Feature","geometry":{{"type":"Point","coordinates":[13.4,52.5]}},"properties":{{"ts":{now_ms}}}}}"#
        );
        assert!(check(Body::LocationPublish, location.as_bytes()).is_ok());
        // `check` itself asserts every refusal is a 400 or 422 problem+json.
        assert!(check(Body::SignIn, b"{").is_err());
        assert!(check(Body::NewDevice, br#"{"name":"Golf","kind":"boat"}"#).is_err());
        assert!(check(Body::LocationPublish, b"\xff\x00").is_err());
    }

    #[test]
    fn payloads_read_back_as_json_text_or_base64() {
        for payload in [&br#"{"a":1}"#[..], b"plain text", b"\xff\xfe\x00"] {
            payload_reads_back(payload);
        }
    }
}
