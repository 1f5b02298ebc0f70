//! HTTP Basic authentication against bcrypt hashes (`basic_auth_users`), as exporter-toolkit
//! does it: an unknown user costs the same bcrypt run as a known one, so response times do not
//! tell which users exist; one bcrypt runs at a time; successful checks are remembered, so a
//! scraper pays for bcrypt once rather than at every scrape.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use tokio::sync::Semaphore;

/// Remembered successes; cleared when full (there is one per user and password in practice).
const REMEMBERED: usize = 256;

type Digest = [u8; 32];

/// The users in force: `None` when there are none; replaced when the web config is reloaded.
pub type SharedAuth = Arc<RwLock<Option<Arc<BasicAuth>>>>;

pub struct BasicAuth {
    users: HashMap<String, String>,
    /// Checked when the user is unknown: the slowest of the configured hashes, so an unknown
    /// user never answers faster than a known one. Its result is discarded.
    decoy: String,
    /// SHA-256 of (user, password) pairs that passed, rather than the passwords themselves.
    verified: Mutex<HashSet<Digest>>,
    /// bcrypt is made to be slow: one check at a time keeps a flood of guesses to one CPU.
    bcrypt: Semaphore,
}

impl BasicAuth {
    /// `None` when there are no users: nothing to check.
    pub fn new(users: &BTreeMap<String, String>) -> Option<Arc<Self>> {
        let decoy = users
            .values()
            .max_by_key(|hash| {
                hash.parse::<bcrypt::HashParts>()
                    .map_or(0, |p| p.get_cost())
            })?
            .clone();
        Some(Arc::new(Self {
            users: users.clone().into_iter().collect(),
            decoy,
            verified: Mutex::new(HashSet::new()),
            bcrypt: Semaphore::new(1),
        }))
    }

    /// Whether `authorization` (the request's header) names a user with its password.
    pub async fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let digest = digest(&user, &password);
        if self.remembered().contains(&digest) {
            return true;
        }
        let (hash, known) = match std::str::from_utf8(&user)
            .ok()
            .and_then(|user| self.users.get(user))
        {
            Some(hash) => (hash.clone(), true),
            None => (self.decoy.clone(), false),
        };
        let Ok(_turn) = self.bcrypt.acquire().await else {
            return false;
        };
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(&password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let allowed = known && matches;
        if allowed {
            let mut verified = self.remembered();
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
            verified.insert(digest);
        }
        allowed
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Middleware: the request goes on with valid credentials, else 401 asking for Basic.
pub async fn require(State(auth): State<SharedAuth>, request: Request, next: Next) -> Response {
    // Taken out of the lock before anything waits: a reload replaces the users meanwhile.
    let current = auth.read().unwrap_or_else(PoisonError::into_inner).clone();
    let Some(current) = current else {
        return next.run(request).await;
    };
    if current
        .allows(request.headers().get(header::AUTHORIZATION))
        .await
    {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"monitor\"")],
        "Unauthorized\n",
    )
        .into_response()
}

/// `Basic base64(user:password)` -> (user, password), split at the first colon (RFC 7617).
fn credentials(header: &HeaderValue) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = header.as_bytes();
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

fn digest(user: &[u8], password: &[u8]) -> Digest {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    // The length first, so ("ab", "c") and ("a", "bc") differ.
    context.update(&(user.len() as u64).to_le_bytes());
    context.update(user);
    context.update(password);
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// exporter-toolkit's test users, hashed by Go with the `$2y$` prefix.
    const DAVE: &str = "$2y$10$2UXri9cIDdgeKjBo4Rlpx.U3ZLDV8X1IxKmsfOvhcM5oXQt/mLmXq";
    const CAROL: &str = "$2y$10$qRTBuFoULoYNA7AQ/F3ck.trZBPyjV64.oA4ZsSBCIWvXuvQlQTuu";

    fn auth() -> Arc<BasicAuth> {
        let users = BTreeMap::from([("dave".into(), DAVE.into()), ("carol".into(), CAROL.into())]);
        BasicAuth::new(&users).unwrap()
    }

    fn basic(user_password: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn no_users_no_authentication() {
        assert!(BasicAuth::new(&BTreeMap::new()).is_none());
    }

    #[test]
    fn right_passwords_pass_and_everything_else_fails() {
        let auth = auth();
        runtime().block_on(async {
            assert!(auth.allows(Some(&basic("dave:dave123"))).await);
            assert!(auth.allows(Some(&basic("carol:carol123"))).await);
            for wrong in [
                "dave:carol123",
                "dave:",
                "dave:dave1234",
                "eve:dave123",
                "Dave:dave123",
                "davedave123",
            ] {
                assert!(!auth.allows(Some(&basic(wrong))).await, "{wrong} passed");
            }
            assert!(!auth.allows(None).await);
            for header in ["Bearer ZGF2ZTpkYXZlMTIz", "Basic !!!", "Basic", ""] {
                let header = HeaderValue::from_str(header).unwrap();
                assert!(!auth.allows(Some(&header)).await, "{header:?} passed");
            }
        });
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_passwords_may_hold_colons() {
        let users = BTreeMap::from([("u".into(), bcrypt::hash("a:b", 4).unwrap())]);
        let auth = BasicAuth::new(&users).unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode("u:a:b");
        let header = HeaderValue::from_str(&format!("bAsIc  {encoded} ")).unwrap();
        assert!(runtime().block_on(auth.allows(Some(&header))));
    }

    #[test]
    fn successes_are_remembered_failures_are_not() {
        let auth = auth();
        runtime().block_on(async {
            assert!(!auth.allows(Some(&basic("dave:nope"))).await);
            assert!(auth.remembered().is_empty());
            assert!(auth.allows(Some(&basic("dave:dave123"))).await);
            assert_eq!(auth.remembered().len(), 1);
            // A remembered success answers without waiting for the bcrypt slot.
            let _busy = auth.bcrypt.acquire().await.unwrap();
            let header = basic("dave:dave123");
            let again = auth.allows(Some(&header));
            let answer = tokio::time::timeout(Duration::from_secs(10), again).await;
            assert_eq!(answer, Ok(true), "waited for bcrypt");
        });
    }

    #[test]
    fn unknown_users_are_checked_against_the_costliest_hash() {
        let cheap = bcrypt::hash("x", 4).unwrap();
        let users = BTreeMap::from([("a".into(), cheap), ("b".into(), DAVE.into())]);
        assert_eq!(BasicAuth::new(&users).unwrap().decoy, DAVE);
        // The decoy's own password does not let an unknown user in.
        assert!(!runtime().block_on(auth().allows(Some(&basic("eve:dave123")))));
    }

    #[test]
    fn digests_separate_user_from_password() {
        assert_ne!(digest(b"ab", b"c"), digest(b"a", b"bc"));
    }
}
