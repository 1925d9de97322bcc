//! `Secret`: a string that must never be printed.
//!
//! API tokens and webhook secrets travel through the program as `Secret`, whose `Debug` and
//! `Display` print `***`. The only way to the value is [`Secret::expose`], which is called where
//! the value is put on the wire (an `Authorization` header, an HMAC key) and nowhere else.

use std::fmt;

/// A secret value. Deliberately not `Serialize`, so it cannot end up in a state file or a log by
/// accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself. Call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A URL that may carry a secret (a chat bot key in its path or query). `Debug` and `Display`
/// show only the scheme and host.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(url::Url);

impl SecretUrl {
    pub fn new(url: url::Url) -> Self {
        SecretUrl(url)
    }

    /// The full URL. Call only where the request is built.
    pub fn expose(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", crate::redact::url(self.0.as_str()))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::redact::url(self.0.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("pat_supersecret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "pat_supersecret");
    }

    #[test]
    fn secret_url_shows_only_scheme_and_host() {
        let u = url::Url::parse("https://oapi.dingtalk.com/robot/send?access_token=abc").unwrap();
        let s = SecretUrl::new(u);
        assert_eq!(format!("{s}"), "https://oapi.dingtalk.com");
        assert!(!format!("{s:?}").contains("abc"));
    }
}
