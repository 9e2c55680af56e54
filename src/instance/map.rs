//! [`InstanceMap`]: the built-in resolver, a map from instance id to [`Instance`] that changes
//! while requests flow.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;

use super::sharded::Sharded;
use super::{Instance, ResolveFuture, ResolveInstance};

type Identify = dyn Fn(&Parts) -> Option<u64> + Send + Sync;

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
    identify: Box<Identify>,
    instances: Sharded<Instance>,
}

impl InstanceMap {
    /// An empty map whose requests are told apart by `identify`: `None` means the request
    /// identifies no instance (`401 unknown_instance`).
    pub fn new(identify: impl Fn(&Parts) -> Option<u64> + Send + Sync + 'static) -> Self {
        Self {
            shared: Arc::new(Shared {
                identify: Box::new(identify),
                instances: Sharded::default(),
            }),
        }
    }

    /// Adds an instance, or replaces the one with the same id (returned).
    pub fn insert(&self, instance: Instance) -> Option<Instance> {
        let id = instance.id();
        self.shared.instances.write(id).insert(id, instance)
    }

    /// Removes an instance (returned, if there was one). Its undelivered notifications become
    /// dead letters at their next attempt.
    pub fn remove(&self, id: u64) -> Option<Instance> {
        self.shared.instances.write(id).remove(&id)
    }

    /// The instance with this id now.
    pub fn get(&self, id: u64) -> Option<Instance> {
        self.shared.instances.read(id).get(&id).cloned()
    }

    /// The instance a request belongs to, as the layer resolves it.
    pub fn identify(&self, request: &Parts) -> Option<Instance> {
        (self.shared.identify)(request).and_then(|id| self.get(id))
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
