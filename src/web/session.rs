//! Who may use the page: one-time login tokens handed out on the API socket (only the user
//! can reach it) and the session secrets they turn into.
//!
//! The tray or `berth dashboard` asks the API for a login URL with a fresh token; the browser
//! opens it once, the page answers with an `HttpOnly`, `SameSite=Strict` cookie holding a new
//! session secret, and the token is spent. A token is good for [`TOKEN_TTL`] and once; a
//! replayed one is refused and said to be used. Secrets are 32 random bytes and compared in
//! constant time. Everything lives in memory: a restart of the daemon ends every session.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login link works.
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts without use.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Spent tokens remembered (to say "used" rather than "unknown").
const SPENT_KEPT: usize = 256;
/// Sessions at most (the oldest goes first).
const SESSIONS_MAX: usize = 64;

/// Why a login token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this login link was used already; open the dashboard again from the tray or with `berth dashboard`")]
    Used,
    #[error(
        "this login link expired; open the dashboard again from the tray or with `berth dashboard`"
    )]
    Expired,
    #[error(
        "this login link is not valid; open the dashboard from the tray or with `berth dashboard`"
    )]
    Unknown,
}

#[derive(Debug)]
struct Token {
    secret: String,
    next: String,
    issued: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: Vec<Token>,
    spent: Vec<String>,
    sessions: Vec<(String, Instant)>,
}

#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

/// A path inside the page to land on after login: absolute, not a scheme-relative `//host`.
pub fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh one-time login token that lands on `next`.
    pub fn issue(&self, next: &str) -> std::io::Result<String> {
        let secret = crate::secret::random_hex()?;
        let mut inner = self.lock();
        inner.tokens.retain(|t| t.issued.elapsed() < TOKEN_TTL);
        inner.tokens.push(Token {
            secret: secret.clone(),
            next: safe_next(next).to_string(),
            issued: Instant::now(),
        });
        Ok(secret)
    }

    /// Spends a login token: a new session secret and where to go.
    pub fn redeem(&self, token: &str) -> Result<(String, String), Refused> {
        let mut inner = self.lock();
        let found = inner
            .tokens
            .iter()
            .position(|t| crate::secret::same(token.as_bytes(), t.secret.as_bytes()));
        let Some(i) = found else {
            let used = inner
                .spent
                .iter()
                .any(|s| crate::secret::same(token.as_bytes(), s.as_bytes()));
            return Err(if used {
                Refused::Used
            } else {
                Refused::Unknown
            });
        };
        let t = inner.tokens.remove(i);
        if inner.spent.len() >= SPENT_KEPT {
            inner.spent.remove(0);
        }
        inner.spent.push(t.secret);
        if t.issued.elapsed() >= TOKEN_TTL {
            return Err(Refused::Expired);
        }
        let session = crate::secret::random_hex().map_err(|_| Refused::Unknown)?;
        inner
            .sessions
            .retain(|(_, used)| used.elapsed() < SESSION_IDLE);
        if inner.sessions.len() >= SESSIONS_MAX {
            inner.sessions.remove(0);
        }
        inner.sessions.push((session.clone(), Instant::now()));
        Ok((session, t.next))
    }

    /// Whether `secret` is a live session; using it keeps it alive.
    pub fn check(&self, secret: &str) -> bool {
        let mut inner = self.lock();
        let mut ok = false;
        for (s, used) in inner.sessions.iter_mut() {
            // Every one compared: the time does not tell which matched.
            if crate::secret::same(secret.as_bytes(), s.as_bytes()) && used.elapsed() < SESSION_IDLE
            {
                *used = Instant::now();
                ok = true;
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once_and_a_replay_is_named_as_such() {
        let s = Sessions::default();
        let t = s.issue("/services/demo/logs").expect("token");
        assert_eq!(t.len(), 64);
        let (session, next) = s.redeem(&t).expect("first use");
        assert_eq!(next, "/services/demo/logs");
        assert!(s.check(&session));
        assert_eq!(s.redeem(&t), Err(Refused::Used));
        assert_eq!(s.redeem(&"0".repeat(64)), Err(Refused::Unknown), "a guess");
        assert!(!s.check(&t), "a token is not a session");
        assert!(!s.check(""), "nor is nothing");
    }

    #[test]
    fn landing_paths_stay_on_the_page() {
        assert_eq!(safe_next("/services/x/logs"), "/services/x/logs");
        assert_eq!(safe_next("//evil.example/"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil"), "/");
    }
}
