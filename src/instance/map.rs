//! [`InstanceMap`]: the built-in resolver, a map from instance id to [`Instance`] that changes
//! while requests flow.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;

use super::settings::{credential_key, CredentialDigest};
use super::sharded::Sharded;
use super::{Instance, ResolveFuture, ResolveInstance};

type IdOf = dyn Fn(&Parts) -> Option<u64> + Send + Sync;
type CredentialOf = dyn for<'a> Fn(&'a Parts) -> Option<&'a str> + Send + Sync;

/// How a request is told to belong to an instance.
enum Identify {
    /// The operator's function names the id.
    ById(Box<IdOf>),
    /// The operator's function finds the request's credential; the map knows whose it is.
    ByCredential(Box<CredentialOf>),
}

/// The `Element <token>` part of `Authorization: User <secret>, Element <token>`, the element
/// instance's credential in the platform this crate re-creates; for
/// [`InstanceMap::by_credential`].
pub fn element_token(request: &Parts) -> Option<&str> {
    let value = request
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value
        .split(',')
        .find_map(|part| part.trim().strip_prefix("Element "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// The built-in [`ResolveInstance`]: `identify` says which instance id a request carries (from
/// its credentials), and the map holds each id's [`Instance`].
///
/// Clones share one map, so an operator keeps a clone and [`insert`](Self::insert)s,
/// replaces (key rotation) and [`remove`](Self::remove)s instances at run time while requests
/// flow; each change applies to the next request and the next delivery attempt.
///
/// The map is split into 64 shards, each behind its own read-write lock held only for one hash
/// lookup or insert: lookups on the request path never wait for the whole map, and a writer holds
/// up only the lookups of its own shard, for the length of one insert.
///
/// See the [module docs](crate::instance) for an example.
#[derive(Clone)]
pub struct InstanceMap {
    shared: Arc<Shared>,
}

struct Shared {
    identify: Identify,
    instances: Sharded<Instance>,
    /// Credential digests, keyed by their first eight bytes: whose they are.
    credentials: Sharded<Vec<(CredentialDigest, u64)>>,
}

impl InstanceMap {
    /// An empty map whose requests are told apart by `identify`: `None` means the request
    /// identifies no instance (`401 unknown_instance`).
    pub fn new(identify: impl Fn(&Parts) -> Option<u64> + Send + Sync + 'static) -> Self {
        Self::with(Identify::ById(Box::new(identify)))
    }

    /// An empty map whose requests are told apart by a credential they carry: `extract` finds
    /// it (for example [`element_token`]), and the instance whose
    /// [`credential`](super::InstanceBuilder::credential) it is, is the request's. So an
    /// instance inserted at run time is reachable at once, and a removed one's credential stops
    /// working with it. No credential, or one no instance has: `401 unknown_instance`.
    /// Credentials are kept only as SHA-256 digests.
    pub fn by_credential(
        extract: impl for<'a> Fn(&'a Parts) -> Option<&'a str> + Send + Sync + 'static,
    ) -> Self {
        Self::with(Identify::ByCredential(Box::new(extract)))
    }

    fn with(identify: Identify) -> Self {
        Self {
            shared: Arc::new(Shared {
                identify,
                instances: Sharded::default(),
                credentials: Sharded::default(),
            }),
        }
    }

    /// Adds an instance, or replaces the one with the same id (returned). Its credentials name
    /// it from now on (one that named another instance names this one instead); the replaced
    /// instance's credentials that the new one does not have stop working.
    pub fn insert(&self, instance: Instance) -> Option<Instance> {
        let id = instance.id();
        // The new credentials first, so a request during the swap is never refused.
        for digest in instance.credential_digests() {
            let key = credential_key(digest);
            let mut shard = self.shared.credentials.write(key);
            let owners = shard.entry(key).or_default();
            owners.retain(|(known, _)| known != digest);
            owners.push((*digest, id));
        }
        let replaced = self.shared.instances.write(id).insert(id, instance.clone());
        if let Some(old) = &replaced {
            let kept = instance.credential_digests();
            self.forget_credentials(id, old, |digest| !kept.contains(digest));
        }
        replaced
    }

    /// Removes an instance (returned, if there was one); its credentials stop working. Its
    /// undelivered notifications become dead letters at their next attempt.
    pub fn remove(&self, id: u64) -> Option<Instance> {
        let removed = self.shared.instances.write(id).remove(&id);
        if let Some(old) = &removed {
            self.forget_credentials(id, old, |_| true);
        }
        removed
    }

    fn forget_credentials(
        &self,
        id: u64,
        instance: &Instance,
        forget: impl Fn(&CredentialDigest) -> bool,
    ) {
        for digest in instance.credential_digests().iter().filter(|d| forget(d)) {
            let key = credential_key(digest);
            let mut shard = self.shared.credentials.write(key);
            if let Some(owners) = shard.get_mut(&key) {
                owners.retain(|(known, owner)| !(known == digest && *owner == id));
                if owners.is_empty() {
                    shard.remove(&key);
                }
            }
        }
    }

    /// The instance with this id now.
    pub fn get(&self, id: u64) -> Option<Instance> {
        self.shared.instances.read(id).get(&id).cloned()
    }

    /// The instance a request belongs to, as the layer resolves it.
    pub fn identify(&self, request: &Parts) -> Option<Instance> {
        let id = match &self.shared.identify {
            Identify::ById(identify) => identify(request)?,
            Identify::ByCredential(extract) => {
                let digest = super::settings::credential_digest(extract(request)?);
                let key = credential_key(&digest);
                let shard = self.shared.credentials.read(key);
                let owners = shard.get(&key)?;
                owners.iter().find(|(known, _)| *known == digest)?.1
            }
        };
        self.get(id)
    }

    /// How many instances the map holds.
    pub fn len(&self) -> usize {
        self.shared.instances.lens().sum()
    }

    /// Whether the map holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResolveInstance for InstanceMap {
    fn resolve<'a>(&'a self, request: &'a Parts) -> ResolveFuture<'a> {
        Box::pin(std::future::ready(Ok(self.identify(request))))
    }

    fn by_id(&self, id: u64) -> ResolveFuture<'_> {
        Box::pin(std::future::ready(Ok(self.get(id))))
    }
}

impl fmt::Debug for InstanceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceMap")
            .field("instances", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: u64, key: &str) -> Instance {
        Instance::builder(id).signing_key(key).build().unwrap()
    }

    fn parts(element: Option<&str>) -> Parts {
        let mut request = http::Request::builder();
        if let Some(element) = element {
            request = request.header("x-element", element);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn by_header(parts: &Parts) -> Option<u64> {
        parts.headers.get("x-element")?.to_str().ok()?.parse().ok()
    }

    #[tokio::test]
    async fn clones_share_one_map_that_changes_at_run_time() {
        let map = InstanceMap::new(by_header);
        let operator = map.clone();
        assert!(map.is_empty());
        assert!(operator.insert(instance(30, "a")).is_none());
        operator.insert(instance(31, "b"));
        assert_eq!(map.len(), 2);

        let found = map.resolve(&parts(Some("30"))).await.unwrap().unwrap();
        assert_eq!(found.id(), 30);
        assert!(map.resolve(&parts(Some("32"))).await.unwrap().is_none());
        assert!(map.resolve(&parts(None)).await.unwrap().is_none());

        let moved = Instance::builder(30)
            .callback_url("https://moved.example/hooks")
            .build()
            .unwrap();
        let replaced = operator.insert(moved).unwrap();
        assert!(replaced.callback_url().is_none());
        let now = map.get(30).unwrap();
        assert_eq!(now.callback_url().unwrap(), "https://moved.example/hooks");
        assert_eq!(operator.remove(31).unwrap().id(), 31);
        assert!(map.by_id(31).await.unwrap().is_none());
        assert_eq!(map.by_id(30).await.unwrap().unwrap().id(), 30);
        assert_eq!(map.len(), 1);
    }

    #[tokio::test]
    async fn credentials_name_instances_added_rotated_and_removed_at_run_time() {
        let map = InstanceMap::by_credential(element_token);
        let request = |token: &str| {
            let mut request = http::Request::builder();
            if !token.is_empty() {
                request = request.header("authorization", format!("User s3cret, Element {token}"));
            }
            request.body(()).unwrap().into_parts().0
        };
        let with = |id: u64, tokens: &[&str]| {
            tokens
                .iter()
                .fold(Instance::builder(id), |b, t| b.credential(*t))
                .build()
                .unwrap()
        };
        assert!(map.resolve(&request("acme-1")).await.unwrap().is_none());
        map.insert(with(30, &["acme-1"]));
        map.insert(with(31, &["globex-1"]));
        let found = |token: &str| map.identify(&request(token)).map(|i| i.id());
        assert_eq!(found("acme-1"), Some(30));
        assert_eq!(found("globex-1"), Some(31));
        assert_eq!((found("nobody"), found("")), (None, None));

        // Rotation: both credentials while the clients move, then only the new one.
        map.insert(with(30, &["acme-1", "acme-2"]));
        assert_eq!((found("acme-1"), found("acme-2")), (Some(30), Some(30)));
        map.insert(with(30, &["acme-2"]));
        assert_eq!((found("acme-1"), found("acme-2")), (None, Some(30)));
        // A credential given to another instance moves with it.
        map.insert(with(31, &["globex-1", "acme-2"]));
        assert_eq!(found("acme-2"), Some(31));
        map.insert(with(30, &[]));
        assert_eq!(
            found("acme-2"),
            Some(31),
            "not taken back by the old owner's update"
        );
        map.remove(31);
        assert_eq!((found("globex-1"), found("acme-2")), (None, None));
        assert!(map.get(30).is_some());
    }

    #[test]
    fn element_tokens_are_read_from_authorization() {
        let parts = |value: &str| {
            http::Request::builder()
                .header("authorization", value)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let token = |value: &str| element_token(&parts(value)).map(str::to_owned);
        assert_eq!(token("User abc, Element xyz").as_deref(), Some("xyz"));
        assert_eq!(token("Element xyz , User abc").as_deref(), Some("xyz"));
        assert_eq!(token("User abc"), None);
        assert_eq!(token("User abc, Element "), None);
        assert_eq!(token("Bearer xyz"), None);
    }

    #[test]
    fn lookups_see_whole_instances_while_writers_replace_and_remove() {
        let map = InstanceMap::new(|_| None);
        for id in 0..64 {
            map.insert(instance(id, "k"));
        }
        let writer = {
            let map = map.clone();
            std::thread::spawn(move || {
                for round in 0..2_000u64 {
                    let id = round % 64;
                    map.insert(instance(id, &format!("key-{round}")));
                    if round % 7 == 0 {
                        map.remove(id);
                        map.insert(instance(id, "back"));
                    }
                }
            })
        };
        let mut seen = 0;
        while !writer.is_finished() {
            for id in 0..64 {
                if let Some(found) = map.get(id) {
                    assert_eq!(found.id(), id);
                    seen += 1;
                }
            }
        }
        writer.join().unwrap();
        assert!(seen > 0);
        assert_eq!(map.len(), 64);
    }
}
