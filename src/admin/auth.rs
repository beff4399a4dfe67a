//! HTTP Basic authentication for the admin endpoint, against bcrypt hashes
//! from the site file (`user`) and an htpasswd file (`users_file`), and the
//! short memory of credentials already verified that spares a scraper a
//! bcrypt check per call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use http::HeaderMap;
use ring::hmac;

pub use crate::passwords::{BcryptHash, HashError, MAX_COST};

#[derive(Debug, Clone, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// A hash of a password nobody has, at the users' cost, checked when
    /// the name is unknown so that it takes as long as a wrong password.
    decoy: String,
}

impl Users {
    /// The users the site file's admin block names (checked when it was
    /// read); a later entry for a name replaces an earlier one.
    pub fn load(users: &[(String, BcryptHash)]) -> Result<Users, String> {
        let hashes: HashMap<String, String> = users
            .iter()
            .map(|(name, hash)| (name.clone(), hash.as_str().to_string()))
            .collect();
        let cost = users
            .first()
            .map_or(bcrypt::DEFAULT_COST, |(_, h)| h.cost());
        let decoy = match hashes.is_empty() {
            true => String::new(),
            false => bcrypt::hash("not a password anyone has", cost).map_err(|e| e.to_string())?,
        };
        Ok(Users { hashes, decoy })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// What the request's credentials say. Slow by design (bcrypt) when
    /// it carries any: call it off the async threads.
    pub fn login(&self, headers: &HeaderMap) -> Login {
        if !headers.contains_key(http::header::AUTHORIZATION) {
            return Login::Anonymous;
        }
        let Some((name, password)) = basic_credentials(headers) else {
            return Login::Refused;
        };
        let (hash, known) = match self.hashes.get(&name) {
            Some(hash) => (hash.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        // bcrypt compares in constant time; the decoy keeps the time the
        // same for unknown names.
        match bcrypt::verify(password, hash).unwrap_or(false) && known {
            true => Login::User(name),
            false => Login::Refused,
        }
    }
}

/// How a request to the admin endpoint stands with its users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// No credentials at all: the first request of every Basic client,
    /// answered with the challenge. No password was tried, so it is not a
    /// failed login.
    Anonymous,
    /// Credentials that are malformed, or name no user with that password.
    Refused,
    User(String),
}

/// How long verified credentials are remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(5 * 60);
/// Credentials remembered at most.
const MAX_REMEMBERED: usize = 1024;

/// `Authorization` values that passed a bcrypt check lately, and whose
/// user they named. Only a keyed hash of each value is kept (HMAC-SHA-256
/// under a key made at random for this set): neither the password nor
/// anything that could be checked against guesses offline. One belongs to
/// one set of users, so a reload that changes them starts an empty one.
pub struct CredentialCache {
    key: hmac::Key,
    remembered: Mutex<HashMap<Tag, Remembered>>,
}

type Tag = [u8; 32];

struct Remembered {
    user: String,
    until: Instant,
}

impl CredentialCache {
    pub fn new() -> Result<Self, String> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| "the system's random number generator failed".to_string())?;
        Ok(CredentialCache {
            key,
            remembered: Mutex::new(HashMap::new()),
        })
    }

    fn tag(&self, authorization: &[u8]) -> Tag {
        let mut tag = [0u8; 32];
        tag.copy_from_slice(hmac::sign(&self.key, authorization).as_ref());
        tag
    }

    /// The user these exact credentials were verified for, if lately.
    pub fn user(&self, authorization: &[u8]) -> Option<String> {
        let tag = self.tag(authorization);
        let mut remembered = self.lock();
        match remembered.get(&tag) {
            Some(r) if r.until > Instant::now() => Some(r.user.clone()),
            Some(_) => {
                remembered.remove(&tag);
                None
            }
            None => None,
        }
    }

    pub fn remember(&self, authorization: &[u8], user: &str) {
        let tag = self.tag(authorization);
        let now = Instant::now();
        let mut remembered = self.lock();
        if remembered.len() >= MAX_REMEMBERED && !remembered.contains_key(&tag) {
            remembered.retain(|_, r| r.until > now);
            if remembered.len() >= MAX_REMEMBERED {
                let soonest = remembered
                    .iter()
                    .min_by_key(|(_, r)| r.until)
                    .map(|(t, _)| *t);
                if let Some(t) = soonest {
                    remembered.remove(&t);
                }
            }
        }
        remembered.insert(
            tag,
            Remembered {
                user: user.to_string(),
                until: now + REMEMBER_FOR,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tag, Remembered>> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert("authorization", format!("Basic {token}").parse().unwrap());
        h
    }

    #[test]
    fn checks_credentials() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let hash = BcryptHash::parse(&hash).unwrap();
        let users = Users::load(&[("ops".into(), hash)]).unwrap();
        assert_eq!(
            users.login(&basic("ops", "s3cret")),
            Login::User("ops".into())
        );
        assert_eq!(users.login(&basic("ops", "wrong")), Login::Refused);
        assert_eq!(users.login(&basic("eve", "s3cret")), Login::Refused);
        assert_eq!(users.login(&HeaderMap::new()), Login::Anonymous);
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(users.login(&bearer), Login::Refused);
    }

    #[test]
    fn the_cache_keeps_no_plaintext_and_is_bounded() {
        let cache = CredentialCache::new().unwrap();
        let header = b"Basic b3BzOnMzY3JldA==";
        assert_eq!(cache.user(header), None);
        cache.remember(header, "ops");
        assert_eq!(cache.user(header).as_deref(), Some("ops"));
        assert_eq!(cache.user(b"Basic b3BzOndyb25n"), None);
        // Another set of users has another key: its tags differ.
        let other = CredentialCache::new().unwrap();
        assert_ne!(cache.tag(header), other.tag(header));
        assert!(!cache
            .lock()
            .keys()
            .any(|t| t.windows(4).any(|w| w == b"b3Bz")));
        for i in 0..MAX_REMEMBERED + 10 {
            cache.remember(format!("Basic {i}").as_bytes(), "ops");
        }
        assert_eq!(cache.lock().len(), MAX_REMEMBERED);
    }
}
